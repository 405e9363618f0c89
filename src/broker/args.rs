//! The broker flags both binaries take (`--amqp-url`, `--amqp-ca-file`, with
//! their environment fallbacks), declared once and flattened into each
//! binary's own flags, and turned into a [`Broker`].

use std::path::PathBuf;

use super::{Broker, InvalidUrl, parse_list};

/// Where the broker is: flattened into a binary's clap flags with
/// `#[command(flatten)]`. The URLs stay a string until [`into_broker`]
/// parses them, so a malformed one is reported by [`InvalidUrl`] (which never
/// shows a password) rather than by clap (which would echo it); `Debug`
/// shows them masked.
///
/// [`into_broker`]: BrokerArgs::into_broker
#[derive(Clone, clap::Args)]
pub struct BrokerArgs {
    /// AMQP URL of the broker, or the comma-separated URLs of the nodes of one
    /// RabbitMQ cluster (each process starts at a random node and moves to the
    /// next when a connect fails or the connection is lost). No password is
    /// ever logged.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: String,

    /// PEM file of CA certificates to trust for `amqps://` instead of the
    /// system's roots (a broker with a private CA).
    #[arg(long, env = "AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,
}

/// The broker flags do not describe a usable broker. The text never holds the
/// password.
#[derive(Debug, thiserror::Error)]
pub enum BrokerArgsError {
    /// The AMQP URL did not parse.
    #[error(transparent)]
    Url(#[from] InvalidUrl),
    /// The CA file could not be read.
    #[error("cannot read the AMQP CA file {path}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl std::fmt::Debug for BrokerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = parse_list(&self.amqp_url).map_or_else(
            |_| "<invalid>".to_owned(),
            |urls| urls.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        );
        f.debug_struct("BrokerArgs").field("amqp_url", &url).field("amqp_ca_file", &self.amqp_ca_file).finish()
    }
}

impl BrokerArgs {
    /// Parses the URLs and reads the CA file, if any.
    pub fn into_broker(self) -> Result<Broker, BrokerArgsError> {
        let nodes = parse_list(&self.amqp_url)?;
        let ca_pem = match &self.amqp_ca_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| BrokerArgsError::CaFile { path: path.display().to_string(), source })?,
            ),
            None => None,
        };
        // Cannot fail: a list that parsed has at least one entry.
        let mut broker = Broker::cluster(nodes).ok_or_else(|| BrokerArgsError::Url(InvalidUrl::empty()))?;
        broker.ca_pem = ca_pem;
        Ok(broker)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        broker: BrokerArgs,
    }

    fn broker(argv: &[&str]) -> Result<Broker, BrokerArgsError> {
        Flags::try_parse_from([&["test"], argv].concat()).unwrap().broker.into_broker()
    }

    #[test]
    fn url_and_ca_file() {
        let url = "amqp://user:s3cret@broker:5672/%2f";
        let parsed = broker(&["--amqp-url", url]).unwrap();
        assert_eq!((parsed.nodes()[0].expose(), parsed.ca_pem.as_deref()), (url, None));
        let list = "amqp://user:s3cret@node1/%2f,amqp://user:an0ther@node2/%2f";
        let cluster = broker(&["--amqp-url", list]).unwrap();
        let nodes: Vec<&str> = cluster.nodes().iter().map(|n| n.node()).collect();
        assert_eq!(nodes, ["node1:5672", "node2:5672"]);
        let flags = Flags::try_parse_from(["test", "--amqp-url", list]).unwrap();
        let shown = format!("{:?} {cluster} {cluster:?}", flags.broker);
        assert!(!shown.contains("s3cret") && !shown.contains("an0ther"), "{shown}");
        let missing = broker(&["--amqp-url", url, "--amqp-ca-file", "/nonexistent/ca.pem"]).unwrap_err();
        assert!(matches!(&missing, BrokerArgsError::CaFile { path, .. } if path == "/nonexistent/ca.pem"));
        let bad = broker(&["--amqp-url", "http://user:s3cret@broker/"]).unwrap_err();
        assert!(!bad.to_string().contains("s3cret"), "{bad}");
        for url in [url, "http://user:s3cret@broker/", "amqp://user:s3cret@[bad"] {
            let flags = Flags::try_parse_from(["test", "--amqp-url", url]).unwrap();
            let shown = format!("{:?}", flags.broker);
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }
}
