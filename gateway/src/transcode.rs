//! JSON transcoding of typed methods (`--transcode-json`): a request's
//! protobuf bytes become canonical proto3 JSON for the worker, and the
//! worker's JSON reply becomes the response message's protobuf bytes.
//!
//! Both directions go through prost-reflect's dynamic messages, which
//! implement the proto3 JSON mapping (lowerCamelCase names, enums by name,
//! 64-bit integers as strings, bytes as base64, well-known types such as
//! `Timestamp` in their JSON forms, default values left out). A reply is
//! parsed strictly: an unknown field, a value of the wrong type or trailing
//! bytes are reported, so a worker that drifted from the API is found at
//! its first reply rather than by a caller reading zeros.

use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

/// The request's protobuf bytes as canonical proto3 JSON. Fails, saying
/// why, when the bytes are not a valid `input` message.
pub(crate) fn request_to_json(input: &MessageDescriptor, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let message = DynamicMessage::decode(input.clone(), bytes)
        .map_err(|e| format!("the request is not a valid {}: {e}", input.full_name()))?;
    let mut json = Vec::with_capacity(bytes.len() * 2 + 16);
    let mut serializer = serde_json::Serializer::new(&mut json);
    message
        .serialize_with_options(&mut serializer, &SerializeOptions::new())
        .map_err(|e| format!("the request cannot be written as JSON: {e}"))?;
    Ok(json)
}

/// The worker's JSON reply as the `output` message's protobuf bytes, or
/// what did not fit.
pub(crate) fn reply_from_json(output: &MessageDescriptor, json: &[u8]) -> Result<Vec<u8>, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&mut deserializer, &mut track);
    let message = match DynamicMessage::deserialize_with_options(output.clone(), tracked, &DeserializeOptions::new()) {
        Ok(message) => message,
        Err(error) => {
            let path = track.path().to_string();
            return Err(if path == "." { error.to_string() } else { format!("at {path}: {error}") });
        }
    };
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(message.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use prost_reflect::{DescriptorPool, Value};
    use prost_types::{
        DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
        FileDescriptorSet,
        field_descriptor_proto::{Label, Type},
    };

    use super::*;

    fn field(
        name: &str,
        json: &str,
        number: i32,
        kind: Type,
        type_name: Option<&str>,
        repeated: bool,
    ) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            json_name: Some(json.into()),
            number: Some(number),
            r#type: Some(kind as i32),
            type_name: type_name.map(Into::into),
            label: Some(if repeated { Label::Repeated } else { Label::Optional } as i32),
            ..Default::default()
        }
    }

    /// `shop.v1.Order { string order_id; int64 total_cents; Status status;
    /// repeated Line lines; bytes note; }`, `Line { string sku; uint32 quantity; }`.
    fn order() -> MessageDescriptor {
        let line = DescriptorProto {
            name: Some("Line".into()),
            field: vec![
                field("sku", "sku", 1, Type::String, None, false),
                field("quantity", "quantity", 2, Type::Uint32, None, false),
            ],
            ..Default::default()
        };
        let order = DescriptorProto {
            name: Some("Order".into()),
            field: vec![
                field("order_id", "orderId", 1, Type::String, None, false),
                field("total_cents", "totalCents", 2, Type::Int64, None, false),
                field("status", "status", 3, Type::Enum, Some(".shop.v1.Status"), false),
                field("lines", "lines", 4, Type::Message, Some(".shop.v1.Line"), true),
                field("note", "note", 5, Type::Bytes, None, false),
            ],
            ..Default::default()
        };
        let value = |name: &str, number| EnumValueDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            ..Default::default()
        };
        let status = EnumDescriptorProto {
            name: Some("Status".into()),
            value: vec![value("STATUS_UNSPECIFIED", 0), value("STATUS_PLACED", 1)],
            ..Default::default()
        };
        let file = FileDescriptorProto {
            name: Some("shop/v1/order.proto".into()),
            package: Some("shop.v1".into()),
            syntax: Some("proto3".into()),
            message_type: vec![order, line],
            enum_type: vec![status],
            ..Default::default()
        };
        let pool = DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: vec![file] }).unwrap();
        pool.get_message_by_name("shop.v1.Order").unwrap()
    }

    fn sample() -> Vec<u8> {
        let json = br#"{"orderId":"o-1","totalCents":"1250","status":"STATUS_PLACED","lines":[{"sku":"tea","quantity":2}],"note":"aGk="}"#;
        reply_from_json(&order(), json).unwrap()
    }

    #[test]
    fn requests_become_canonical_proto3_json() {
        let json = request_to_json(&order(), &sample()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "orderId": "o-1",
                "totalCents": "1250",
                "status": "STATUS_PLACED",
                "lines": [{"sku": "tea", "quantity": 2}],
                "note": "aGk=",
            })
        );
        assert_eq!(request_to_json(&order(), &[]).unwrap(), b"{}", "defaults are left out");
    }

    #[test]
    fn json_replies_become_the_response_message() {
        let message = DynamicMessage::decode(order(), sample().as_slice()).unwrap();
        assert_eq!(message.get_field_by_name("total_cents").unwrap().as_ref(), &Value::I64(1250));
        assert_eq!(message.get_field_by_name("note").unwrap().as_bytes().map(|b| b.to_vec()), Some(b"hi".to_vec()));
        // Field names as in the proto file, and enum numbers, are accepted too.
        let alternate = reply_from_json(&order(), br#"{"order_id":"o-1","status":1}"#).unwrap();
        let message = DynamicMessage::decode(order(), alternate.as_slice()).unwrap();
        assert_eq!(message.get_field_by_name("status").unwrap().as_enum_number(), Some(1));
    }

    #[test]
    fn replies_that_do_not_fit_say_what() {
        let error = |json: &[u8]| reply_from_json(&order(), json).unwrap_err();
        assert!(error(br#"{"orderId":"o","debug":true}"#).contains("debug"), "unknown fields are refused");
        let wrong_type = error(br#"{"lines":[{"sku":"tea"},{"quantity":"many"}]}"#);
        assert!(wrong_type.starts_with("at lines[1].quantity: "), "{wrong_type}");
        assert!(error(br#"{"status":"STATUS_LOST"}"#).contains("STATUS_LOST"));
        assert!(error(b"not json").contains("line 1"));
        assert!(error(br#"{"orderId":"o"} {}"#).contains("trailing"));
        assert!(error(b"").contains("EOF"));
    }

    #[test]
    fn invalid_request_bytes_are_refused() {
        let error = request_to_json(&order(), b"\xff\xff\xff").unwrap_err();
        assert!(error.starts_with("the request is not a valid shop.v1.Order"), "{error}");
    }
}
