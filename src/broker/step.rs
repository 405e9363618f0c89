//! One bounded broker step, and whether its failure is worth retrying.
//!
//! Every await on the broker during set-up or tear-down (connect, open a
//! channel, declare, consume, ack, close) goes through [`bounded`]: a broker
//! that accepts TCP but never answers must not hang a process. The error says
//! which of the two happened, and [`StepError::is_permanent`] tells a
//! reconnect loop when to give up instead of retrying for ever.

use std::time::Duration;

use lapin::protocol::{AMQPHardError, AMQPSoftError};
use lapin::{ErrorKind, protocol::AMQPErrorKind};

/// The bound on one broker step. Long enough for a loaded broker to answer,
/// short enough that a silent one is noticed within a health-check period.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker step that failed or did not finish within [`STEP_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The broker did not answer in time.
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    /// The broker, or the connection to it, failed the step.
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

impl StepError {
    /// True when retrying cannot help until someone changes the broker's
    /// configuration or the process's: see [`is_permanent`].
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Timeout(_) => false,
            Self::Amqp(error) => is_permanent(error),
        }
    }
}

/// Runs one broker step within [`STEP_TIMEOUT`].
pub async fn bounded<T>(step: impl Future<Output = lapin::Result<T>>) -> Result<T, StepError> {
    Ok(tokio::time::timeout(STEP_TIMEOUT, step).await.map_err(|_| StepError::Timeout(STEP_TIMEOUT))??)
}

/// True for the broker's refusals that stay true however often the step is
/// retried:
///
/// - `ACCESS_REFUSED` (403): bad credentials (RabbitMQ closes the connection
///   with it after a failed login), no permission on a resource, or a name
///   with the reserved `amq.` prefix;
/// - `PRECONDITION_FAILED` (406): a queue declared again with other
///   arguments than it exists with (durability, type, dead-lettering);
/// - `NOT_ALLOWED` (530): the virtual host does not exist or the user may not
///   use it; `INVALID_PATH` (402): a virtual host name the broker refuses;
/// - a failing authentication provider, or a broker that speaks another AMQP
///   version.
///
/// Everything else (I/O errors, timeouts, a queue not found yet, an
/// exclusive queue locked by another connection, a broker shutting down) may
/// pass and is retried.
pub fn is_permanent(error: &lapin::Error) -> bool {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::PRECONDITIONFAILED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED | AMQPHardError::INVALIDPATH)
        ),
        ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use lapin::protocol::AMQPError;

    use super::*;

    fn refusal(kind: AMQPErrorKind) -> lapin::Error {
        ErrorKind::ProtocolError(AMQPError::new(kind, "refused".into())).into()
    }

    #[test]
    fn refusals_that_hold_are_permanent_and_what_may_pass_is_retried() {
        for (kind, permanent) in [
            (AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED), true),
            (AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED), true),
            (AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED), true),
            (AMQPErrorKind::Hard(AMQPHardError::INVALIDPATH), true),
            (AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND), false),
            (AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED), false),
            (AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED), false),
            (AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR), false),
        ] {
            let shown = format!("{kind:?}");
            assert_eq!(StepError::from(refusal(kind)).is_permanent(), permanent, "{shown}");
        }
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert!(!StepError::from(io).is_permanent());
        assert!(!StepError::Timeout(STEP_TIMEOUT).is_permanent());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_step_times_out() {
        let silent = std::future::pending::<lapin::Result<()>>();
        assert!(matches!(bounded(silent).await, Err(StepError::Timeout(STEP_TIMEOUT))));
        assert_eq!(bounded(async { Ok::<_, lapin::Error>(7) }).await.unwrap(), 7);
    }
}
