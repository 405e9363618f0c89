//! [`Broker`]: the nodes a process may connect to, and connecting to the next
//! one that answers.
//!
//! A broker is one RabbitMQ node or the nodes of one cluster, each given by
//! its own URL (credentials and TLS settings may differ per node). Each
//! process starts at a random node, so gateways and workers spread over the
//! cluster, and [`Broker::connect`] tries the nodes in turn from there: one
//! call is one round over the list, each node bounded by [`STEP_TIMEOUT`].
//! After a success the next round starts at the node after the one connected,
//! so a process whose connection is lost moves on to another node instead of
//! waiting for the one that failed. The caller backs off between rounds
//! ([`Reconnect`](super::Reconnect)), as it always has.

use std::{
    fmt, io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use lapin::{Connection, ConnectionProperties, tcp::OwnedTLSConfig, uri::AMQPUri};

use super::{AmqpUrl, STEP_TIMEOUT, StepError, bounded, transport};

/// Where and how to connect: the nodes' URLs, and for `amqps://` an optional
/// CA certificate chain (PEM) to trust instead of the system's roots. Clones
/// share the position in the list.
#[derive(Clone)]
pub struct Broker {
    nodes: Arc<[AmqpUrl]>,
    /// PEM CA certificates for `amqps://` (None: the system's roots).
    pub ca_pem: Option<String>,
    /// The node the next round starts at.
    next: Arc<AtomicUsize>,
}

/// A connection, and the node it reached.
#[derive(Debug)]
pub struct Connected<'a> {
    /// The open connection.
    pub connection: Connection,
    /// The node connected to.
    pub node: &'a AmqpUrl,
}

/// No node of the broker accepted a connection in one round over the list.
/// The text names each node by `host:port` and never holds a password.
#[derive(Debug)]
pub struct ConnectError {
    /// Each node tried (its `host:port`), and why it failed, in the order tried.
    failures: Vec<(String, StepError)>,
}

impl Broker {
    /// A broker of one node, trusting the system's roots for TLS.
    pub fn new(url: AmqpUrl) -> Self {
        Self::with_nodes(vec![url].into())
    }

    /// A broker of several nodes (the nodes of one cluster), trusting the
    /// system's roots for TLS. None when `nodes` is empty.
    pub fn cluster(nodes: Vec<AmqpUrl>) -> Option<Self> {
        (!nodes.is_empty()).then(|| Self::with_nodes(nodes.into()))
    }

    fn with_nodes(nodes: Arc<[AmqpUrl]>) -> Self {
        let start = if nodes.len() > 1 { rand::random_range(0..nodes.len()) } else { 0 };
        Self { nodes, ca_pem: None, next: Arc::new(AtomicUsize::new(start)) }
    }

    /// The nodes, in the order given.
    pub fn nodes(&self) -> &[AmqpUrl] {
        &self.nodes
    }

    /// Opens a connection named `name` (shown in the broker's management UI)
    /// to the first node that accepts one, trying each node once, starting
    /// where the last round left off. A node that fails is logged (at warn,
    /// when there are others to try) and skipped.
    ///
    /// Everything the broker sends passes through the [frame guard](super::guard)
    /// before lapin parses it, so no message can crash the process or wedge
    /// the connection, whoever published it. Must be called inside a tokio
    /// runtime.
    pub async fn connect(&self, name: &str) -> Result<Connected<'_>, ConnectError> {
        let count = self.nodes.len();
        let start = self.next.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for offset in 0..count {
            let index = (start + offset) % count;
            let node = &self.nodes[index];
            match bounded(self.connect_to(node, name)).await {
                Ok(connection) => {
                    self.next.store((index + 1) % count, Ordering::Relaxed);
                    return Ok(Connected { connection, node });
                }
                Err(error) => {
                    if offset + 1 < count {
                        tracing::warn!(node = %node.node(), %error, "cannot connect to this broker node; trying the next");
                    }
                    failures.push((node.node().to_owned(), error));
                }
            }
        }
        Err(ConnectError { failures })
    }

    async fn connect_to(&self, url: &AmqpUrl, name: &str) -> lapin::Result<Connection> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let uri: AMQPUri = url.expose().parse().map_err(|e: String| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = OwnedTLSConfig { identity: None, cert_chain: self.ca_pem.clone() };
        let tokio = async_rs::Runtime::tokio_current();
        let connect = async move |uri: AMQPUri, _: async_rs::Runtime<transport::Guarded>| {
            Ok(transport::connect(uri, tls.clone(), &tokio).await?)
        };
        Connection::connector(uri, transport::Guarded::current(), connect, properties).await
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("nodes", &self.nodes)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<PEM>"))
            .finish_non_exhaustive()
    }
}

/// The nodes' URLs, masked, separated by commas.
impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, node) in self.nodes.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{node}")?;
        }
        Ok(())
    }
}

impl ConnectError {
    /// True when every node refused for good ([`StepError::is_permanent`]):
    /// a node that may come back keeps the process trying.
    pub fn is_permanent(&self) -> bool {
        self.failures.iter().all(|(_, error)| error.is_permanent())
    }

    /// The last failure: the node's `host:port` and its error.
    pub fn into_last(self) -> (String, StepError) {
        // A broker has at least one node, so a round has at least one failure.
        self.failures.into_iter().last().unwrap_or_else(|| (String::new(), StepError::Timeout(STEP_TIMEOUT)))
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failures.len() > 1 {
            write!(f, "no node of the broker accepted a connection: ")?;
        }
        for (i, (node, error)) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{node}: {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failures.last().map(|(_, error)| error as _)
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::broker::parse_list;

    /// A port nothing listens on (bound, then released).
    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_round_tries_every_node_once_and_names_each_failure_without_passwords() {
        let (a, b) = (closed_port(), closed_port());
        let list = format!("amqp://u:s3cret@127.0.0.1:{a}/%2f,amqp://u:an0ther@127.0.0.1:{b}/%2f");
        let broker = Broker::cluster(parse_list(&list).unwrap()).unwrap();
        let start = broker.next.load(Ordering::Relaxed);
        let error = broker.connect("test").await.unwrap_err();
        let shown = format!("{error} {error:?} {broker} {broker:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("an0ther"), "{shown}");
        assert_eq!(error.failures.len(), 2, "{shown}");
        let tried: Vec<&str> = error.failures.iter().map(|(node, _)| node.as_str()).collect();
        let nodes = [format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}")];
        assert_eq!(tried, [nodes[start].as_str(), nodes[1 - start].as_str()], "starts where the last round left off");
        assert!(!error.is_permanent(), "a node that is down may come back");
        assert!(error.to_string().starts_with("no node of the broker accepted a connection: "), "{error}");
    }

    #[test]
    fn processes_start_at_random_nodes() {
        let nodes = parse_list("amqp://a,amqp://b,amqp://c").unwrap();
        let starts: std::collections::HashSet<usize> =
            (0..200).map(|_| Broker::cluster(nodes.clone()).unwrap().next.load(Ordering::Relaxed)).collect();
        assert_eq!(starts.len(), 3, "{starts:?}");
        assert_eq!(Broker::new(nodes[0].clone()).next.load(Ordering::Relaxed), 0);
        assert!(Broker::cluster(Vec::new()).is_none());
    }
}
