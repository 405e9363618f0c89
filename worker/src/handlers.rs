//! Built-in handlers served by the `worker` binary.

use std::time::Duration;

use tower::{BoxError, Service, ServiceExt, service_fn, util::BoxCloneSyncService};

use crate::{Request, Response, Status};

/// A boxed handler, as the binary stores the one it serves.
pub type BoxHandler = BoxCloneSyncService<Request, Response, Status>;

/// A built-in handler, as the binary's flags choose it.
#[derive(Clone, Debug)]
pub enum BuiltIn {
    /// [`echo`] after `delay`.
    Echo {
        /// How long to wait before answering.
        delay: Duration,
    },
    /// [`fail`] with this status.
    Fail(Status),
}

impl BuiltIn {
    /// The handler to serve.
    pub fn into_handler(self) -> BoxHandler {
        match self {
            Self::Echo { delay } => echo(delay),
            Self::Fail(status) => fail(status),
        }
    }
}

/// Replies with the request's payload, content type and headers, after
/// `delay` (zero for none: a slow worker for demos and tests otherwise).
pub fn echo(delay: Duration) -> BoxHandler {
    BoxCloneSyncService::new(service_fn(move |request: Request| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, Status>(Response {
            payload: request.payload,
            content_type: request.content_type,
            headers: request.headers,
        })
    }))
}

/// Answers every request with `status`: a failing worker, to see how errors
/// reach callers and traces.
pub fn fail(status: Status) -> BoxHandler {
    BoxCloneSyncService::new(service_fn(move |_request: Request| {
        let status = Status::new(status.code(), status.message());
        async move { Err::<Response, _>(status) }
    }))
}

/// Adapts a service with any error type into a handler, so tower middleware
/// composes: errors that are already a [`Status`] pass through, tower's
/// timeout becomes DEADLINE_EXCEEDED, anything else becomes INTERNAL (its text
/// is logged, not sent to the caller).
pub fn from_service<S>(service: S) -> BoxHandler
where
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(service.map_err(|e: S::Error| {
        let e: BoxError = e.into();
        match e.downcast::<Status>() {
            Ok(status) => *status,
            Err(other) if other.is::<tower::timeout::error::Elapsed>() => {
                Status::deadline_exceeded("the worker's handler timed out")
            }
            Err(other) => {
                tracing::error!(error = %other, "handler failed");
                Status::internal("the worker failed to process the request")
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use tower::ServiceBuilder;

    use super::*;
    use crate::Code;

    fn request(payload: &'static [u8]) -> Request {
        Request {
            payload: Bytes::from_static(payload),
            content_type: Some("text/plain".into()),
            headers: BTreeMap::from([("k".into(), "v".into())]),
            deadline: None,
            correlation_id: "id".into(),
            route: "r".into(),
            redelivered: false,
            method: None,
            message_type: None,
        }
    }

    #[tokio::test]
    async fn echo_returns_what_it_got() {
        let response = echo(Duration::ZERO).oneshot(request(b"hi")).await.unwrap();
        assert_eq!(&response.payload[..], b"hi");
        assert_eq!(response.content_type.as_deref(), Some("text/plain"));
        assert_eq!(response.headers.get("k").map(String::as_str), Some("v"));
    }

    #[tokio::test]
    async fn fail_answers_its_status() {
        let status = fail(Status::unavailable("down for maintenance")).oneshot(request(b"x")).await.unwrap_err();
        assert_eq!((status.code(), status.message()), (Code::Unavailable, "down for maintenance"));
    }

    #[tokio::test(start_paused = true)]
    async fn middleware_errors_become_statuses() {
        let slow = service_fn(|_r: Request| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Status>(Response::default())
        });
        let timed = from_service(ServiceBuilder::new().timeout(Duration::from_millis(10)).service(slow));
        assert_eq!(timed.oneshot(request(b"")).await.unwrap_err().code(), Code::DeadlineExceeded);

        let failing = service_fn(|_r: Request| async { Err::<Response, _>(std::io::Error::other("disk on fire")) });
        let status = from_service(failing).oneshot(request(b"")).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("disk on fire"), "internal detail leaked: {}", status.message());

        let refusing = service_fn(|_r: Request| async { Err::<Response, _>(Status::not_found("nope")) });
        assert_eq!(from_service(refusing).oneshot(request(b"")).await.unwrap_err().code(), Code::NotFound);
    }
}
