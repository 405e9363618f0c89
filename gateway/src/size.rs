//! The request size limit at the gRPC framing level: a request message too
//! large for the gateway is refused with RESOURCE_EXHAUSTED from its 5-byte
//! gRPC message header, before tonic buffers any of it.
//!
//! Why here and not in tonic: tonic's own decode limit answers OUT_OF_RANGE
//! ("decoded message length too large"), where grpc-go and gRPC C++ answer
//! RESOURCE_EXHAUSTED and the contract promises it. [`RequestSizeLayer`] wraps
//! the request body of `Process`, reads every message's length prefix as the
//! bytes pass, and fails the body with the gateway's own status the moment a
//! prefix announces more than [`message_limit`]. tonic turns a body error that
//! is a `Status` into the call's answer unchanged, and never sees the data
//! frame that carried the oversized prefix, so the gateway holds at most one
//! HTTP/2 data frame of such a request, whatever its size.
//!
//! Messages up to the limit pass untouched; one whose payload is over
//! `--max-payload-bytes` but whose message fits is decoded and refused by
//! [`validate::payload`](crate::validate::payload), with the same code. tonic's
//! own limit stays set to the same number behind this one.
//!
//! Compression: the gateway enables no request compression (tonic is built
//! without its gzip/deflate/zstd features), so a request marked
//! `grpc-encoding: gzip` is answered UNIMPLEMENTED before its body is read,
//! and no decompression bomb can get past this check.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::{Status, server::NamedService};
use tower::{Layer, Service};

use crate::{error::GatewayError, metrics::Rejections};

/// Room above the payload limit for the rest of a `ProcessRequest` (route,
/// content type, headers). The message limit sits above the configured
/// payload limit so the gateway's payload check, not the framing one, answers
/// requests whose payload is only a little too large, with their exact size.
const ENVELOPE_ALLOWANCE: usize = 256 * 1024;

/// Length of the gRPC message header: a compressed flag and a big-endian
/// 32-bit length.
const HEADER_LEN: usize = 5;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest `ProcessRequest` message accepted with a payload limit of
/// `max_payload_bytes`.
pub fn message_limit(max_payload_bytes: usize) -> usize {
    max_payload_bytes.saturating_add(ENVELOPE_ALLOWANCE)
}

/// Refuses request messages larger than [`message_limit`] from their length
/// prefix. Wraps the `Gateway` service.
#[derive(Clone, Debug)]
pub struct RequestSizeLayer {
    max_payload_bytes: usize,
    rejections: Rejections,
}

impl RequestSizeLayer {
    /// A layer for a payload limit of `max_payload_bytes`.
    pub fn new(max_payload_bytes: usize) -> Self {
        Self { max_payload_bytes, rejections: Rejections::new() }
    }
}

impl<S> Layer<S> for RequestSizeLayer {
    type Service = RequestSize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSize { inner, max_payload_bytes: self.max_payload_bytes, rejections: self.rejections.clone() }
    }
}

/// See [`RequestSizeLayer`].
#[derive(Clone, Debug)]
pub struct RequestSize<S> {
    inner: S,
    max_payload_bytes: usize,
    rejections: Rejections,
}

impl<S: NamedService> NamedService for RequestSize<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for RequestSize<S>
where
    S: Service<http::Request<LimitedBody<B>>, Error = Infallible>,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let max_payload_bytes = self.max_payload_bytes;
        self.inner.call(request.map(|inner| LimitedBody {
            inner,
            scanner: FrameScanner::new(message_limit(max_payload_bytes)),
            max_payload_bytes,
            rejections: self.rejections.clone(),
            failed: false,
        }))
    }
}

pin_project! {
    /// A request body that fails with RESOURCE_EXHAUSTED as soon as a gRPC
    /// message header in it announces a message over the limit.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        scanner: FrameScanner,
        max_payload_bytes: usize,
        rejections: Rejections,
        failed: bool,
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref()
            && let Err(size) = this.scanner.scan(data)
        {
            *this.failed = true;
            tracing::debug!(size, limit = this.scanner.limit, "refusing an oversized request from its length prefix");
            let error = GatewayError::RequestTooLarge {
                size,
                limit: this.scanner.limit,
                payload_limit: *this.max_payload_bytes,
            };
            this.rejections.count(&error);
            return Poll::Ready(Some(Err(Box::new(Status::from(error)))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Follows the gRPC message framing across arbitrary data-frame boundaries:
/// each message is a 5-byte header (flag, big-endian length) and that many
/// bytes. Holds only the header bytes seen so far.
#[derive(Debug)]
struct FrameScanner {
    limit: usize,
    header: [u8; HEADER_LEN],
    /// Header bytes collected for the next message.
    have: usize,
    /// Body bytes of the current message still to pass.
    skip: usize,
}

impl FrameScanner {
    fn new(limit: usize) -> Self {
        Self { limit, header: [0; HEADER_LEN], have: 0, skip: 0 }
    }

    /// Follows `data`; the announced size of the first message over the limit.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), usize> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == HEADER_LEN {
                self.have = 0;
                let [_, a, b, c, d] = self.header;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > self.limit {
                    return Err(len);
                }
                self.skip = len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    #[test]
    fn messages_up_to_the_limit_pass() {
        let mut scanner = FrameScanner::new(10);
        assert_eq!(scanner.scan(&message(10)), Ok(()));
        assert_eq!(scanner.scan(&message(0)), Ok(()));
        assert_eq!(scanner.scan(&[message(3), message(10)].concat()), Ok(()));
    }

    #[test]
    fn an_oversized_prefix_fails_before_its_body() {
        let mut scanner = FrameScanner::new(10);
        assert_eq!(scanner.scan(&[0, 0, 0, 0, 11]), Err(11));
        let mut scanner = FrameScanner::new(10);
        assert_eq!(scanner.scan(&[0, 0xff, 0xff, 0xff, 0xff]), Err(u32::MAX as usize));
    }

    #[test]
    fn headers_split_across_frames_are_followed() {
        // A small message, then an oversized one whose header arrives one
        // byte per frame, in the same frame as the small message's tail.
        let mut scanner = FrameScanner::new(10);
        let small = message(4);
        assert_eq!(scanner.scan(&small[..3]), Ok(()));
        assert_eq!(scanner.scan(&[&small[3..], &[1u8, 0][..]].concat()), Ok(()));
        assert_eq!(scanner.scan(&[0]), Ok(()));
        assert_eq!(scanner.scan(&[0]), Ok(()));
        assert_eq!(scanner.scan(&[200]), Err(200));
    }

    #[test]
    fn every_split_of_a_stream_gives_the_same_answer() {
        let stream = [message(5), message(10), message(2), message(11)].concat();
        for split in 0..stream.len() {
            let mut scanner = FrameScanner::new(10);
            let first = scanner.scan(&stream[..split]);
            let outcome = first.and_then(|()| scanner.scan(&stream[split..]));
            assert_eq!(outcome, Err(11), "split at {split}");
        }
    }
}
