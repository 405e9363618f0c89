//! The typed modes: a method of loadgen's own tiny API through the gateway,
//! the way an application with its own protobuf service calls it (issue 14).
//!
//! The API is `loadgen/v1/echo.proto`, built here in code (no `.proto` file,
//! no build script):
//!
//! ```proto
//! syntax = "proto3";
//! package loadgen.v1;
//! message EchoMessage { bytes payload = 1; }
//! service Echo {
//!   rpc Echo(EchoMessage) returns (EchoMessage);      // passthrough
//!   rpc EchoJson(EchoMessage) returns (EchoMessage);  // transcoded to JSON
//! }
//! ```
//!
//! Two methods with one shape, because one gateway serves a method either in
//! passthrough or transcoded, never both: the bench starts one gateway with
//! `--transcode-json loadgen.v1.Echo/EchoJson`, each method on a route of its
//! own. The built-in `worker` echo handler answers both: it sends back the
//! body and content type it got, which is the protobuf of the request in
//! passthrough and its canonical JSON (`{"payload":"<base64>"}`) when
//! transcoded, and either parses back into an `EchoMessage`.
//!
//! The gateway reads the API from a file: `loadgen descriptor-set FILE`
//! writes it ([`write_descriptor_set`]).

use std::{path::Path, time::Duration};

use amqp_gateway::wire;
use bytes::Bytes;
use prost::Message as _;
use prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
    ServiceDescriptorProto,
    field_descriptor_proto::{Label, Type},
};
use tonic::{client::Grpc, codegen::http::uri::PathAndQuery, transport::Channel};
use tonic_prost::ProstCodec;

use crate::driver::{Caller, Failure};

/// The service, fully qualified (`--service`).
pub(crate) const SERVICE: &str = "loadgen.v1.Echo";
/// The passthrough method, as `--method-route` names it.
pub(crate) const ECHO: &str = "loadgen.v1.Echo/Echo";
/// The transcoded method, as `--method-route` and `--transcode-json` name it.
pub(crate) const ECHO_JSON: &str = "loadgen.v1.Echo/EchoJson";

/// Beyond the deadline, how long to wait for the gateway's own answer (as in
/// gateway mode).
const MARGIN: Duration = Duration::from_secs(1);

/// `loadgen.v1.EchoMessage`, by hand: the same message the descriptor set
/// describes (a unit test holds them together).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EchoMessage {
    #[prost(bytes = "bytes", tag = "1")]
    pub(crate) payload: Bytes,
}

/// Which of the two methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// `Echo`: protobuf bytes to the worker.
    Passthrough,
    /// `EchoJson`: the gateway transcodes to and from JSON.
    Json,
}

impl Method {
    /// The gRPC path.
    fn path(self) -> PathAndQuery {
        PathAndQuery::from_static(match self {
            Self::Passthrough => "/loadgen.v1.Echo/Echo",
            Self::Json => "/loadgen.v1.Echo/EchoJson",
        })
    }
}

/// The descriptor set of `loadgen/v1/echo.proto`.
pub(crate) fn descriptor_set() -> FileDescriptorSet {
    let payload = FieldDescriptorProto {
        name: Some("payload".into()),
        number: Some(1),
        label: Some(Label::Optional as i32),
        r#type: Some(Type::Bytes as i32),
        json_name: Some("payload".into()),
        ..Default::default()
    };
    let method = |name: &str| MethodDescriptorProto {
        name: Some(name.into()),
        input_type: Some(".loadgen.v1.EchoMessage".into()),
        output_type: Some(".loadgen.v1.EchoMessage".into()),
        ..Default::default()
    };
    FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("loadgen/v1/echo.proto".into()),
            package: Some("loadgen.v1".into()),
            message_type: vec![DescriptorProto {
                name: Some("EchoMessage".into()),
                field: vec![payload],
                ..Default::default()
            }],
            service: vec![ServiceDescriptorProto {
                name: Some("Echo".into()),
                method: vec![method("Echo"), method("EchoJson")],
                ..Default::default()
            }],
            syntax: Some("proto3".into()),
            ..Default::default()
        }],
    }
}

/// Writes [`descriptor_set`] to `path`, encoded, for the gateway's
/// `--descriptor-set`.
pub(crate) fn write_descriptor_set(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, descriptor_set().encode_to_vec())
}

/// The gateway flags that serve this API: passthrough `Echo` on `route`,
/// transcoded `EchoJson` on `json_route`, from the set in `descriptor_set`.
pub(crate) fn gateway_args(descriptor_set: &Path, route: &str, json_route: &str) -> Vec<String> {
    vec![
        "--descriptor-set".into(),
        descriptor_set.display().to_string(),
        "--service".into(),
        SERVICE.into(),
        "--method-route".into(),
        format!("{ECHO}={route}"),
        "--method-route".into(),
        format!("{ECHO_JSON}={json_route}"),
        "--transcode-json".into(),
        ECHO_JSON.into(),
    ]
}

/// `concurrency` callers of `method` spread over `channels`.
pub(crate) fn callers(
    channels: &[Channel],
    concurrency: usize,
    method: Method,
    payload: &Bytes,
    deadline: Duration,
) -> Vec<TypedCaller> {
    (0..concurrency)
        .map(|i| TypedCaller {
            grpc: Grpc::new(channels[i % channels.len()].clone()),
            path: method.path(),
            payload: payload.clone(),
            deadline,
        })
        .collect()
}

/// One caller: tonic's generic client on one of the connections, as a
/// generated client would call (`ready`, then `unary` with the prost codec).
pub(crate) struct TypedCaller {
    grpc: Grpc<Channel>,
    path: PathAndQuery,
    payload: Bytes,
    deadline: Duration,
}

impl TypedCaller {
    async fn unary(&mut self) -> Result<EchoMessage, tonic::Status> {
        let mut request = tonic::Request::new(EchoMessage { payload: self.payload.clone() });
        request.set_timeout(self.deadline);
        self.grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
        let codec = ProstCodec::<EchoMessage, EchoMessage>::default();
        Ok(self.grpc.unary(request, self.path.clone(), codec).await?.into_inner())
    }
}

impl Caller for TypedCaller {
    async fn call(&mut self) -> Result<(), Failure> {
        let deadline = self.deadline;
        match tokio::time::timeout(deadline + MARGIN, self.unary()).await {
            Err(_) => Err(Failure::new(wire::code_name(tonic::Code::DeadlineExceeded), "no answer at all")),
            Ok(Err(status)) => Err(Failure::new(wire::code_name(status.code()), status.message())),
            Ok(Ok(reply)) if reply.payload.len() != self.payload.len() => Err(Failure::new(
                "BAD_REPLY",
                format!("{} bytes back for {} sent", reply.payload.len(), self.payload.len()),
            )),
            // The bytes too, not only their number: a transcoding slip (a
            // base64 variant, say) keeps the length. 64 B or 16 KiB compared
            // is nothing next to a call.
            Ok(Ok(reply)) if reply.payload != self.payload => {
                Err(Failure::new("BAD_REPLY", "the payload came back changed"))
            }
            Ok(Ok(_)) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use prost_reflect::{DescriptorPool, DynamicMessage, Value};

    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(descriptor_set().encode_to_vec().as_slice()).unwrap()
    }

    /// The set is what the gateway will read it as: a unary service with both
    /// methods on `EchoMessage`.
    #[test]
    fn the_set_describes_the_echo_service() {
        let pool = pool();
        let service = pool.get_service_by_name(SERVICE).unwrap();
        let methods: Vec<String> = service.methods().map(|m| m.full_name().to_owned()).collect();
        assert_eq!(methods, ["loadgen.v1.Echo.Echo", "loadgen.v1.Echo.EchoJson"]);
        for method in service.methods() {
            assert!(!method.is_client_streaming() && !method.is_server_streaming());
            assert_eq!(method.input().full_name(), "loadgen.v1.EchoMessage");
            assert_eq!(method.output().full_name(), "loadgen.v1.EchoMessage");
        }
        // The flag spellings name these methods.
        for (flag, method) in [(ECHO, Method::Passthrough), (ECHO_JSON, Method::Json)] {
            assert_eq!(method.path().as_str(), format!("/{flag}"));
            let (svc, name) = flag.split_once('/').unwrap();
            assert!(pool.get_service_by_name(svc).unwrap().methods().any(|m| m.name() == name));
        }
    }

    /// The hand-written struct and the descriptor agree on the wire and in
    /// JSON, as the gateway's transcoding will see it.
    #[test]
    fn the_struct_matches_the_descriptor() {
        let payload = Bytes::from_static(b"\x00\xffhello");
        let encoded = EchoMessage { payload: payload.clone() }.encode_to_vec();
        let message = pool().get_message_by_name("loadgen.v1.EchoMessage").unwrap();
        let dynamic = DynamicMessage::decode(message.clone(), encoded.as_slice()).unwrap();
        assert_eq!(dynamic.get_field_by_name("payload").unwrap().as_ref(), &Value::Bytes(payload.clone()));
        assert_eq!(dynamic.encode_to_vec(), encoded);

        let json = serde_json::to_string(&dynamic).unwrap();
        assert_eq!(json, r#"{"payload":"AP9oZWxsbw=="}"#);
        let mut deserializer = serde_json::Deserializer::from_str(&json);
        let back = DynamicMessage::deserialize(message, &mut deserializer).unwrap();
        assert_eq!(EchoMessage::decode(back.encode_to_vec().as_slice()).unwrap().payload, payload);
    }

    #[test]
    fn gateway_args_route_both_methods_and_transcode_one() {
        let args = gateway_args(Path::new("/tmp/echo.binpb"), "r-typed", "r-json");
        let joined = args.join(" ");
        assert_eq!(
            joined,
            "--descriptor-set /tmp/echo.binpb --service loadgen.v1.Echo \
             --method-route loadgen.v1.Echo/Echo=r-typed --method-route loadgen.v1.Echo/EchoJson=r-json \
             --transcode-json loadgen.v1.Echo/EchoJson"
        );
    }
}
