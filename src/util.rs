//! Small helpers shared by the async loops.

use std::time::Instant;

/// Sleeps until `deadline`, or forever when there is none; for `select!` branches guarded by a
/// deadline that comes and goes.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
