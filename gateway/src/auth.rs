//! Caller authentication: bearer tokens, checked before any AMQP work.
//!
//! [`AuthLayer`] wraps every gRPC service of the gateway. A request needs an
//! `authorization: Bearer <token>` header with one of the configured tokens,
//! else it is answered UNAUTHENTICATED with the same message whatever was
//! wrong (missing header, bad scheme, unknown token), so a caller learns
//! nothing about which part failed. Health and reflection stay open unless
//! configured otherwise, so probes and grpcurl keep working.
//!
//! Tokens are compared as SHA-256 digests in constant time, against every
//! configured token, so neither the comparison's timing nor which token
//! matched leaks. A token may be limited to some routes: the [`Caller`] it
//! identifies travels in the request extensions, and `Process` answers
//! PERMISSION_DENIED for the other routes.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::{error::GatewayError, metrics::Rejections};

/// Shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// A configured token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// A token is too short.
    #[error("token {entry} is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort {
        /// Which entry (1-based), never the token itself.
        entry: usize,
    },
    /// The same token appears twice.
    #[error("token {entry} is configured twice")]
    Duplicate {
        /// Which entry (1-based).
        entry: usize,
    },
}

/// Who is calling: what an accepted token allows.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// Routes this caller may call; `None` means every allowed route.
    routes: Option<Arc<BTreeSet<String>>>,
}

impl Caller {
    /// Whether this caller may call `route`.
    pub fn may_call(&self, route: &str) -> bool {
        self.routes.as_ref().is_none_or(|routes| routes.contains(route))
    }
}

struct Token {
    digest: [u8; 32],
    caller: Caller,
}

/// The configured tokens. `Debug` shows how many, never what they are.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<Token>>);

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Parses token entries: one per line (or separated by `;`), each a token
    /// optionally followed by whitespace and a comma-separated list of the
    /// routes it may call. Blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let mut tokens: Vec<Token> = Vec::new();
        let entries = text.split(['\n', ';']).map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let (token, routes) = entry.split_once(char::is_whitespace).unwrap_or((entry, ""));
            if token.len() < MIN_TOKEN_LEN {
                return Err(TokenError::TooShort { entry: i + 1 });
            }
            let routes: BTreeSet<String> =
                routes.split(',').map(str::trim).filter(|r| !r.is_empty()).map(String::from).collect();
            let routes = (!routes.is_empty()).then_some(routes);
            let digest = digest(token.as_bytes());
            if tokens.iter().any(|t| t.digest == digest) {
                return Err(TokenError::Duplicate { entry: i + 1 });
            }
            tokens.push(Token { digest, caller: Caller { routes: routes.map(Arc::new) } });
        }
        Ok(Self(Arc::new(tokens)))
    }

    /// True when no token is configured: authentication is off.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller a presented token identifies, compared in constant time
    /// against every configured token.
    fn authenticate(&self, presented: &[u8]) -> Option<Caller> {
        let presented = digest(presented);
        let mut found = None;
        for token in self.0.iter() {
            if bool::from(token.digest.ct_eq(&presented)) {
                found = Some(token.caller.clone());
            }
        }
        found
    }
}

/// Checks bearer tokens on every request; see the module docs.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    tokens: Tokens,
    open_probes: bool,
    rejections: Rejections,
}

impl AuthLayer {
    /// Requires one of `tokens` (none configured: every request passes, as
    /// an anonymous caller allowed every route). With `open_probes`, health
    /// and reflection need no token.
    pub fn new(tokens: Tokens, open_probes: bool) -> Self {
        Self { tokens, open_probes, rejections: Rejections::new() }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, tokens: self.tokens.clone(), open_probes: self.open_probes, rejections: self.rejections.clone() }
    }
}

/// See [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    tokens: Tokens,
    open_probes: bool,
    rejections: Rejections,
}

fn is_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

fn bearer(request: &http::HeaderMap) -> Option<&[u8]> {
    let value = request.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

impl<S, B> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<http::Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let caller = if self.tokens.is_empty() || (self.open_probes && is_probe(request.uri().path())) {
            Some(Caller::default())
        } else {
            bearer(request.headers()).and_then(|token| self.tokens.authenticate(token))
        };
        match caller {
            Some(caller) => {
                request.extensions_mut().insert(caller);
                Either::Left(self.inner.call(request))
            }
            None => {
                let error = GatewayError::Unauthenticated;
                self.rejections.count(&error);
                Either::Right(ready(Ok(error.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Status;
    use tower::{ServiceExt, service_fn};

    use super::*;

    const TOKEN: &str = "0123456789abcdef-all";
    const LIMITED: &str = "0123456789abcdef-echo";

    fn tokens() -> Tokens {
        Tokens::parse(&format!("# callers\n{TOKEN}\n\n{LIMITED} echo, jobs\n")).unwrap()
    }

    async fn call(layer: AuthLayer, path: &str, authorization: Option<&str>) -> (Option<tonic::Code>, Option<Caller>) {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let record = seen.clone();
        let service = layer.layer(service_fn(move |request: http::Request<()>| {
            *record.lock().unwrap() = request.extensions().get::<Caller>().cloned();
            ready(Ok::<_, Infallible>(http::Response::new(Body::empty())))
        }));
        let mut request = http::Request::builder().uri(path);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = service.oneshot(request.body(()).unwrap()).await.unwrap();
        let code = Status::from_header_map(response.headers()).map(|s| s.code());
        let caller = seen.lock().unwrap().clone();
        (code, caller)
    }

    #[tokio::test]
    async fn tokens_are_required_and_limit_routes() {
        let layer = AuthLayer::new(tokens(), true);
        let process = "/gateway.v1.Gateway/Process";
        for bad in [None, Some("Bearer nope-nope-nope-nope"), Some(TOKEN), Some("Basic abc"), Some("Bearer")] {
            let (code, caller) = call(layer.clone(), process, bad).await;
            assert_eq!(code, Some(tonic::Code::Unauthenticated), "{bad:?}");
            assert!(caller.is_none());
        }
        let (code, caller) = call(layer.clone(), process, Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(code, None);
        assert!(caller.unwrap().may_call("anything"));
        let (_, caller) = call(layer.clone(), process, Some(&format!("bearer {LIMITED}"))).await;
        let caller = caller.unwrap();
        assert!(caller.may_call("echo") && caller.may_call("jobs") && !caller.may_call("other"));
    }

    #[tokio::test]
    async fn probes_are_open_unless_configured() {
        let health = "/grpc.health.v1.Health/Check";
        assert_eq!(call(AuthLayer::new(tokens(), true), health, None).await.0, None);
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert_eq!(call(AuthLayer::new(tokens(), true), reflection, None).await.0, None);
        assert_eq!(call(AuthLayer::new(tokens(), false), health, None).await.0, Some(tonic::Code::Unauthenticated));
    }

    #[tokio::test]
    async fn no_tokens_means_open() {
        let (code, caller) = call(AuthLayer::new(Tokens::default(), false), "/gateway.v1.Gateway/Process", None).await;
        assert_eq!(code, None);
        assert!(caller.unwrap().may_call("any"));
    }

    #[test]
    fn weak_or_repeated_tokens_are_refused_without_echoing_them() {
        assert_eq!(Tokens::parse("short").unwrap_err(), TokenError::TooShort { entry: 1 });
        let err = Tokens::parse(&format!("{TOKEN};{TOKEN}")).unwrap_err();
        assert_eq!(err, TokenError::Duplicate { entry: 2 });
        assert!(!err.to_string().contains(TOKEN));
        assert!(!format!("{:?}", tokens()).contains(TOKEN));
    }
}
