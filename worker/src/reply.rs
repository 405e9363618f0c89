//! Reply publishing, per the AMQP contract: to the default exchange, routing
//! key = the request's `reply_to`, `correlation_id` copied, status headers on
//! errors, under publisher confirms.

use amqp_gateway::{
    broker::{self, Broker, ConnectError, Connected, StepError},
    wire,
};
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};

use crate::{Response, Status};

/// Why a reply was not published.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplyError {
    /// The publish failed, or the broker did not confirm it in time.
    #[error(transparent)]
    Publish(#[from] StepError),
    #[error("the broker nacked the reply")]
    Nacked,
    /// No connection for a reply published alone could be made.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// Publishes a reply alone, on a connection of its own, closed afterwards:
/// for an address that may break the connection a reply to it is published
/// on (`crate::addresses`). `Ok(true)`: the broker confirmed it; `Ok(false)`:
/// the broker closed the connection on it with `INTERNAL_ERROR`; `Err`:
/// anything else (no connection, the broker going away), from which nothing
/// is learned about the address.
pub(crate) async fn publish_alone(
    broker: &Broker,
    reply_to: ShortString,
    correlation_id: ShortString,
    outcome: Result<Response, Status>,
) -> Result<bool, ReplyError> {
    let Connected { connection, .. } = broker.connect("grpc-amqp-worker-reply").await?;
    let channel = broker::bounded(connection.create_channel()).await?;
    broker::bounded(channel.confirm_select(ConfirmSelectOptions::default())).await?;
    let published = publish(&channel, reply_to, correlation_id, outcome).await;
    let _ = broker::bounded(connection.close(200, "reply published".into())).await;
    match published {
        Ok(()) => Ok(true),
        Err(error) if broke_the_connection(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// True when the broker closed the connection with `INTERNAL_ERROR`: what
/// RabbitMQ 3.10 does when a reply crashes its channel. Any other failure
/// (the broker going away, a timeout) says nothing about the address.
fn broke_the_connection(error: &ReplyError) -> bool {
    use lapin::{
        ErrorKind,
        protocol::{AMQPErrorKind, AMQPHardError},
    };
    match error {
        ReplyError::Publish(StepError::Amqp(error)) => matches!(
            error.kind(),
            ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR))
        ),
        _ => false,
    }
}

/// Publishes the reply to a request and waits for the broker's confirm,
/// within the broker step bound.
pub(crate) async fn publish(
    channel: &Channel,
    reply_to: ShortString,
    correlation_id: ShortString,
    outcome: Result<Response, Status>,
) -> Result<(), ReplyError> {
    let (payload, properties) = encode(correlation_id, outcome, &tracing::Span::current());
    let publish = async {
        channel.basic_publish("".into(), reply_to, BasicPublishOptions::default(), &payload, properties).await?.await
    };
    match broker::bounded(publish).await? {
        Confirmation::Nack(_) => Err(ReplyError::Nacked),
        // A reply to a caller that is gone is returned or dropped by the
        // broker; either way there is nobody left to answer.
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
    }
}

/// The body and properties of a reply, carrying the trace context of `span`
/// so the reply hop joins the trace.
pub(crate) fn encode(
    correlation_id: ShortString,
    outcome: Result<Response, Status>,
    span: &tracing::Span,
) -> (bytes::Bytes, BasicProperties) {
    let mut headers = FieldTable::default();
    otel::propagation::inject_amqp(span, &mut headers);
    let properties = BasicProperties::default().with_correlation_id(correlation_id);
    match outcome {
        Ok(response) => {
            for (name, value) in response.headers {
                // Reserved names are the gateway's and trace context is set
                // above: a handler can fake neither a status nor a parent span.
                let ours = wire::is_reserved(&name) || wire::is_trace_context(&name);
                if !ours && !name.is_empty() && name.len() <= wire::SHORT_STRING_MAX {
                    headers.insert(name.into(), wire::long_string(value));
                }
            }
            let mut properties = properties.with_headers(headers);
            if let Some(content_type) = response.content_type {
                properties = properties.with_content_type(content_type.into());
            }
            (response.payload, properties)
        }
        Err(status) => {
            wire::encode_status(&mut headers, status.code(), status.message());
            (bytes::Bytes::new(), properties.with_headers(headers).with_content_type(wire::TEXT_PLAIN.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_an_internal_error_close_marks_an_address() {
        use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError};
        let closed = |kind| {
            let error: lapin::Error = lapin::ErrorKind::ProtocolError(AMQPError::new(kind, "closed".into())).into();
            ReplyError::Publish(StepError::Amqp(error))
        };
        assert!(broke_the_connection(&closed(AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR))));
        assert!(!broke_the_connection(&closed(AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED))));
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(!broke_the_connection(&ReplyError::Publish(StepError::Amqp(io))));
        assert!(!broke_the_connection(&ReplyError::Publish(StepError::Timeout(broker::STEP_TIMEOUT))));
        assert!(!broke_the_connection(&ReplyError::Nacked));
    }

    use tonic::Code;

    use super::*;

    #[test]
    fn error_reply_carries_the_status() {
        let (body, properties) = encode("id".into(), Err(Status::not_found("no such thing")), &tracing::Span::none());
        assert!(body.is_empty());
        assert_eq!(properties.correlation_id().as_ref().map(ShortString::as_str), Some("id"));
        assert_eq!(wire::decode_status(properties.headers().as_ref()), (Code::NotFound, "no such thing".into()));
    }

    #[test]
    fn ok_reply_drops_reserved_headers() {
        let response = Response::new("hi")
            .with_content_type("text/plain")
            .with_header("tenant", "acme")
            .with_header("x-status-code", "13");
        let (body, properties) = encode("id".into(), Ok(response), &tracing::Span::none());
        assert_eq!(&body[..], b"hi");
        assert_eq!(properties.content_type().as_ref().map(ShortString::as_str), Some("text/plain"));
        assert_eq!(wire::decode_status(properties.headers().as_ref()).0, Code::Ok);
        assert_eq!(wire::application_headers(properties.headers().as_ref()).len(), 1);
    }
}
