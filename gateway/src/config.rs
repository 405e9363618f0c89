//! Gateway configuration: command-line flags with environment fallbacks,
//! checked once at start-up into a typed [`Config`].
//!
//! Nothing else in the crate reads the environment. [`Args::into_config`]
//! reads no environment variable (clap has done that): it checks the flags
//! and reads the files they name (CA, tokens, TLS certificates), so every
//! rule here is tested with `Args::try_parse_from`, without touching the
//! process environment.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc, time::Duration};

use amqp_gateway::{
    broker::{Broker, BrokerArgs, BrokerArgsError},
    wire::SHORT_STRING_MAX,
};

use crate::{
    api::{ApiArgs, Apis},
    auth::Tokens,
};
use clap::Parser;

/// Command-line flags of the `gateway` binary.
#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "gRPC-to-AMQP gateway: gateway.v1.Gateway/Process over RabbitMQ request/reply"
)]
pub struct Args {
    /// The broker: `--amqp-url`, `--amqp-ca-file`.
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Address the gRPC server listens on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Serve gRPC over TLS with this certificate chain (PEM); needs
    /// `--tls-key`. Plaintext (h2c) when unset.
    #[arg(long, env = "GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, env = "GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Mutual TLS: clients must present a certificate chaining to these CA
    /// certificates (PEM).
    #[arg(long, env = "GATEWAY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Exchange requests are published to ("" is the default exchange, where
    /// the routing key is the queue name).
    #[arg(long, env = "GATEWAY_EXCHANGE", default_value = "")]
    pub exchange: String,

    /// Allow-listed routes (routing keys) of `gateway.v1.Gateway/Process`,
    /// comma-separated. May be empty when `--service` serves typed methods.
    #[arg(long, env = "GATEWAY_ROUTES", value_delimiter = ',')]
    pub routes: Vec<String>,

    /// A FileDescriptorSet describing services to serve with `--service`
    /// (`buf build -o FILE`, or `protoc --include_imports
    /// --include_source_info --descriptor_set_out=FILE`). Repeatable.
    #[arg(long = "descriptor-set", env = "GATEWAY_DESCRIPTOR_SET", value_delimiter = ',', value_name = "FILE")]
    pub descriptor_sets: Vec<std::path::PathBuf>,

    /// A service of the descriptor sets to serve, by full name (e.g.
    /// `orders.v1.Orders`): each of its unary methods becomes a typed gRPC
    /// method published to its own route. Repeatable.
    #[arg(long = "service", env = "GATEWAY_SERVICE", value_delimiter = ',', value_name = "NAME")]
    pub services: Vec<String>,

    /// The route of one method, `package.Service/Method=route` (default:
    /// the method's full name, `package.Service.Method`). Repeatable.
    #[arg(long = "method-route", env = "GATEWAY_METHOD_ROUTE", value_delimiter = ',', value_name = "METHOD=ROUTE")]
    pub method_routes: Vec<String>,

    /// File of method routes, one `package.Service/Method = route` per line
    /// (`#` comments).
    #[arg(long, env = "GATEWAY_METHOD_ROUTES_FILE", value_name = "FILE")]
    pub method_routes_file: Option<std::path::PathBuf>,

    /// A service (`package.Service`) or method (`package.Service/Method`)
    /// whose messages the worker receives and answers as proto3 JSON
    /// (`application/json`) instead of protobuf bytes. Repeatable.
    #[arg(long = "transcode-json", env = "GATEWAY_TRANSCODE_JSON", value_delimiter = ',', value_name = "NAME")]
    pub transcode_json: Vec<String>,

    /// Route used when a request leaves `route` empty; must be allow-listed.
    #[arg(long, env = "GATEWAY_DEFAULT_ROUTE")]
    pub default_route: Option<String>,

    /// Deadline applied when the caller sends none.
    #[arg(long, env = "GATEWAY_DEFAULT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub default_timeout: Duration,

    /// Longest deadline the gateway honours; longer ones are capped.
    #[arg(long, env = "GATEWAY_MAX_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_timeout: Duration,

    /// Largest request payload, in bytes (RESOURCE_EXHAUSTED above it).
    #[arg(long, env = "GATEWAY_MAX_PAYLOAD_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_payload_bytes: usize,

    /// Largest worker reply body, in bytes; a larger reply fails its call
    /// with RESOURCE_EXHAUSTED and is dropped. Default: `--max-payload-bytes`.
    #[arg(long, env = "GATEWAY_MAX_REPLY_BYTES")]
    pub max_reply_bytes: Option<usize>,

    /// Most caller headers in one request.
    #[arg(long, env = "GATEWAY_MAX_HEADERS", default_value_t = 32)]
    pub max_headers: usize,

    /// Largest caller header, name plus value, in bytes.
    #[arg(long, env = "GATEWAY_MAX_HEADER_BYTES", default_value_t = 4096)]
    pub max_header_bytes: usize,

    /// Most `Process` calls in flight at once; more are shed with
    /// RESOURCE_EXHAUSTED instead of queueing.
    #[arg(long, env = "GATEWAY_MAX_IN_FLIGHT", default_value_t = 10_000)]
    pub max_in_flight: usize,

    /// Most concurrent calls (HTTP/2 streams) on one client connection.
    #[arg(long, env = "GATEWAY_MAX_CONCURRENT_STREAMS", default_value_t = 1000)]
    pub max_concurrent_streams: u32,

    /// Most client connections open at once; connections beyond it are
    /// closed as soon as they are accepted (keep it below `ulimit -n`).
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// How long a new connection may take to finish the TLS handshake and
    /// send the HTTP/2 preface before it is closed.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Largest HTTP/2 header block (all request headers, as HPACK counts
    /// them) a client may send; larger requests are refused.
    #[arg(long, env = "GATEWAY_MAX_HEADER_LIST_SIZE", default_value_t = 16 * 1024)]
    pub max_header_list_size: u32,

    /// Interval of the HTTP/2 PINGs that find dead or stalled clients (`0s`:
    /// off).
    #[arg(long, env = "GATEWAY_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,

    /// How long a client has to answer a keep-alive PING before its
    /// connection is closed.
    #[arg(long, env = "GATEWAY_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,

    /// AMQP channels used to publish requests (each with its own direct
    /// reply-to consumer).
    #[arg(long, env = "GATEWAY_CHANNELS", default_value_t = 2)]
    pub channels: usize,

    /// Threads running calls. 0 (the default): one fewer than the cores,
    /// and at least one, since lapin's I/O thread (publishing, confirms and
    /// replies) is busy in proportion to the calls and needs a core of its
    /// own under load. 1 runs every call on one thread, which costs the
    /// least CPU per call.
    #[arg(long, env = "GATEWAY_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// How long in-flight calls may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// File of caller tokens, one per line: `TOKEN [route,route,...]` (a
    /// token followed by the routes it may call; none listed: every allowed
    /// route). With tokens configured, calls need `authorization: Bearer
    /// TOKEN`. Off when no tokens are configured.
    #[arg(long, env = "GATEWAY_TOKENS_FILE")]
    pub tokens_file: Option<std::path::PathBuf>,

    /// Caller tokens as in `--tokens-file`, `;`-separated. Prefer the file:
    /// command lines and environments are easier to read than a file.
    #[arg(long, env = "GATEWAY_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,

    /// Require a token for health checks and reflection too (by default they
    /// stay open, for probes and grpcurl).
    #[arg(long, env = "GATEWAY_AUTH_PROBES")]
    pub auth_probes: bool,

    /// Serve Prometheus metrics over HTTP on this address (any path, e.g.
    /// `/metrics`). Off when unset.
    #[arg(long, env = "GATEWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Check the health of the gateway listening on `--listen` (as a
    /// container health check does) and exit: 0 when it is SERVING.
    #[arg(long)]
    pub probe: bool,

    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: otel::LogFormat,
}

/// A configuration error, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The broker flags were refused.
    #[error(transparent)]
    Broker(#[from] BrokerArgsError),
    /// A route name is empty, too long for an AMQP routing key, or has
    /// characters outside `A-Z a-z 0-9 . _ : -`.
    #[error("invalid route {0:?}: a route is 1 to {SHORT_STRING_MAX} of A-Z a-z 0-9 . _ : -")]
    Route(String),
    /// A user API (`--descriptor-set`, `--service`, ...) was refused.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// The tokens file could not be read.
    #[error("cannot read the tokens file {path}")]
    TokensFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A configured token was refused.
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
    /// The TLS certificates or key could not be used.
    #[error("cannot use the TLS certificates or key")]
    Tls(#[from] crate::tls::TlsError),
    /// No route is allow-listed and no typed method is served.
    #[error("no routes configured: set --routes / GATEWAY_ROUTES, or serve typed methods with --service")]
    NoRoutes,
    /// The default route is not on the allow-list.
    #[error("default route {0:?} is not in the allow-list")]
    DefaultRouteNotAllowed(String),
    /// A limit that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The default timeout exceeds the maximum.
    #[error("default timeout ({default:?}) exceeds max timeout ({max:?})")]
    Timeouts {
        /// The default timeout.
        default: Duration,
        /// The maximum timeout.
        max: Duration,
    },
}

/// Route names: what a routing key and a Prometheus label carry safely.
pub(crate) fn valid_route(route: &str) -> bool {
    (1..=SHORT_STRING_MAX).contains(&route.len())
        && route.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
}

/// Validated gateway configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Broker connection settings.
    pub amqp: AmqpConfig,
    /// Address to listen on (the binary binds it; tests pass their own listener).
    pub listen: SocketAddr,
    /// What a request may contain.
    pub limits: Limits,
    /// Most `Process` calls in flight.
    pub max_in_flight: usize,
    /// Limits on client connections.
    pub connections: ConnectionLimits,
    /// TLS for the gRPC port (None: plaintext h2c).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The users' services served as typed methods (empty: none).
    pub apis: Arc<Apis>,
    /// Caller tokens (empty: authentication off).
    pub tokens: Tokens,
    /// Health and reflection need no token.
    pub open_probes: bool,
    /// Drain period on shutdown.
    pub shutdown_grace: Duration,
    /// Whether calls are traced with exported spans or pass their context
    /// on without any (nothing exported: the default). Not a flag: the
    /// binary takes it from telemetry's set-up (`otel::Guard::policy`), which
    /// reads the `OTEL_*` variables.
    pub tracing: otel::w3c::TracePolicy,
}

/// Limits on client connections and their HTTP/2 sessions: what one client
/// can hold of the gateway's sockets and memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Time allowed for the TLS handshake and the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// Largest request header block.
    pub max_header_list_size: u32,
    /// Keep-alive PING interval (None: off).
    pub keepalive_interval: Option<Duration>,
    /// Time allowed for a PING's answer.
    pub keepalive_timeout: Duration,
}

/// Broker connection settings.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// The broker: URL and TLS trust.
    pub broker: Broker,
    /// Exchange requests go to.
    pub exchange: String,
    /// Publisher channels.
    pub channels: usize,
    /// Largest reply body passed on to a caller.
    pub max_reply_bytes: usize,
}

/// Request rules enforced before anything is published.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Allow-listed routes.
    pub routes: BTreeSet<String>,
    /// Route for requests that name none.
    pub default_route: Option<String>,
    /// Deadline when the caller sets none.
    pub default_timeout: Duration,
    /// Cap on any deadline.
    pub max_timeout: Duration,
    /// Largest payload in bytes.
    pub max_payload_bytes: usize,
    /// Most caller headers.
    pub max_headers: usize,
    /// Largest caller header (name + value) in bytes.
    pub max_header_bytes: usize,
}

impl Args {
    /// Threads the runtime runs calls on, on a machine with `cores` cores
    /// (see `--worker-threads`); 1 means a current-thread runtime.
    pub fn runtime_threads(&self, cores: usize) -> usize {
        match self.worker_threads {
            0 => cores.saturating_sub(1).max(1),
            threads => threads,
        }
    }

    /// Checks the flags and builds the configuration.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let broker = self.broker.into_broker()?;
        let routes: BTreeSet<String> =
            self.routes.into_iter().map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()).collect();
        if let Some(bad) = routes.iter().find(|r| !valid_route(r)) {
            return Err(ConfigError::Route(bad.clone()));
        }
        let apis = ApiArgs {
            descriptor_sets: self.descriptor_sets,
            services: self.services,
            method_routes: self.method_routes,
            method_routes_file: self.method_routes_file,
            transcode_json: self.transcode_json,
        }
        .load(&routes)?;
        if routes.is_empty() && apis.is_empty() {
            return Err(ConfigError::NoRoutes);
        }
        let mut token_text = self.tokens.unwrap_or_default();
        if let Some(path) = &self.tokens_file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::TokensFile { path: path.display().to_string(), source })?;
            token_text.push('\n');
            token_text.push_str(&text);
        }
        let tokens = Tokens::parse(&token_text)?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key, self.tls_client_ca.as_deref())?),
            _ => None,
        };
        let default_route = self.default_route.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
        if let Some(route) = default_route.as_ref().filter(|r| !routes.contains(*r)) {
            return Err(ConfigError::DefaultRouteNotAllowed(route.clone()));
        }
        let max_reply_bytes = self.max_reply_bytes.unwrap_or(self.max_payload_bytes);
        for (name, value) in [
            ("max-concurrent-streams", self.max_concurrent_streams as usize),
            ("max-in-flight", self.max_in_flight),
            ("channels", self.channels),
            ("max-payload-bytes", self.max_payload_bytes),
            ("max-reply-bytes", max_reply_bytes),
            ("max-connections", self.max_connections),
            ("max-header-list-size", self.max_header_list_size as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        for (name, value) in [
            ("default-timeout", self.default_timeout),
            ("handshake-timeout", self.handshake_timeout),
            ("keepalive-timeout", self.keepalive_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.default_timeout > self.max_timeout {
            return Err(ConfigError::Timeouts { default: self.default_timeout, max: self.max_timeout });
        }
        Ok(Config {
            amqp: AmqpConfig { broker, exchange: self.exchange, channels: self.channels, max_reply_bytes },
            listen: self.listen,
            limits: Limits {
                routes,
                default_route,
                default_timeout: self.default_timeout,
                max_timeout: self.max_timeout,
                max_payload_bytes: self.max_payload_bytes,
                max_headers: self.max_headers,
                max_header_bytes: self.max_header_bytes,
            },
            max_in_flight: self.max_in_flight,
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                max_concurrent_streams: self.max_concurrent_streams,
                handshake_timeout: self.handshake_timeout,
                max_header_list_size: self.max_header_list_size,
                keepalive_interval: Some(self.keepalive_interval).filter(|i| !i.is_zero()),
                keepalive_timeout: self.keepalive_timeout,
            },
            tls,
            apis: Arc::new(apis),
            tokens,
            open_probes: !self.auth_probes,
            shutdown_grace: self.shutdown_grace,
            tracing: otel::w3c::TracePolicy::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["gateway", "--amqp-url", "amqp://user:s3cret@broker:5672/%2f", "--routes", "echo,jobs"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn worker_threads_leave_a_core_to_lapin_by_default() {
        let default = args(&[]);
        assert_eq!([1, 2, 4, 16].map(|cores| default.runtime_threads(cores)), [1, 1, 3, 15]);
        assert_eq!(args(&["--worker-threads", "4"]).runtime_threads(2), 4, "explicit counts are kept");
        assert_eq!(args(&["--worker-threads", "1"]).runtime_threads(16), 1);
    }

    #[test]
    fn defaults_build() {
        let config = args(&["--default-route", "echo"]).into_config().unwrap();
        assert_eq!(config.limits.routes.len(), 2);
        assert_eq!(config.limits.default_route.as_deref(), Some("echo"));
        assert_eq!(config.limits.default_timeout, Duration::from_secs(30));
    }

    #[test]
    fn reply_limit_defaults_to_the_payload_limit() {
        let config = args(&["--max-payload-bytes", "1000"]).into_config().unwrap();
        assert_eq!(config.amqp.max_reply_bytes, 1000);
        let config = args(&["--max-payload-bytes", "1000", "--max-reply-bytes", "5000"]).into_config().unwrap();
        assert_eq!(config.amqp.max_reply_bytes, 5000);
        let err = args(&["--max-reply-bytes", "0"]).into_config().unwrap_err();
        assert!(matches!(err, ConfigError::Zero("max-reply-bytes")), "{err:?}");
    }

    #[test]
    fn default_route_must_be_allowed() {
        let err = args(&["--default-route", "other"]).into_config().unwrap_err();
        assert!(matches!(&err, ConfigError::DefaultRouteNotAllowed(r) if r == "other"), "{err:?}");
    }

    #[test]
    fn default_timeout_may_not_exceed_max() {
        let err = args(&["--default-timeout", "2m", "--max-timeout", "1m"]).into_config().unwrap_err();
        assert!(matches!(err, ConfigError::Timeouts { .. }));
    }

    #[test]
    fn zero_limits_are_refused() {
        assert!(matches!(args(&["--max-in-flight", "0"]).into_config(), Err(ConfigError::Zero("max-in-flight"))));
        assert!(matches!(args(&["--channels", "0"]).into_config(), Err(ConfigError::Zero("channels"))));
    }

    #[test]
    fn connection_limits() {
        let defaults = args(&[]).into_config().unwrap().connections;
        assert_eq!(
            defaults,
            ConnectionLimits {
                max_connections: 10_000,
                max_concurrent_streams: 1000,
                handshake_timeout: Duration::from_secs(10),
                max_header_list_size: 16 * 1024,
                keepalive_interval: Some(Duration::from_secs(60)),
                keepalive_timeout: Duration::from_secs(20),
            }
        );
        let set = args(&[
            "--max-connections",
            "50",
            "--handshake-timeout",
            "500ms",
            "--max-header-list-size",
            "8192",
            "--keepalive-interval",
            "0s",
            "--keepalive-timeout",
            "2s",
        ])
        .into_config()
        .unwrap()
        .connections;
        assert_eq!((set.max_connections, set.max_header_list_size), (50, 8192));
        assert_eq!(set.handshake_timeout, Duration::from_millis(500));
        assert_eq!(set.keepalive_interval, None, "0s turns keep-alive off");
        assert_eq!(set.keepalive_timeout, Duration::from_secs(2));
        for (flag, value, name) in [
            ("--max-connections", "0", "max-connections"),
            ("--handshake-timeout", "0s", "handshake-timeout"),
            ("--max-header-list-size", "0", "max-header-list-size"),
            ("--keepalive-timeout", "0s", "keepalive-timeout"),
        ] {
            let err = args(&[flag, value]).into_config().unwrap_err();
            assert!(matches!(err, ConfigError::Zero(n) if n == name), "{flag}: {err:?}");
        }
    }

    #[test]
    fn routes_are_checked() {
        let err = Args::try_parse_from(["gateway", "--routes", "ok,not ok"]).unwrap().into_config().unwrap_err();
        assert!(matches!(&err, ConfigError::Route(r) if r == "not ok"), "{err:?}");
        assert!(Args::try_parse_from(["gateway", "--routes", "a.b-c_d:e"]).unwrap().into_config().is_ok());
    }

    #[test]
    fn routes_or_typed_methods_are_needed() {
        let err = Args::try_parse_from(["gateway"]).unwrap().into_config().unwrap_err();
        assert!(matches!(err, ConfigError::NoRoutes), "{err:?}");
        assert!(err.to_string().contains("--service"), "the message names both ways: {err}");
        let err = Args::try_parse_from(["gateway", "--service", "shop.v1.Shop"]).unwrap().into_config().unwrap_err();
        assert!(matches!(err, ConfigError::Api(crate::api::ApiError::NoDescriptorSets)), "{err:?}");
    }

    #[test]
    fn tokens_from_flag_and_file() {
        let dir = std::env::temp_dir().join(format!("gateway-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        std::fs::write(&file, "# ops\nfile-token-0123456789 echo\n").unwrap();
        let config = args(&["--tokens", "flag-token-0123456789", "--tokens-file", file.to_str().unwrap()])
            .into_config()
            .unwrap();
        assert_eq!(format!("{:?}", config.tokens), "Tokens(2 configured)");
        assert!(config.open_probes);
        let err = args(&["--tokens", "tiny"]).into_config().unwrap_err();
        assert!(!err.to_string().contains("tiny"), "{err}");
        let missing = args(&["--tokens-file", "/nonexistent/tokens"]).into_config().unwrap_err();
        assert!(matches!(missing, ConfigError::TokensFile { .. }));
        let source = std::error::Error::source(&missing).map(ToString::to_string).unwrap_or_default();
        assert!(!source.is_empty(), "the I/O error is kept as the source: {missing:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn password_never_shown() {
        let config = args(&[]).into_config().unwrap();
        let shown = format!("{} {:?} {:?}", config.amqp.broker, config.amqp.broker, config);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("user:****@broker"), "{shown}");
        assert_eq!(config.amqp.broker.nodes()[0].expose(), "amqp://user:s3cret@broker:5672/%2f");
    }
}
