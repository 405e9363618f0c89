//! `gateway.v1.Gateway/Process`: where a request enters and where its outcome
//! is decided.
//!
//! The handler validates the request, publishes it through the
//! [`AmqpClient`] and waits for the reply. [`CallLayer`](crate::call::CallLayer)
//! around it fixes the call's deadline and correlation id and drops this
//! future when the deadline passes; tonic drops it when the caller cancels.
//! Either way the pending entry goes with it.

use std::{sync::Arc, time::Instant};

use amqp_gateway::{
    pb::{ProcessRequest, ProcessResponse, gateway_server::Gateway},
    wire,
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::{
    amqp::{AmqpClient, Call, Reply},
    auth::Caller,
    call::{CallContext, Deadline, DeadlinePolicy},
    config::Limits,
    error::GatewayError,
    metrics::CallMetrics,
    validate,
};

/// The `Gateway` service.
#[derive(Clone, Debug)]
pub struct GatewayService {
    client: AmqpClient,
    limits: Arc<Limits>,
    metrics: Arc<CallMetrics>,
    abort: CancellationToken,
}

impl GatewayService {
    /// A service publishing through `client` under `limits`. Cancelling
    /// `abort` answers every call still waiting with UNAVAILABLE (the end of
    /// the shutdown grace period).
    pub fn new(client: AmqpClient, limits: Limits, abort: CancellationToken) -> Self {
        let metrics = Arc::new(CallMetrics::new(&limits.routes));
        Self { client, limits: Arc::new(limits), metrics, abort }
    }

    async fn process<'a>(
        &'a self,
        request: ProcessRequest,
        deadline: Deadline,
        id: Uuid,
        caller: &Caller,
        record: &mut CallRecord<'a>,
    ) -> Result<ProcessResponse, GatewayError> {
        let route = validate::route(&self.limits, &request.route)?;
        record.route = Some(route);
        if !caller.may_call(route) {
            return Err(GatewayError::PermissionDenied(route.to_owned()));
        }
        validate::payload(&self.limits, request.payload.len())?;
        validate::headers(&self.limits, &request.headers)?;
        if deadline.remaining().is_zero() {
            // Answered at once, without publishing: nobody could use the reply.
            return Err(GatewayError::DeadlineExceeded);
        }
        let call = Call {
            correlation_id: id,
            route: route.to_owned(),
            payload: request.payload,
            content_type: request.content_type,
            headers: request.headers,
            deadline,
        };
        let reply = tokio::select! {
            reply = self.client.call(call) => reply?,
            () = self.abort.cancelled() => return Err(GatewayError::ShuttingDown),
        };
        response(reply, id)
    }
}

/// A reply becomes a response, or the worker's error status.
fn response(reply: Reply, id: Uuid) -> Result<ProcessResponse, GatewayError> {
    let (code, message) = wire::decode_status(reply.headers.as_ref());
    if code != Code::Ok {
        return Err(GatewayError::Worker { code, message });
    }
    Ok(ProcessResponse {
        payload: reply.payload.into(),
        content_type: reply.content_type.unwrap_or_default(),
        headers: wire::application_headers(reply.headers.as_ref()).into_iter().collect(),
        correlation_id: id.hyphenated().to_string(),
    })
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn process(&self, request: Request<ProcessRequest>) -> Result<Response<ProcessResponse>, Status> {
        // Set by `CallLayer`; the fallback only matters when the service is
        // mounted without it (then nothing enforces the deadline either).
        let context = request.extensions().get::<CallContext>().copied().unwrap_or_else(|| {
            let policy =
                DeadlinePolicy { default_timeout: self.limits.default_timeout, max_timeout: self.limits.max_timeout };
            CallContext {
                deadline: policy.deadline(request.metadata().as_ref(), Instant::now()),
                correlation_id: Uuid::new_v4(),
            }
        });
        let id = context.correlation_id;
        // Set by `AuthLayer`; without it (no tokens configured) anyone may
        // call any allowed route.
        let caller = request.extensions().get::<Caller>().cloned().unwrap_or_default();
        let mut record = CallRecord::new(&self.metrics, context.deadline);
        let result = self.process(request.into_inner(), context.deadline, id, &caller, &mut record).await;
        if let Some(reason) = result.as_ref().err().and_then(GatewayError::rejection) {
            metrics::counter!("gateway_rejected_requests_total", "reason" => reason).increment(1);
        }
        record.code = Some(result.as_ref().map_or_else(GatewayError::code, |_| Code::Ok));
        result.map(Response::new).map_err(|error| {
            tracing::debug!(correlation_id = %id, %error, "call failed");
            Status::from(error)
        })
    }
}

/// Records a call in the metrics when it ends, however it ends: a handler
/// dropped before finishing was cut off by its deadline or by the caller.
struct CallRecord<'a> {
    metrics: &'a CallMetrics,
    route: Option<&'a str>,
    code: Option<Code>,
    deadline: Deadline,
    started: Instant,
}

impl<'a> CallRecord<'a> {
    fn new(metrics: &'a CallMetrics, deadline: Deadline) -> Self {
        Self { metrics, route: None, code: None, deadline, started: Instant::now() }
    }
}

impl Drop for CallRecord<'_> {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(if self.deadline.remaining().is_zero() {
            Code::DeadlineExceeded
        } else {
            Code::Cancelled
        });
        self.metrics.record(self.route, code, self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable};

    use super::*;

    #[test]
    fn error_reply_maps_to_the_worker_status() {
        let mut headers = FieldTable::default();
        wire::encode_status(&mut headers, Code::PermissionDenied, "no");
        let reply = Reply { payload: vec![], content_type: None, headers: Some(headers) };
        match response(reply, Uuid::nil()) {
            Err(GatewayError::Worker { code: Code::PermissionDenied, message }) => assert_eq!(message, "no"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ok_reply_keeps_content_type_and_string_headers() {
        let mut headers = FieldTable::default();
        headers.insert("tenant".into(), wire::long_string("acme"));
        headers.insert("n".into(), AMQPValue::LongInt(1));
        let reply = Reply { payload: b"hi".to_vec(), content_type: Some("text/plain".into()), headers: Some(headers) };
        let id = Uuid::new_v4();
        let r = response(reply, id).unwrap();
        assert_eq!(&r.payload[..], b"hi");
        assert_eq!(r.content_type, "text/plain");
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.correlation_id, id.to_string());
    }
}
