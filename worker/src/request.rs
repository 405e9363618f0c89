//! What a handler receives and returns.

use std::{collections::BTreeMap, time::SystemTime};

use bytes::Bytes;

/// One request from the gateway (or any publisher following the contract).
#[derive(Clone, Debug)]
pub struct Request {
    /// Body, byte for byte as the caller sent it.
    pub payload: Bytes,
    /// The `content_type` property, if set.
    pub content_type: Option<String>,
    /// String application headers (reserved `x-` names and trace context left
    /// out).
    pub headers: BTreeMap<String, String>,
    /// When the caller stops waiting (`x-deadline`), if the publisher set one.
    /// Work finished after it is wasted: the gateway drops late replies.
    pub deadline: Option<SystemTime>,
    /// The request's correlation id, for logs.
    pub correlation_id: String,
    /// The routing key the request was published with.
    pub route: String,
    /// True when the broker delivered this request before (a worker died or
    /// gave it back without acknowledging it).
    pub redelivered: bool,
    /// The typed method this request calls (`x-grpc-method`), e.g.
    /// `orders.v1.Orders/Create`, when the gateway serves a user's service;
    /// `None` for `gateway.v1.Gateway/Process` requests. A worker serving
    /// several methods on one queue dispatches on it (see
    /// [`crate::typed::Methods`]).
    pub method: Option<String>,
    /// The request message's full protobuf name (the AMQP `type` property),
    /// e.g. `orders.v1.CreateOrderRequest`, when the publisher set it.
    pub message_type: Option<String>,
}

/// A successful reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// Body.
    pub payload: Bytes,
    /// MIME type of the body.
    pub content_type: Option<String>,
    /// String headers passed back to the caller. Names starting with `x-` are
    /// reserved and are not delivered.
    pub headers: BTreeMap<String, String>,
}

impl Response {
    /// A reply carrying `payload`.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self { payload: payload.into(), ..Self::default() }
    }

    /// Sets the content type.
    #[must_use]
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}
