//! Request validation: what a `ProcessRequest` may contain, checked before
//! anything is published. Pure functions of the configured [`Limits`].

use std::collections::HashMap;

use amqp_gateway::wire::{self, SHORT_STRING_MAX};

use crate::{config::Limits, error::GatewayError};

/// The route a request goes to: its own, or the default when empty. Only
/// allow-listed routes pass.
pub fn route<'a>(limits: &'a Limits, requested: &str) -> Result<&'a str, GatewayError> {
    if requested.is_empty() {
        return limits.default_route.as_deref().ok_or_else(|| {
            GatewayError::InvalidArgument("route is empty and the gateway has no default route".into())
        });
    }
    if let Some(route) = limits.routes.get(requested) {
        return Ok(route);
    }
    // Echo the route only when it is short and printable: it is caller input.
    let shown = if requested.len() <= 64 && requested.chars().all(|c| c.is_ascii_graphic()) {
        format!("{requested:?}")
    } else {
        format!("of {} bytes", requested.len())
    };
    Err(GatewayError::InvalidArgument(format!("route {shown} is not allowed")))
}

/// The payload fits the configured limit.
pub fn payload(limits: &Limits, size: usize) -> Result<(), GatewayError> {
    if size > limits.max_payload_bytes {
        return Err(GatewayError::PayloadTooLarge { size, limit: limits.max_payload_bytes });
    }
    Ok(())
}

/// Caller headers: few and small enough, and none of the names the gateway
/// reserves (`x-...`) or sets itself (trace context).
pub fn headers(limits: &Limits, headers: &HashMap<String, String>) -> Result<(), GatewayError> {
    let invalid = |m: String| Err(GatewayError::InvalidArgument(m));
    if headers.len() > limits.max_headers {
        return invalid(format!("{} headers, over the limit of {}", headers.len(), limits.max_headers));
    }
    for (name, value) in headers {
        if name.is_empty() || name.len() > SHORT_STRING_MAX {
            return invalid(format!("header names must be 1 to {SHORT_STRING_MAX} bytes"));
        }
        if wire::is_reserved(name) {
            return invalid(format!("header {name:?} is reserved: names starting with \"x-\" belong to the gateway"));
        }
        if wire::is_trace_context(name) {
            return invalid(format!("header {name:?} is trace context: send it as gRPC metadata, not in headers"));
        }
        if name.len() + value.len() > limits.max_header_bytes {
            return invalid(format!("header {name:?} is over the limit of {} bytes", limits.max_header_bytes));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> Limits {
        Limits {
            routes: ["echo".to_owned(), "jobs".to_owned()].into(),
            default_route: Some("echo".into()),
            default_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(2),
            max_payload_bytes: 10,
            max_headers: 2,
            max_header_bytes: 16,
        }
    }

    fn invalid(r: Result<impl std::fmt::Debug, GatewayError>) -> String {
        match r {
            Err(GatewayError::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn routes() {
        let l = limits();
        assert_eq!(route(&l, "jobs").unwrap(), "jobs");
        assert_eq!(route(&l, "").unwrap(), "echo");
        assert!(invalid(route(&l, "other")).contains("\"other\" is not allowed"));
        assert!(invalid(route(&l, &"z".repeat(300))).contains("of 300 bytes"));
        let no_default = Limits { default_route: None, ..limits() };
        assert!(invalid(route(&no_default, "")).contains("no default route"));
    }

    #[test]
    fn payload_limit() {
        assert!(payload(&limits(), 10).is_ok());
        assert!(matches!(payload(&limits(), 11), Err(GatewayError::PayloadTooLarge { size: 11, limit: 10 })));
    }

    #[test]
    fn header_rules() {
        let l = limits();
        let h = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(headers(&l, &h(&[("tenant", "acme")])).is_ok());
        assert!(invalid(headers(&l, &h(&[("a", ""), ("b", ""), ("c", "")]))).contains("3 headers"));
        assert!(invalid(headers(&l, &h(&[("x-deadline", "0")]))).contains("reserved"));
        assert!(invalid(headers(&l, &h(&[("X-Status-Code", "0")]))).contains("reserved"));
        assert!(invalid(headers(&l, &h(&[("traceparent", "00")]))).contains("trace context"));
        assert!(invalid(headers(&l, &h(&[("baggage", "k=v")]))).contains("trace context"));
        assert!(invalid(headers(&l, &h(&[("", "v")]))).contains("1 to 255"));
        assert!(invalid(headers(&l, &h(&[("tenant", "a-very-long-value")]))).contains("over the limit of 16"));
    }
}
