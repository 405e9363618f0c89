//! `gateway.v1.Gateway/Process`: where a request enters and where its outcome
//! is decided; and [`Calls`], the round trip every call makes, `Process` and
//! the typed methods of [`crate::typed`] alike.
//!
//! The handler validates the request, publishes it through the
//! [`AmqpClient`] and waits for the reply. The
//! [`RequestContextLayer`](crate::context::RequestContextLayer) around it
//! fixes the call's deadline and correlation id, drops this future when the
//! deadline passes and records how the call ended; tonic drops it when the
//! caller cancels. Either way the pending entry goes with it.
//!
//! The handler fails closed: served without the layers that give it a
//! deadline ([`RequestContext`]) and a [`Caller`], it answers INTERNAL rather
//! than inventing a deadline or letting anyone call any route.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use amqp_gateway::pb::{ProcessRequest, ProcessResponse};
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Request, Response, Status,
    body::Body,
    codec::{BufferSettings, Codec},
    server::{Grpc, UnaryService},
};
use tonic_prost::{ProstDecoder, ProstEncoder};
use tower::Service;

use crate::{
    amqp::{AmqpClient, AmqpRequest, Reply},
    auth::Caller,
    config::Limits,
    context::RequestContext,
    error::GatewayError,
    metrics::Rejections,
    validate,
};

/// What every call needs to reach a worker, `Process` and typed methods
/// alike: the broker client, the request rules and the end of the shutdown
/// grace period. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Calls {
    client: AmqpClient,
    limits: Arc<Limits>,
    rejections: Rejections,
    abort: CancellationToken,
}

impl Calls {
    /// Calls published through `client` under `limits`. Cancelling `abort`
    /// answers every call still waiting with UNAVAILABLE (the end of the
    /// shutdown grace period).
    pub fn new(client: AmqpClient, limits: Limits, abort: CancellationToken) -> Self {
        Self { client, limits: Arc::new(limits), rejections: Rejections::new(), abort }
    }

    /// The request rules.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The broker client.
    pub(crate) fn client(&self) -> &AmqpClient {
        &self.client
    }

    /// Admits a call to `route`: recorded as the call's route, and refused
    /// unless the caller's token allows it.
    pub(crate) fn admit(&self, route: &str, context: &RequestContext, caller: &Caller) -> Result<(), GatewayError> {
        context.set_route(route);
        if !caller.may_call(route) {
            return Err(GatewayError::PermissionDenied(route.to_owned()));
        }
        Ok(())
    }

    /// Checks an admitted request against the limits, publishes it and
    /// waits for its reply: the worker's successful reply, or why there is
    /// none.
    pub(crate) async fn send(&self, request: AmqpRequest, context: &RequestContext) -> Result<Reply, GatewayError> {
        validate::payload(&self.limits, request.payload.len())?;
        validate::headers(&self.limits, &request.headers)?;
        if context.deadline.remaining().is_zero() {
            // Answered at once, without publishing: nobody could use the reply.
            return Err(GatewayError::DeadlineExceeded);
        }
        let reply = tokio::select! {
            reply = self.client.round_trip(request) => reply?,
            () = self.abort.cancelled() => return Err(GatewayError::ShuttingDown),
        };
        if reply.code != Code::Ok {
            return Err(GatewayError::Worker { code: reply.code, message: reply.message });
        }
        Ok(reply)
    }

    /// Turns a failed call into its status, counting refusals.
    pub(crate) fn fail(&self, error: GatewayError, context: &RequestContext) -> Status {
        self.rejections.count(&error);
        tracing::debug!(correlation_id = %context.correlation_id, %error, "call failed");
        Status::from(error)
    }
}

/// The layers' context and caller of a call. The handlers fail closed:
/// served without the layers that give a call a deadline
/// ([`RequestContext`]) and a [`Caller`], they answer INTERNAL rather than
/// invent a deadline or let anyone call any route.
pub(crate) fn context_of<T>(request: &Request<T>) -> Result<(RequestContext, Caller), Status> {
    // Set by `RequestContextLayer` and `AuthLayer` (which admits every
    // caller as an anonymous one when no token is configured).
    let Some(context) = request.extensions().get::<RequestContext>().cloned() else {
        return Err(GatewayError::MissingContext("request context").into());
    };
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return Err(GatewayError::MissingContext("caller").into());
    };
    Ok((context, caller))
}

/// The path of `gateway.v1.Gateway/Process`.
pub const PROCESS_PATH: &str = "/gateway.v1.Gateway/Process";

/// `gateway.v1.Gateway/Process`, served straight from the dispatch
/// ([`crate::server::Dispatch`]) rather than through tonic's generated
/// `GatewayServer` behind its router: the same gRPC framing (tonic's
/// [`Grpc`]) and the same messages, without the router's route lookup and
/// boxed services or the generated code's third boxed future (eleven heap
/// allocations per call fewer, counted with DHAT; see docs/performance.md).
#[derive(Clone, Debug)]
pub struct ProcessService {
    calls: Calls,
    max_message: usize,
}

impl ProcessService {
    /// The service, making its calls with `calls` and refusing request
    /// messages over `max_message` bytes (tonic's decode limit, behind
    /// [`RequestSizeLayer`](crate::size::RequestSizeLayer)).
    pub fn new(calls: Calls, max_message: usize) -> Self {
        Self { calls, max_message }
    }
}

impl<B> Service<http::Request<B>> for ProcessService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        Box::pin(unary(ProcessCodec, Process(self.calls.clone()), request, self.max_message))
    }
}

/// Serves one unary gRPC call with tonic's framing, as the gateway serves
/// `Process` and the typed methods alike: no compression (see `size`), and
/// request messages over `max_message` bytes refused (tonic's decode limit,
/// behind [`RequestSizeLayer`](crate::size::RequestSizeLayer)'s).
pub(crate) async fn unary<C, S, B>(
    codec: C,
    service: S,
    request: http::Request<B>,
    max_message: usize,
) -> Result<http::Response<Body>, Infallible>
where
    C: Codec,
    C::Encode: Send + 'static,
    C::Decode: Send + 'static,
    S: UnaryService<C::Decode, Response = C::Encode>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let mut grpc = Grpc::new(codec).apply_max_message_size_config(Some(max_message), None);
    Ok(grpc.unary(service, request).await)
}

/// One `Process` call.
struct Process(Calls);

impl UnaryService<ProcessRequest> for Process {
    type Response = ProcessResponse;
    type Future = BoxFuture<'static, Result<Response<ProcessResponse>, Status>>;

    fn call(&mut self, request: Request<ProcessRequest>) -> Self::Future {
        let calls = self.0.clone();
        Box::pin(async move {
            let (context, caller) = context_of(&request)?;
            let result = handle(&calls, request.into_inner(), &context, &caller).await;
            result.map(Response::new).map_err(|error| calls.fail(error, &context))
        })
    }
}

/// Validates, publishes and waits for the reply.
async fn handle(
    calls: &Calls,
    request: ProcessRequest,
    context: &RequestContext,
    caller: &Caller,
) -> Result<ProcessResponse, GatewayError> {
    let route = validate::route(calls.limits(), &request.route)?;
    calls.admit(route, context, caller)?;
    let outgoing = AmqpRequest {
        correlation_id: context.correlation_id,
        route: route.to_owned(),
        payload: request.payload,
        content_type: request.content_type,
        headers: request.headers,
        deadline: context.deadline,
        method: None,
        trace: context.lean_trace(),
    };
    let reply = calls.send(outgoing, context).await?;
    Ok(response(reply, context))
}

/// A successful reply becomes a response.
fn response(reply: Reply, context: &RequestContext) -> ProcessResponse {
    ProcessResponse {
        payload: reply.payload.into(),
        content_type: reply.content_type.unwrap_or_default(),
        headers: reply.headers.into_iter().collect(),
        correlation_id: context.correlation_id.hyphenated().to_string(),
    }
}

/// `ProcessRequest` in, `ProcessResponse` out, with prost, as the generated
/// server's codec, but with small buffers: see [`buffers`].
#[derive(Clone, Copy, Debug, Default)]
struct ProcessCodec;

impl Codec for ProcessCodec {
    type Encode = ProcessResponse;
    type Decode = ProcessRequest;
    type Encoder = ProstEncoder<ProcessResponse>;
    type Decoder = ProstDecoder<ProcessRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(buffers())
    }
}

/// The buffers tonic reads a request into and writes a response into, one
/// each per call. tonic starts each at 8 KiB, two allocations of 8 KiB per
/// call for messages that are mostly far smaller; these start at 1 KiB and
/// grow (once) to fit a larger message.
pub(crate) fn buffers() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use amqp_gateway::broker::{AmqpUrl, Broker};
    use tokio_util::task::TaskTracker;
    use uuid::Uuid;

    use super::*;
    use crate::{config::AmqpConfig, deadline::Deadline};

    fn context() -> RequestContext {
        RequestContext::new(Deadline::after(std::time::Instant::now(), Duration::from_secs(5)), Uuid::new_v4())
    }

    fn reply(code: Code, message: &str) -> Reply {
        Reply {
            code,
            message: message.into(),
            payload: b"hi".to_vec(),
            content_type: Some("text/plain".into()),
            headers: BTreeMap::from([("tenant".to_owned(), "acme".to_owned())]),
        }
    }

    #[test]
    fn ok_reply_keeps_content_type_and_headers() {
        let context = context();
        let r = response(reply(Code::Ok, ""), &context);
        assert_eq!(&r.payload[..], b"hi");
        assert_eq!(r.content_type, "text/plain");
        assert_eq!(r.headers.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(r.correlation_id, context.correlation_id.to_string());
    }

    /// A service whose client never connects: the shutdown token is
    /// cancelled before the supervisor starts, so nothing touches a network.
    fn unconnected_service() -> Process {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let config = AmqpConfig {
            broker: Broker::new(AmqpUrl::parse("amqp://127.0.0.1:1/%2f").unwrap()),
            exchange: String::new(),
            channels: 1,
            max_reply_bytes: 1024,
        };
        let client = AmqpClient::start(config, shutdown, &TaskTracker::new());
        let limits = Limits {
            routes: ["echo".to_owned()].into(),
            default_route: None,
            default_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(2),
            max_payload_bytes: 10,
            max_headers: 2,
            max_header_bytes: 16,
        };
        Process(Calls::new(client, limits, CancellationToken::new()))
    }

    #[tokio::test]
    async fn served_without_its_layers_it_fails_closed() {
        let mut service = unconnected_service();
        let call = || Request::new(ProcessRequest { route: "echo".into(), ..Default::default() });

        let status = service.call(call()).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal, "no request context: {status:?}");
        assert!(!status.message().contains("context"), "internal detail leaked: {}", status.message());

        let mut without_caller = call();
        without_caller.extensions_mut().insert(context());
        let status = service.call(without_caller).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal, "no caller: {status:?}");

        // With both, the call gets as far as the broker, which is down.
        let mut complete = call();
        complete.extensions_mut().insert(context());
        complete.extensions_mut().insert(Caller::default());
        let status = service.call(complete).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
}
