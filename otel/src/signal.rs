//! The signal both binaries stop on.
//!
//! It lives beside telemetry because this crate is what the `gateway` and
//! `worker` binaries share at the process level (logs, metrics endpoint,
//! shutdown), while the contract crate holds only what crosses the wire.

/// Resolves on SIGINT or SIGTERM with the signal's name.
///
/// If the handlers cannot be installed it logs why and never resolves: the
/// process then runs until killed (SIGKILL), rather than stopping at once.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
