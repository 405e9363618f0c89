//! The in-flight limit: load shedding for `Process`.
//!
//! A call that arrives while `max_in_flight` calls are running is answered at
//! once with RESOURCE_EXHAUSTED instead of waiting in a queue: under overload a
//! queue only converts memory into latency that callers' deadlines then waste.
//! This wraps the `Gateway` service alone, so health checks and reflection are
//! never shed.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use metrics::{Counter, Gauge};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{body::Body, server::NamedService};
use tower::{Layer, Service};

use crate::error::GatewayError;

/// Sheds calls beyond a fixed number in flight.
#[derive(Clone, Debug)]
pub struct InFlightLimitLayer {
    permits: Arc<Semaphore>,
    max: usize,
    gauge: Gauge,
    shed: Counter,
}

impl InFlightLimitLayer {
    /// Allows at most `max` calls at once.
    pub fn new(max: usize) -> Self {
        let (gauge, shed) = crate::metrics::in_flight_metrics();
        Self { permits: Arc::new(Semaphore::new(max)), max, gauge, shed }
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            permits: self.permits.clone(),
            max: self.max,
            gauge: self.gauge.clone(),
            shed: self.shed.clone(),
        }
    }
}

/// See [`InFlightLimitLayer`].
#[derive(Clone, Debug)]
pub struct InFlightLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    max: usize,
    gauge: Gauge,
    shed: Counter,
}

impl<S: NamedService> NamedService for InFlightLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for InFlightLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let permit = Admission::new(permit, self.gauge.clone());
                ResponseFuture::Admitted { inner: self.inner.call(request), _permit: permit }
            }
            Err(_) => {
                self.shed.increment(1);
                tracing::debug!(max_in_flight = self.max, "shedding call: in-flight limit reached");
                let response = GatewayError::Overloaded { max_in_flight: self.max }.into_http();
                ResponseFuture::Shed { response: Some(response) }
            }
        }
    }
}

pin_project! {
    /// Response of [`InFlightLimit`]: the inner call holding its permit, or the
    /// immediate shed answer.
    #[project = Projection]
    #[allow(missing_docs)] // the variants are documented; pin-project-lite adds a generated item
    pub enum ResponseFuture<F> {
        /// Admitted: the permit is released when the call completes or is dropped.
        Admitted { #[pin] inner: F, _permit: Admission },
        /// Shed.
        Shed { response: Option<http::Response<Body>> },
    }
}

/// A call's place under the limit, counted in `gateway_calls_in_flight`
/// until it is dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Admission {
    fn new(permit: OwnedSemaphorePermit, gauge: Gauge) -> Self {
        gauge.increment(1.0);
        Self { _permit: permit, gauge }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>>,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projection::Admitted { inner, .. } => inner.poll(cx),
            Projection::Shed { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled after completion: stay pending like a fused future.
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Status;
    use tower::{ServiceExt, service_fn};

    use super::*;

    #[tokio::test]
    async fn sheds_beyond_the_limit_and_recovers() {
        let layer = InFlightLimitLayer::new(1);
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let wait = Arc::new(tokio::sync::Mutex::new(Some(wait)));
        let svc = layer.layer(service_fn(move |_req: http::Request<()>| {
            let wait = wait.clone();
            async move {
                if let Some(rx) = wait.lock().await.take() {
                    let _ = rx.await;
                }
                Ok::<_, Infallible>(http::Response::new(Body::empty()))
            }
        }));

        let first = tokio::spawn(svc.clone().oneshot(http::Request::new(())));
        // Bounded wait until the first call holds the only permit.
        for _ in 0..1000 {
            if layer.in_flight() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(layer.in_flight(), 1);

        let shed = svc.clone().oneshot(http::Request::new(())).await.unwrap();
        let status = Status::from_header_map(shed.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("in-flight limit (1 calls)"));

        release.send(()).unwrap();
        let ok = first.await.unwrap().unwrap();
        assert!(Status::from_header_map(ok.headers()).is_none());
        assert_eq!(layer.in_flight(), 0);
    }
}
