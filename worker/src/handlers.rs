//! Built-in handlers served by the `worker` binary.

use std::time::Duration;

use tower::{BoxError, Service, ServiceExt, service_fn, util::BoxCloneSyncService};

use crate::{Request, Response, Status};

/// A boxed handler, as the binary stores the one it serves.
pub type BoxHandler = BoxCloneSyncService<Request, Response, Status>;

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

/// Adapts a service with any error type into a handler: errors that are
/// already a [`Status`] pass through, anything else becomes INTERNAL (its text
/// is logged, not sent).
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
            Err(other) => {
                tracing::error!(error = %other, "handler failed");
                Status::internal("the worker failed to process the request")
            }
        }
    }))
}
