//! How both sides reach the broker: the AMQP URL, kept out of logs, and the
//! flags that give it (`args`), TLS
//! (`amqps://`, with the system's roots or a CA file of your own), the
//! [frame guard](guard) every byte from the broker passes through, bounded
//! broker steps and which refusals are permanent (`step`), and the pacing of
//! reconnect loops (`reconnect`). Shared so the gateway and the worker connect
//! and behave alike when a broker goes away, refuses them, or delivers
//! something hostile.

mod args;
pub mod guard;
mod reconnect;
mod step;
mod transport;

use std::{fmt, io};

use lapin::{Connection, ConnectionProperties, tcp::OwnedTLSConfig, uri::AMQPUri};
use url::Url;

pub use self::{
    args::{BrokerArgs, BrokerArgsError},
    reconnect::{Reconnect, backoff, sleep_or_stop},
    step::{STEP_TIMEOUT, StepError, bounded, is_permanent},
};

/// An AMQP URL whose `Debug` and `Display` hide the password, so it can be
/// logged and carried in errors without leaking the credential.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    url: String,
    redacted: String,
}

/// An AMQP URL was refused. Its text never contains the password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid AMQP URL {url}: {reason}")]
pub struct InvalidUrl {
    url: String,
    reason: String,
}

impl AmqpUrl {
    /// Parses and checks an `amqp://` or `amqps://` URL.
    pub fn parse(url: &str) -> Result<Self, InvalidUrl> {
        // `amqp://u:p@node1/%2f,amqp://u:p2@node2/%2f` parses as one URL whose
        // vhost holds the second one, password and all, which the redaction
        // below would not mask. Several brokers in one string are refused,
        // showing nothing of it, until lists of cluster nodes are supported.
        if url.split_once("://").is_some_and(|(_, rest)| rest.contains("://")) {
            return Err(InvalidUrl {
                url: "<several URLs>".into(),
                reason: "give one broker URL (lists of cluster nodes are not supported yet)".into(),
            });
        }
        let parsed = Url::parse(url).map_err(|e| InvalidUrl {
            // An unparseable URL cannot be redacted field by field: show none of it.
            url: "<unparseable>".into(),
            reason: e.to_string(),
        })?;
        let mut shown = parsed.clone();
        if shown.password().is_some() {
            // Cannot fail: a URL with a password has a host.
            let _ = shown.set_password(Some("****"));
        }
        let redacted = shown.to_string();
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(InvalidUrl { url: redacted, reason: "the scheme must be amqp or amqps".into() });
        }
        Ok(Self { url: url.to_owned(), redacted })
    }

    /// The URL with its password, for connecting only.
    pub fn expose(&self) -> &str {
        &self.url
    }
}

impl std::str::FromStr for AmqpUrl {
    type Err = InvalidUrl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({})", self.redacted)
    }
}

/// Where and how to connect: the URL, and for `amqps://` an optional CA
/// certificate chain (PEM) to trust instead of the system's roots.
#[derive(Clone, Debug)]
pub struct Broker {
    /// The broker URL.
    pub url: AmqpUrl,
    /// PEM CA certificates for `amqps://` (None: the system's roots).
    pub ca_pem: Option<String>,
}

impl Broker {
    /// A broker at `url`, trusting the system's roots for TLS.
    pub fn new(url: AmqpUrl) -> Self {
        Self { url, ca_pem: None }
    }

    /// Opens a connection named `name` (shown in the broker's management UI).
    ///
    /// Everything the broker sends passes through the [frame guard](guard)
    /// before lapin parses it, so no message can crash the process or wedge
    /// the connection, whoever published it. Must be called inside a tokio
    /// runtime.
    pub async fn connect(&self, name: &str) -> lapin::Result<Connection> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let uri: AMQPUri =
            self.url.expose().parse().map_err(|e: String| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = OwnedTLSConfig { identity: None, cert_chain: self.ca_pem.clone() };
        let connect = async move |uri: AMQPUri, runtime: async_rs::Runtime<async_rs::Tokio>| {
            Ok(transport::connect(uri, tls.clone(), runtime).await?)
        };
        Connection::connector(uri, async_rs::Runtime::tokio_current(), connect, properties).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_shown() {
        let url = AmqpUrl::parse("amqp://user:s3cret@broker:5672/%2f").unwrap();
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("user:****@broker"), "{shown}");
        assert_eq!(url.expose(), "amqp://user:s3cret@broker:5672/%2f");
    }

    #[test]
    fn several_urls_are_refused_without_showing_any_password() {
        for list in [
            "amqp://user:s3cret@node1/%2f,amqp://user:an0ther@node2/%2f",
            "amqp://node1/%2f,amqps://user:an0ther@node2/%2f",
            "amqp://user:s3cret@node1/%2f amqp://user:an0ther@node2/%2f",
        ] {
            let err = AmqpUrl::parse(list).unwrap_err().to_string();
            assert!(!err.contains("s3cret") && !err.contains("an0ther"), "{err}");
            assert!(err.contains("give one broker URL"), "{err}");
        }
        // One URL with a query string still parses.
        assert!(AmqpUrl::parse("amqp://user:s3cret@node1/%2f?heartbeat=10").is_ok());
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        let err = AmqpUrl::parse("http://u:s3cret@host/").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = AmqpUrl::parse("amqp://u:s3cret@[bad").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
