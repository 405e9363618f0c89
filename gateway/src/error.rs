//! Gateway errors and the one place that decides which gRPC status a caller
//! sees for each of them ([`GatewayError::code`]) and with what message.
//!
//! Internal detail (broker errors, lapin messages) is logged here and never
//! put in a status message: callers learn what happened and what to do, not
//! how the gateway is built.

use tonic::{Code, Status};

use crate::amqp::CallError;

/// Why a `Process` call did not return a worker's successful reply.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed or asks for something not allowed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller's token may not call this route.
    #[error("this caller may not call route {0:?}")]
    PermissionDenied(String),
    /// The payload is over the configured limit.
    #[error("payload is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Payload size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The request message is over the gateway's message limit, refused
    /// from its gRPC length prefix before it was read.
    #[error(
        "request message is {size} bytes, over the limit of {limit} bytes (a payload of at most {payload_limit} \
         bytes plus room for route and headers)"
    )]
    RequestTooLarge {
        /// Message size announced by the length prefix.
        size: usize,
        /// The message limit.
        limit: usize,
        /// The configured payload limit.
        payload_limit: usize,
    },
    /// No reply before the deadline.
    #[error("deadline exceeded before the worker replied")]
    DeadlineExceeded,
    /// The gateway is shutting down and its grace period is over.
    #[error("the gateway is shutting down; retry on another instance")]
    ShuttingDown,
    /// The broker round trip failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The worker replied with an error status.
    #[error("worker replied {code:?}: {message}")]
    Worker {
        /// The worker's status code.
        code: Code,
        /// The worker's status message.
        message: String,
    },
}

impl GatewayError {
    /// The status code the caller sees for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::PayloadTooLarge { .. } | Self::RequestTooLarge { .. } => Code::ResourceExhausted,
            Self::Call(CallError::ReplyTooLarge { .. }) => Code::ResourceExhausted,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Call(CallError::ReplyRejected(_)) => Code::Internal,
            Self::ShuttingDown | Self::Call(_) => Code::Unavailable,
            Self::Worker { code, .. } => *code,
        }
    }
}

impl GatewayError {
    /// For a request refused before any AMQP work: why, as a metric label
    /// (`gateway_rejected_requests_total{reason}`).
    pub fn rejection(&self) -> Option<&'static str> {
        match self {
            Self::InvalidArgument(_) => Some("invalid_argument"),
            Self::PermissionDenied(_) => Some("permission_denied"),
            Self::PayloadTooLarge { .. } | Self::RequestTooLarge { .. } => Some("payload_too_large"),
            _ => None,
        }
    }
}

impl From<GatewayError> for Status {
    fn from(error: GatewayError) -> Self {
        let code = error.code();
        let message = match error {
            GatewayError::Worker { message, .. } => message,
            GatewayError::Call(CallError::NotConnected | CallError::ConnectionLost) => {
                "the gateway's broker connection is down; retry with backoff".to_owned()
            }
            GatewayError::Call(CallError::Unroutable { route }) => {
                format!("no worker queue is bound for route {route:?}")
            }
            GatewayError::Call(CallError::Nacked) => "the broker refused the request; retry with backoff".to_owned(),
            GatewayError::Call(CallError::Publish(source)) => {
                tracing::warn!(error = %source, "publish failed");
                "the request could not be published; retry with backoff".to_owned()
            }
            other => other.to_string(),
        };
        Status::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let cases = [
            (GatewayError::InvalidArgument("x".into()), Code::InvalidArgument),
            (GatewayError::PermissionDenied("r".into()), Code::PermissionDenied),
            (GatewayError::PayloadTooLarge { size: 2, limit: 1 }, Code::ResourceExhausted),
            (GatewayError::RequestTooLarge { size: 3, limit: 2, payload_limit: 1 }, Code::ResourceExhausted),
            (GatewayError::DeadlineExceeded, Code::DeadlineExceeded),
            (GatewayError::ShuttingDown, Code::Unavailable),
            (GatewayError::Worker { code: Code::NotFound, message: "m".into() }, Code::NotFound),
            (CallError::NotConnected.into(), Code::Unavailable),
            (CallError::ConnectionLost.into(), Code::Unavailable),
            (CallError::Nacked.into(), Code::Unavailable),
            (CallError::Unroutable { route: "r".into() }.into(), Code::Unavailable),
            (CallError::ReplyRejected("nested".into()).into(), Code::Internal),
            (CallError::ReplyTooLarge { size: 2, limit: 1 }.into(), Code::ResourceExhausted),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error:?}");
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn payload_limit_is_in_the_message() {
        let status = Status::from(GatewayError::PayloadTooLarge { size: 2048, limit: 1024 });
        assert!(status.message().contains("1024"), "{}", status.message());
        let status = Status::from(GatewayError::RequestTooLarge { size: 9999, limit: 2048, payload_limit: 1024 });
        assert!(status.message().contains("2048") && status.message().contains("1024"), "{}", status.message());
        let status = Status::from(GatewayError::from(CallError::ReplyTooLarge { size: 9999, limit: 1024 }));
        assert_eq!(status.message(), "the worker's reply is 9999 bytes, over the gateway's reply limit of 1024 bytes");
    }
}
