//! The `worker` binary's flags and how they map to what it runs: a
//! [`WorkerConfig`] and a built-in handler. Apart from `main.rs` so the
//! mapping is tested with `Args::try_parse_from`, without touching the
//! process environment.

use std::{net::SocketAddr, time::Duration};

use amqp_gateway::broker::{BrokerArgs, BrokerArgsError};
use clap::{Parser, ValueEnum};

use crate::{Code, ConfigError, QueueType, Status, WorkerConfig, handlers::BuiltIn};

/// Command-line flags of the `worker` binary.
#[derive(Debug, Parser)]
#[command(name = "worker", version, about = "AMQP worker answering gateway requests with a built-in handler")]
pub struct Args {
    /// The broker: `--amqp-url`, `--amqp-ca-file`.
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Route to serve: the queue consumed (declared if missing).
    #[arg(long, env = "WORKER_ROUTE", default_value = "echo")]
    pub route: String,

    /// Built-in handler.
    #[arg(long, env = "WORKER_HANDLER", value_enum, default_value_t = Handler::Echo)]
    pub handler: Handler,

    /// Status code the `fail` handler answers with (0-16).
    #[arg(long, env = "WORKER_FAIL_CODE", default_value_t = 14)]
    pub fail_code: i32,

    /// Delay before answering, to play a slow worker (echo handler).
    #[arg(long, env = "WORKER_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub delay: Duration,

    /// Requests handled at once (AMQP prefetch; must be greater than zero).
    #[arg(long, env = "WORKER_PREFETCH", default_value_t = 16)]
    pub prefetch: u16,

    /// Declare the queue durable (must match an existing queue's declaration).
    #[arg(long, env = "WORKER_DURABLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub durable: bool,

    /// Declare the queue; with false it must already exist (declared by
    /// operations with their own arguments and policies).
    #[arg(long, env = "WORKER_DECLARE_QUEUE", default_value_t = true, action = clap::ArgAction::Set)]
    pub declare_queue: bool,

    /// Queue type: classic, or quorum (replicated in a cluster, durable,
    /// with a delivery limit for poison messages).
    #[arg(long, env = "WORKER_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic)]
    pub queue_type: QueueType,

    /// Quorum queues: deliveries after which a message is dead-lettered (or
    /// dropped) instead of delivered again.
    #[arg(long, env = "WORKER_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,

    /// Queue receiving messages the route's queue gives up on (rejected, over
    /// the delivery limit, expired); declared beside it. Off when unset.
    #[arg(long, env = "WORKER_DEAD_LETTER_QUEUE")]
    pub dead_letter_queue: Option<String>,

    /// Largest request body handled; larger ones are answered
    /// RESOURCE_EXHAUSTED without running the handler.
    #[arg(long, env = "WORKER_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long requests in flight may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Serve Prometheus metrics over HTTP on this address (any path, e.g.
    /// `/metrics`). Off when unset.
    #[arg(long, env = "WORKER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: otel::LogFormat,
}

/// The `--handler` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Handler {
    /// Replies with the request's payload, content type and headers.
    Echo,
    /// Answers every request with the status `--fail-code`.
    Fail,
}

/// What the binary runs, built from its flags.
#[derive(Debug)]
pub struct Settings {
    /// The worker, validated.
    pub worker: WorkerConfig,
    /// The handler it serves.
    pub handler: BuiltIn,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How log lines are written.
    pub log_format: otel::LogFormat,
}

/// The flags do not make a worker that can run.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The worker configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker flags were refused.
    #[error(transparent)]
    Broker(#[from] BrokerArgsError),
}

impl Args {
    /// Checks the flags and builds what the binary runs.
    pub fn into_settings(self) -> Result<Settings, CliError> {
        let worker = WorkerConfig {
            broker: self.broker.into_broker()?,
            queue: self.route,
            prefetch: self.prefetch,
            durable: self.durable,
            declare: self.declare_queue,
            queue_type: self.queue_type,
            delivery_limit: self.delivery_limit,
            dead_letter_queue: self.dead_letter_queue,
            max_body_bytes: self.max_body_bytes,
            shutdown_grace: self.shutdown_grace,
        };
        worker.validate()?;
        let handler = match self.handler {
            Handler::Echo => BuiltIn::Echo { delay: self.delay },
            Handler::Fail => {
                let code = Code::from_i32(self.fail_code);
                BuiltIn::Fail(Status::new(code, format!("the worker is configured to fail with {code:?}")))
            }
        };
        Ok(Settings { worker, handler, metrics_listen: self.metrics_listen, log_format: self.log_format })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "amqp://user:s3cret@broker:5672/%2f";

    fn settings(extra: &[&str]) -> Result<Settings, CliError> {
        let mut argv = vec!["worker", "--amqp-url", URL];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}")).into_settings()
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let settings = settings(&[]).unwrap();
        let library = WorkerConfig::new(URL.parse().unwrap(), "echo");
        let worker = &settings.worker;
        assert_eq!(worker.queue, "echo");
        assert_eq!(worker.broker.nodes()[0].expose(), URL);
        assert_eq!(worker.broker.ca_pem, None);
        assert_eq!(
            (worker.prefetch, worker.durable, worker.declare, worker.queue_type, worker.delivery_limit),
            (library.prefetch, library.durable, library.declare, library.queue_type, library.delivery_limit)
        );
        assert_eq!(worker.dead_letter_queue, None);
        assert_eq!((worker.max_body_bytes, worker.shutdown_grace), (library.max_body_bytes, library.shutdown_grace));
        assert!(matches!(settings.handler, BuiltIn::Echo { delay } if delay.is_zero()));
        assert_eq!((settings.metrics_listen, settings.log_format), (None, otel::LogFormat::Text));
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let settings = settings(&[
            "--route",
            "jobs",
            "--prefetch",
            "3",
            "--durable",
            "false",
            "--declare-queue",
            "false",
            "--queue-type",
            "quorum",
            "--delivery-limit",
            "7",
            "--dead-letter-queue",
            "jobs.dead",
            "--max-body-bytes",
            "1024",
            "--shutdown-grace",
            "2s",
            "--delay",
            "250ms",
            "--metrics-listen",
            "127.0.0.1:9100",
            "--log-format",
            "json",
        ])
        .unwrap();
        let worker = &settings.worker;
        assert_eq!(worker.queue, "jobs");
        assert_eq!((worker.prefetch, worker.durable, worker.declare), (3, false, false));
        assert_eq!((worker.queue_type, worker.delivery_limit), (QueueType::Quorum, 7));
        assert_eq!(worker.dead_letter_queue.as_deref(), Some("jobs.dead"));
        assert_eq!((worker.max_body_bytes, worker.shutdown_grace), (1024, Duration::from_secs(2)));
        assert!(matches!(settings.handler, BuiltIn::Echo { delay } if delay == Duration::from_millis(250)));
        assert_eq!(settings.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(settings.log_format, otel::LogFormat::Json);
    }

    #[test]
    fn the_fail_handler_answers_the_configured_code() {
        let settings = settings(&["--handler", "fail", "--fail-code", "5"]).unwrap();
        assert!(matches!(settings.handler, BuiltIn::Fail(status) if status.code() == Code::NotFound));
    }

    #[test]
    fn a_prefetch_of_zero_is_refused() {
        assert!(matches!(settings(&["--prefetch", "0"]).unwrap_err(), CliError::Config(ConfigError::ZeroPrefetch)));
    }

    #[test]
    fn dead_letters_to_the_queue_itself_are_refused() {
        let refused = settings(&["--route", "jobs", "--dead-letter-queue", "jobs"]).unwrap_err();
        assert!(matches!(refused, CliError::Config(ConfigError::DeadLettersToItself(q)) if q == "jobs"));
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let refused = settings(&["--amqp-ca-file", "/nonexistent/ca.pem"]).unwrap_err();
        assert!(
            matches!(&refused, CliError::Broker(BrokerArgsError::CaFile { path, .. }) if path == "/nonexistent/ca.pem"),
            "{refused}"
        );
    }

    #[test]
    fn unknown_queue_types_are_refused_by_the_parser() {
        assert!(Args::try_parse_from(["worker", "--amqp-url", URL, "--queue-type", "stream"]).is_err());
    }

    #[test]
    fn the_password_is_never_shown() {
        let args = Args::try_parse_from(["worker", "--amqp-url", URL]).unwrap();
        let args_shown = format!("{args:?}");
        let shown = format!("{args_shown} {:?}", args.into_settings().unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
