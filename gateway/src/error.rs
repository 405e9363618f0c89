//! Gateway errors and the one place that decides which gRPC status a caller
//! sees for each of them ([`GatewayError::code`]) and with what message
//! (`From<GatewayError> for Status`).
//!
//! Every layer around `Process` and the handler itself fail with a
//! [`GatewayError`]; a layer that answers on its own turns it into a response
//! with [`GatewayError::into_http`], which goes through the same conversion.
//!
//! Internal detail (broker errors, lapin messages) is logged here and never
//! put in a status message: callers learn what happened and what to do, not
//! how the gateway is built.

use tonic::{Code, Status, body::Body};

use crate::amqp::RoundTripError;

/// Why a call did not return a worker's successful reply.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No valid bearer token (missing header, bad scheme, unknown token: the
    /// caller is not told which).
    #[error("a valid bearer token is required")]
    Unauthenticated,
    /// The call arrived while the in-flight limit was reached: shed.
    #[error("gateway is at its in-flight limit ({max_in_flight} calls); retry with backoff")]
    Overloaded {
        /// The configured limit.
        max_in_flight: usize,
    },
    /// The service was reached without what its layers put in the request
    /// (deadline, correlation id, caller): the server is assembled wrongly.
    /// Refused rather than served without a deadline or an access check.
    #[error("the gateway is misconfigured and cannot serve this call")]
    MissingContext(&'static str),
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
    RoundTrip(#[from] RoundTripError),
    /// The worker's successful reply does not fit the method's response
    /// type: JSON that does not parse into it, or a JSON reply to a method
    /// served as protobuf.
    #[error("the worker's reply does not fit {message_type}: {reason}")]
    ReplyDoesNotFit {
        /// The response message's full name.
        message_type: String,
        /// What did not fit.
        reason: String,
    },
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
            Self::Unauthenticated => Code::Unauthenticated,
            Self::Overloaded { .. } => Code::ResourceExhausted,
            Self::MissingContext(_) => Code::Internal,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::PayloadTooLarge { .. } | Self::RequestTooLarge { .. } => Code::ResourceExhausted,
            Self::RoundTrip(RoundTripError::ReplyTooLarge { .. }) => Code::ResourceExhausted,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::RoundTrip(RoundTripError::ReplyRejected(_)) | Self::ReplyDoesNotFit { .. } => Code::Internal,
            Self::ShuttingDown | Self::RoundTrip(_) => Code::Unavailable,
            Self::Worker { code, .. } => *code,
        }
    }
}

/// Why a request was refused before any AMQP work: the `reason` label of
/// `gateway_rejected_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No valid bearer token.
    Unauthenticated,
    /// The token may not call the route.
    PermissionDenied,
    /// A malformed request or a route not allowed.
    InvalidArgument,
    /// The payload, or the whole message, is over the limit.
    PayloadTooLarge,
}

impl Rejection {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::InvalidArgument => "invalid_argument",
            Self::PayloadTooLarge => "payload_too_large",
        }
    }
}

impl GatewayError {
    /// For a request refused before any AMQP work: why.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Self::Unauthenticated => Some(Rejection::Unauthenticated),
            Self::InvalidArgument(_) => Some(Rejection::InvalidArgument),
            Self::PermissionDenied(_) => Some(Rejection::PermissionDenied),
            Self::PayloadTooLarge { .. } | Self::RequestTooLarge { .. } => Some(Rejection::PayloadTooLarge),
            _ => None,
        }
    }

    /// The error as a complete gRPC answer (trailers-only), for the layers
    /// that answer without calling the service.
    pub fn into_http(self) -> http::Response<Body> {
        Status::from(self).into_http()
    }
}

impl From<GatewayError> for Status {
    fn from(error: GatewayError) -> Self {
        let code = error.code();
        let message = match error {
            GatewayError::Worker { message, .. } => message,
            GatewayError::MissingContext(missing) => {
                tracing::error!(missing, "Process was served without its layers; refusing the call");
                GatewayError::MissingContext(missing).to_string()
            }
            GatewayError::RoundTrip(RoundTripError::NotConnected | RoundTripError::ConnectionLost) => {
                "the gateway's broker connection is down; retry with backoff".to_owned()
            }
            GatewayError::RoundTrip(RoundTripError::Unroutable { route }) => {
                format!("no worker queue is bound for route {route:?}")
            }
            GatewayError::RoundTrip(RoundTripError::Nacked) => {
                "the broker refused the request; retry with backoff".to_owned()
            }
            GatewayError::RoundTrip(RoundTripError::Publish(source)) => {
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
            (GatewayError::Unauthenticated, Code::Unauthenticated),
            (GatewayError::Overloaded { max_in_flight: 1 }, Code::ResourceExhausted),
            (GatewayError::MissingContext("deadline"), Code::Internal),
            (GatewayError::InvalidArgument("x".into()), Code::InvalidArgument),
            (GatewayError::PermissionDenied("r".into()), Code::PermissionDenied),
            (GatewayError::PayloadTooLarge { size: 2, limit: 1 }, Code::ResourceExhausted),
            (GatewayError::RequestTooLarge { size: 3, limit: 2, payload_limit: 1 }, Code::ResourceExhausted),
            (GatewayError::DeadlineExceeded, Code::DeadlineExceeded),
            (GatewayError::ShuttingDown, Code::Unavailable),
            (GatewayError::Worker { code: Code::NotFound, message: "m".into() }, Code::NotFound),
            (RoundTripError::NotConnected.into(), Code::Unavailable),
            (RoundTripError::ConnectionLost.into(), Code::Unavailable),
            (RoundTripError::Nacked.into(), Code::Unavailable),
            (RoundTripError::Unroutable { route: "r".into() }.into(), Code::Unavailable),
            (RoundTripError::ReplyRejected("nested".into()).into(), Code::Internal),
            (RoundTripError::ReplyTooLarge { size: 2, limit: 1 }.into(), Code::ResourceExhausted),
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
        let status = Status::from(GatewayError::from(RoundTripError::ReplyTooLarge { size: 9999, limit: 1024 }));
        assert_eq!(status.message(), "the worker's reply is 9999 bytes, over the gateway's reply limit of 1024 bytes");
    }
}
