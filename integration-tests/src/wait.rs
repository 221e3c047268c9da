//! Bounded polling: every wait in the harness goes through here so none can hang.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::HarnessError;

/// How often [`poll_until`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `check` every [`POLL_INTERVAL`] until it returns `Some`, or fails with
/// [`HarnessError::Timeout`] naming `what` once `timeout` has passed. `check` may
/// itself fail; its error ends the wait.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> Result<T, HarnessError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, HarnessError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout {
                what: what.to_string(),
                waited: timeout,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
