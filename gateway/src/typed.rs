//! Typed methods: each unary method of a user's service (`--service`, see
//! [`crate::api`]) served at its own gRPC path as an AMQP round trip, where
//! a typed request enters and where its reply becomes the typed response.
//!
//! Passthrough (the default) never decodes a message: the request's
//! protobuf bytes are published as they arrived (`application/x-protobuf`)
//! and the worker's reply bytes are returned as the response message, so a
//! typed call costs what a `Process` call costs. Methods served with
//! `--transcode-json` go through [`crate::transcode`] both ways.
//!
//! Requests carry the method's full name in `x-grpc-method` and the request
//! message's full name in the AMQP `type` property; everything else
//! (deadline, correlation id, trace context, limits, tokens, metrics per
//! route) is the `Process` contract, applied by the same layers and by the
//! same [`Calls`].
//!
//! [`Dispatch`](crate::server::Dispatch) sends the paths of the user's
//! services here.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use amqp_gateway::wire;
use bytes::{Buf, BufMut, Bytes};
use futures::future::BoxFuture;
use tonic::{
    Status,
    body::Body,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{MetadataKey, MetadataValue},
    server::UnaryService,
};
use tower::Service;

use crate::{
    amqp::{AmqpRequest, MethodTag, Reply},
    api::{Apis, Encoding, Method},
    auth::Caller,
    context::RequestContext,
    error::GatewayError,
    metrics::BrokerEvent,
    service::{Calls, context_of},
    transcode, validate,
};

type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Messages larger than this are transcoded on tokio's blocking pool: a
/// large message takes milliseconds to transcode, which would hold up every
/// other call on the same runtime thread. Smaller ones are done in place,
/// where a thread hand-off would cost more than the work.
const INLINE_TRANSCODE_MAX: usize = 64 * 1024;

/// A served method with what its requests carry on the wire.
#[derive(Debug)]
struct Served {
    method: Arc<Method>,
    tag: Arc<MethodTag>,
}

/// The typed methods of every user service; see the module docs.
#[derive(Clone, Debug)]
pub struct TypedMethods {
    calls: Calls,
    methods: Arc<HashMap<String, Arc<Served>>>,
    max_message: usize,
}

impl TypedMethods {
    /// Serves the methods of `apis` with `calls`, refusing request messages
    /// over `max_message` bytes.
    pub fn new(calls: Calls, apis: &Apis, max_message: usize) -> Self {
        let methods = apis
            .methods
            .iter()
            .map(|(path, method)| {
                let tag = MethodTag { method: method.name.clone(), message_type: method.input.full_name().into() };
                (path.clone(), Arc::new(Served { method: method.clone(), tag: Arc::new(tag) }))
            })
            .collect();
        Self { calls, methods: Arc::new(methods), max_message }
    }
}

impl<B> Service<http::Request<B>> for TypedMethods
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(served) = self.methods.get(request.uri().path()).cloned() else {
            let status = Status::unimplemented(format!("{} is not a method this gateway serves", request.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let call = Call { calls: self.calls.clone(), served };
        Box::pin(crate::service::unary(RawCodec, call, request, self.max_message))
    }
}

/// One call of one method.
struct Call {
    calls: Calls,
    served: Arc<Served>,
}

impl UnaryService<Bytes> for Call {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let (calls, served) = (self.calls.clone(), self.served.clone());
        Box::pin(async move {
            let (context, caller) = context_of(&request)?;
            let result = handle(&calls, &served, request.into_inner(), &context, &caller).await;
            result.map_err(|error| calls.fail(error, &context))
        })
    }
}

/// Publishes the request message and turns the reply into the response.
async fn handle(
    calls: &Calls,
    served: &Served,
    message: Bytes,
    context: &RequestContext,
    caller: &Caller,
) -> Result<tonic::Response<Bytes>, GatewayError> {
    let method = &served.method;
    calls.admit(&method.route, context, caller)?;
    // The caller's message is held to the payload limit before anything is
    // spent on it; a transcoded one is held to it again as published.
    validate::payload(calls.limits(), message.len())?;
    let (payload, content_type) = match method.encoding {
        Encoding::Protobuf => (message, wire::PROTOBUF),
        Encoding::Json => {
            let input = method.input.clone();
            let json = off_thread(message.len(), move || transcode::request_to_json(&input, &message))
                .await
                .map_err(GatewayError::InvalidArgument)?;
            (Bytes::from(json), wire::JSON)
        }
    };
    let request = AmqpRequest {
        correlation_id: context.correlation_id,
        route: method.route.clone(),
        payload,
        content_type: content_type.to_owned(),
        headers: HashMap::new(),
        deadline: context.deadline,
        method: Some(served.tag.clone()),
        trace: context.lean_trace(),
    };
    let reply = calls.send(request, context).await?;
    let mut metadata = tonic::metadata::MetadataMap::new();
    reply_metadata(&reply.headers, &mut metadata);
    let Reply { payload, content_type, .. } = reply;
    let body = response_body(method, content_type.as_deref(), payload).await;
    let body = body.inspect_err(|_| calls.client().stats().count(BrokerEvent::ReplyDoesNotFit))?;
    Ok(tonic::Response::from_parts(metadata, body, tonic::Extensions::default()))
}

/// Runs `work` on `len` bytes in place, or on the blocking pool when the
/// message is large (see [`INLINE_TRANSCODE_MAX`]).
async fn off_thread<T: Send + 'static>(
    len: usize,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    if len <= INLINE_TRANSCODE_MAX {
        return work();
    }
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Err(format!("transcoding failed: {e}")))
}

/// The response message of a successful reply: its bytes as they are, or
/// its JSON transcoded. A reply whose content type says it is in the other
/// encoding does not fit.
async fn response_body(method: &Method, content_type: Option<&str>, payload: Vec<u8>) -> Result<Bytes, GatewayError> {
    let does_not_fit =
        |reason: String| GatewayError::ReplyDoesNotFit { message_type: method.output.full_name().to_owned(), reason };
    let content_type = content_type.map(essence);
    match method.encoding {
        Encoding::Protobuf if content_type == Some(wire::JSON) => Err(does_not_fit(format!(
            "the worker replied {}, but {} is served as protobuf (serve it with --transcode-json, or reply {})",
            wire::JSON,
            method.name,
            wire::PROTOBUF
        ))),
        Encoding::Protobuf => Ok(Bytes::from(payload)),
        Encoding::Json if content_type == Some(wire::PROTOBUF) => Err(does_not_fit(format!(
            "the worker replied {}, but {} is transcoded to JSON (--transcode-json)",
            wire::PROTOBUF,
            method.name
        ))),
        Encoding::Json => {
            let output = method.output.clone();
            off_thread(payload.len(), move || transcode::reply_from_json(&output, &payload))
                .await
                .map(Bytes::from)
                .map_err(does_not_fit)
        }
    }
}

/// A MIME type without its parameters, as compared here.
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// The reply's application headers as response metadata: what
/// `ProcessResponse.headers` carries for `Process`. Only names and values
/// that are valid ASCII metadata pass, and none that gRPC or HTTP/2 reserve
/// (`grpc-*`, binary `-bin` names, connection headers).
fn reply_metadata(headers: &BTreeMap<String, String>, metadata: &mut tonic::metadata::MetadataMap) {
    const RESERVED: [&str; 8] =
        ["content-type", "te", "user-agent", "connection", "keep-alive", "transfer-encoding", "upgrade", "host"];
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("grpc-") || lower.ends_with("-bin") || RESERVED.contains(&lower.as_str()) {
            continue;
        }
        if let (Ok(key), Ok(value)) =
            (MetadataKey::from_bytes(lower.as_bytes()), MetadataValue::try_from(value.as_str()))
        {
            metadata.insert(key, value);
        }
    }
}

/// Request and response messages as bytes, undecoded.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        crate::service::buffers()
    }

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        crate::service::buffers()
    }

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn method(encoding: Encoding) -> Method {
        let set = prost_types::FileDescriptorSet {
            file: vec![prost_types::FileDescriptorProto {
                name: Some("t/v1/t.proto".into()),
                package: Some("t.v1".into()),
                syntax: Some("proto3".into()),
                message_type: vec![prost_types::DescriptorProto {
                    name: Some("Item".into()),
                    field: vec![prost_types::FieldDescriptorProto {
                        name: Some("id".into()),
                        json_name: Some("id".into()),
                        number: Some(1),
                        r#type: Some(prost_types::field_descriptor_proto::Type::String as i32),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(set).unwrap();
        let item = pool.get_message_by_name("t.v1.Item").unwrap();
        Method { name: "t.v1.T/Get".into(), route: "t".into(), input: item.clone(), output: item, encoding }
    }

    fn headers() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("tenant".to_owned(), "acme".to_owned()),
            ("Region".to_owned(), "eu".to_owned()),
            ("grpc-status".to_owned(), "0".to_owned()),
            ("trace-bin".to_owned(), "x".to_owned()),
            ("content-type".to_owned(), "text/html".to_owned()),
            ("bad name".to_owned(), "x".to_owned()),
            ("multi".to_owned(), "line\nbreak".to_owned()),
        ])
    }

    fn not_fitting(result: Result<Bytes, GatewayError>) -> String {
        match result {
            Err(error @ GatewayError::ReplyDoesNotFit { .. }) => {
                assert_eq!(error.code(), Code::Internal);
                error.to_string()
            }
            other => panic!("expected ReplyDoesNotFit, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn passthrough_returns_the_bytes_unless_they_are_json() {
        let protobuf = method(Encoding::Protobuf);
        for content_type in [None, Some(wire::PROTOBUF), Some("application/octet-stream")] {
            assert_eq!(&response_body(&protobuf, content_type, b"\x0a\x01x".to_vec()).await.unwrap()[..], b"\x0a\x01x");
        }
        let error =
            not_fitting(response_body(&protobuf, Some("application/json; charset=utf-8"), b"{}".to_vec()).await);
        assert!(error.contains("--transcode-json") && error.contains("t.v1.Item"), "{error}");
    }

    #[tokio::test]
    async fn transcoded_replies_are_parsed_into_the_response_type() {
        let json = method(Encoding::Json);
        assert_eq!(&response_body(&json, None, br#"{"id":"x"}"#.to_vec()).await.unwrap()[..], b"\x0a\x01x");
        assert_eq!(&response_body(&json, Some(wire::JSON), br#"{"id":"x"}"#.to_vec()).await.unwrap()[..], b"\x0a\x01x");
        let error = not_fitting(response_body(&json, None, br#"{"id":"x","extra":1}"#.to_vec()).await);
        assert!(error.starts_with("the worker's reply does not fit t.v1.Item: ") && error.contains("extra"), "{error}");
        let error = not_fitting(response_body(&json, Some(wire::PROTOBUF), b"\x0a\x01x".to_vec()).await);
        assert!(error.contains("transcoded to JSON"), "{error}");
    }

    #[test]
    fn reply_headers_become_metadata_where_grpc_allows() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        reply_metadata(&headers(), &mut metadata);
        let mut names: Vec<_> = metadata.keys().map(|k| format!("{k:?}")).collect();
        names.sort();
        assert_eq!(names, ["Ascii(\"region\")", "Ascii(\"tenant\")"]);
        assert_eq!(metadata.get("tenant").unwrap(), "acme");
    }
}
