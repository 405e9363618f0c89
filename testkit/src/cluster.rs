//! A private RabbitMQ cluster owned by one test: N nodes on loopback started
//! with `scripts/rabbitmq-cluster.sh`, for the faults one broker cannot show
//! (a quorum queue's leader killed, a member coming back with its data).
//!
//! Nodes are numbered `0..n` everywhere in this API: `urls()[i]`, `addr(i)`,
//! `kill(i)`, `leader_of(..) == i` all name the same node (the script's node
//! `i + 1`, in `DIR/node{i+1}`). Nothing here touches the machine's own
//! broker: every call goes to a node this cluster started, by name.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::process::Command;

use crate::unique;

/// Bound on a quorum queue electing a leader after its old one died: a
/// follower notices at once on loopback (the dead node's connections close)
/// and the election itself takes a few seconds at most, even on a busy
/// 2-core machine.
pub const ELECTION: Duration = Duration::from_secs(30);

/// Bound on one `rabbitmqctl` call while polling: long enough for the CLI's
/// own start-up (about a second of CPU) on a loaded machine.
const CTL_CALL: Duration = Duration::from_secs(20);

/// A RabbitMQ cluster of private nodes, stopped and removed when dropped.
pub struct PrivateCluster {
    dir: PathBuf,
    urls: Vec<String>,
    /// Erlang node names, in node order: how `rabbitmqctl` names nodes.
    nodes: Vec<String>,
    ports: Vec<u16>,
    /// Nodes killed with [`PrivateCluster::kill`] and not restarted since:
    /// `leader_of` neither asks them nor believes a record naming them.
    down: Mutex<Vec<bool>>,
}

impl fmt::Debug for PrivateCluster {
    // Node names and ports, never the URLs: they carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateCluster")
            .field("dir", &self.dir)
            .field("nodes", &self.nodes)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster.sh")
}

async fn run(args: &[&str], dir: &Path) -> Output {
    let (command, rest) = args.split_first().unwrap_or_else(|| panic!("no command for rabbitmq-cluster.sh"));
    Command::new(script())
        .arg(command)
        .arg(dir)
        .args(rest)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run rabbitmq-cluster.sh: {e}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn both(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

impl PrivateCluster {
    /// Starts `n` nodes, joins them into one cluster and returns once every
    /// node accepts AMQP and node 0 counts all of them running (half a
    /// minute for three nodes on 2 cores). Panics, naming what to install,
    /// when `rabbitmq-server` is missing.
    pub async fn start(n: usize) -> Self {
        assert!(n > 0, "a cluster needs at least one node");
        let dir = std::env::temp_dir().join(unique("gateway-test-cluster"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {dir:?}: {e}"));
        let output = run(&["start", &n.to_string()], &dir).await;
        let urls: Vec<String> =
            stdout(&output).trim().split(',').filter(|u| !u.is_empty()).map(str::to_owned).collect();
        // Built before the checks so that Drop removes whatever was started.
        let mut cluster = Self { dir, urls, nodes: Vec::new(), ports: Vec::new(), down: Mutex::new(vec![false; n]) };
        // The script's timings, shown with the test's output.
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        assert!(
            output.status.success() && cluster.urls.len() == n && cluster.urls.iter().all(|u| u.starts_with("amqp://")),
            "a private RabbitMQ cluster of {n} nodes did not start (is rabbitmq-server installed?):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.ports = cluster
            .urls
            .iter()
            .map(|u| {
                let url = url::Url::parse(u).unwrap_or_else(|e| panic!("node URL: {e}"));
                url.port().unwrap_or_else(|| panic!("a node URL without a port"))
            })
            .collect();
        let names = run(&["nodes"], &cluster.dir).await;
        assert!(names.status.success(), "rabbitmq-cluster.sh nodes failed:\n{}", both(&names));
        cluster.nodes = stdout(&names).lines().map(str::to_owned).collect();
        assert_eq!(cluster.nodes.len(), n, "node names: {:?}", cluster.nodes);
        cluster
    }

    /// Each node's AMQP URL, node `i` at index `i`.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// All URLs comma-separated: the form `AMQP_URL` takes for a cluster.
    pub fn url_list(&self) -> String {
        self.urls.join(",")
    }

    /// Node `i`'s AMQP address (always on 127.0.0.1).
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    /// Node `i`'s Erlang name, as `rabbitmqctl` prints it.
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// The node whose AMQP port is `port`, e.g. to tell which node a client
    /// is connected to from its peer address.
    pub fn node_of_port(&self, port: u16) -> Option<usize> {
        self.ports.iter().position(|&p| p == port)
    }

    /// The node named `name` (an Erlang node name).
    pub fn node_of_name(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == name)
    }

    fn index_arg(&self, i: usize) -> String {
        assert!(i < self.urls.len(), "node {i} of a cluster of {}", self.urls.len());
        (i + 1).to_string()
    }

    fn set_down(&self, i: usize, down: bool) {
        self.down.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[i] = down;
    }

    fn is_down(&self, i: usize) -> bool {
        self.down.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[i]
    }

    /// SIGKILLs node `i` (a crash: no clean shutdown) and returns once its
    /// processes are gone.
    pub async fn kill(&self, i: usize) {
        let output = run(&["kill", &self.index_arg(i)], &self.dir).await;
        assert!(output.status.success(), "killing node {i} failed:\n{}", both(&output));
        self.set_down(i, true);
    }

    /// Starts node `i` again as the same node (name, ports, data) and returns
    /// once it accepts AMQP and another running node counts it running.
    pub async fn restart(&self, i: usize) {
        let output = run(&["restart", &self.index_arg(i)], &self.dir).await;
        assert!(output.status.success(), "restarting node {i} failed:\n{}", both(&output));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        self.set_down(i, false);
    }

    /// Runs `rabbitmqctl ARGS` against node `i`; its stdout. Panics if it fails.
    pub async fn ctl(&self, i: usize, args: &[&str]) -> String {
        self.try_ctl(i, args).await.unwrap_or_else(|e| panic!("rabbitmqctl {args:?} on node {i} failed:\n{e}"))
    }

    /// Runs `rabbitmqctl ARGS` against node `i`: its stdout, or what it printed
    /// when it failed or took over 20 s.
    pub async fn try_ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let index = self.index_arg(i);
        let mut all = vec!["ctl", index.as_str()];
        all.extend_from_slice(args);
        match tokio::time::timeout(CTL_CALL, run(&all, &self.dir)).await {
            Ok(output) if output.status.success() => Ok(stdout(&output)),
            Ok(output) => Err(both(&output)),
            Err(_) => Err(format!("no answer within {CTL_CALL:?}")),
        }
    }

    /// The nodes node `i` counts running in its cluster (`cluster_status`),
    /// sorted.
    pub async fn running_nodes(&self, i: usize) -> Vec<usize> {
        let json = self.ctl(i, &["cluster_status", "--formatter", "json"]).await;
        self.parse_running_nodes(&json).unwrap_or_else(|e| panic!("cluster_status of node {i}: {e}:\n{json}"))
    }

    fn parse_running_nodes(&self, json: &str) -> Result<Vec<usize>, String> {
        let status: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let running = status["running_nodes"].as_array().ok_or("no running_nodes")?;
        let mut nodes = running
            .iter()
            .map(|n| {
                let name = n.as_str().unwrap_or_default();
                self.node_of_name(name).ok_or_else(|| format!("{name} is not a node of this cluster"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        nodes.sort_unstable();
        Ok(nodes)
    }

    /// The node leading quorum queue `queue` (on vhost `/`). While an
    /// election is in progress (the queue's record still names a node killed
    /// with [`PrivateCluster::kill`]) it polls, asking nodes that are not
    /// down, until a live node leads; panics after [`ELECTION`].
    pub async fn leader_of(&self, queue: &str) -> usize {
        let started = Instant::now();
        let mut last = String::from("no answer yet");
        loop {
            // The first node that answers: the record is the cluster's, any
            // node gives the same.
            for i in (0..self.urls.len()).filter(|&i| !self.is_down(i)) {
                let json = match self.try_ctl(i, &["list_queues", "--formatter", "json", "name", "leader"]).await {
                    Ok(json) => json,
                    Err(e) => {
                        last = format!("node {i}: {e}");
                        continue;
                    }
                };
                match leader_in(&json, queue) {
                    Some(leader) => match self.node_of_name(&leader) {
                        Some(node) if !self.is_down(node) => return node,
                        _ => last = format!("node {i} names {leader} as leader"),
                    },
                    None => last = format!("node {i} lists {queue} without a live leader (or not at all): {json}"),
                }
                break;
            }
            assert!(
                started.elapsed() < ELECTION,
                "no live leader for quorum queue {queue} after {ELECTION:?}; last: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The leader `list_queues --formatter json name leader` names for `queue`.
fn leader_in(json: &str, queue: &str) -> Option<String> {
    let queues: serde_json::Value = serde_json::from_str(json).ok()?;
    let entry = queues.as_array()?.iter().find(|q| q["name"].as_str() == Some(queue))?;
    entry["leader"].as_str().filter(|l| !l.is_empty()).map(str::to_owned)
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        crate::stop_quietly(&script(), &self.dir);
        if std::thread::panicking() {
            // The nodes' logs explain a failed test: keep them.
            eprintln!("PrivateCluster: the nodes are stopped; their logs are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> PrivateCluster {
        PrivateCluster {
            dir: std::env::temp_dir().join(unique("gateway-test-cluster-never-started")),
            urls: vec![
                "amqp://guest:s3cret-a@127.0.0.1:20001/%2f".into(),
                "amqp://guest:s3cret-b@127.0.0.1:20002/%2f".into(),
            ],
            nodes: vec!["gwtest-a@localhost".into(), "gwtest-b@localhost".into()],
            ports: vec![20001, 20002],
            down: Mutex::new(vec![false; 2]),
        }
    }

    #[test]
    fn debug_shows_no_password() {
        let shown = format!("{:?}", cluster());
        assert!(!shown.contains("s3cret") && shown.contains("20002"), "{shown}");
    }

    #[test]
    fn nodes_by_port_and_name() {
        let cluster = cluster();
        assert_eq!(cluster.node_of_port(20002), Some(1));
        assert_eq!(cluster.node_of_port(5672), None);
        assert_eq!(cluster.node_of_name("gwtest-a@localhost"), Some(0));
        assert_eq!(cluster.url_list(), format!("{},{}", cluster.urls[0], cluster.urls[1]));
        assert_eq!(cluster.addr(1), "127.0.0.1:20002".parse().unwrap());
    }

    #[test]
    fn leader_and_running_nodes_parse() {
        let json = r#"[{"name":"other","leader":"gwtest-a@localhost"},{"name":"q","leader":"gwtest-b@localhost"}]"#;
        assert_eq!(leader_in(json, "q").as_deref(), Some("gwtest-b@localhost"));
        assert_eq!(leader_in(json, "missing"), None);
        assert_eq!(leader_in(r#"[{"name":"q","leader":""}]"#, "q"), None);
        let status = r#"{"running_nodes":["gwtest-b@localhost","gwtest-a@localhost"],"disk_nodes":[]}"#;
        assert_eq!(cluster().parse_running_nodes(status), Ok(vec![0, 1]));
        let foreign = r#"{"running_nodes":["rabbit@elsewhere"]}"#;
        assert!(cluster().parse_running_nodes(foreign).is_err());
    }
}
