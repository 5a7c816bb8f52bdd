//! Waiting in tests: poll a condition until it holds or a time limit passes, then fail saying
//! what was awaited (and, when the check reports it, what was seen last).
//!
//! [`eventually`] sleeps on tokio's clock, so under `#[tokio::test(start_paused = true)]` a
//! wait costs no wall time; [`eventually_blocking`] is for tests without a runtime.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How often a condition is checked.
pub const POLL: Duration = Duration::from_millis(10);

/// What a check returns: done (with a value) or not yet (perhaps with what it saw).
pub trait Check {
    /// What a successful wait returns.
    type Value;
    /// `Ok` when done; otherwise what was seen, if the check says.
    fn outcome(self) -> Result<Self::Value, Option<String>>;
}

impl Check for bool {
    type Value = ();
    fn outcome(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Check for Option<T> {
    type Value = T;
    fn outcome(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Err` carries what was seen; it is shown if the wait times out.
impl<T, E: Debug> Check for Result<T, E> {
    type Value = T;
    fn outcome(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(format!("{seen:#?}")))
    }
}

/// Checks `check` every [`POLL`] until it is done and returns its value; panics naming `what`
/// (and the last thing seen) once `limit` has passed on tokio's clock.
pub async fn eventually<C: Check>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> C,
) -> C::Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let seen = match check().await.outcome() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            timed_out(limit, what, seen);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for code without a tokio runtime: sleeps the thread between checks.
pub fn eventually_blocking<C: Check>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> C,
) -> C::Value {
    let deadline = Instant::now() + limit;
    loop {
        let seen = match check().outcome() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            timed_out(limit, what, seen);
        }
        std::thread::sleep(POLL);
    }
}

fn timed_out(limit: Duration, what: &str, seen: Option<String>) -> ! {
    match seen {
        Some(seen) => panic!("timed out after {limit:?} waiting for {what}; last seen: {seen}"),
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_on_tokio_time_and_returns_the_value() {
        let start = tokio::time::Instant::now();
        let mut calls = 0;
        let value = eventually(Duration::from_secs(60), "the third call", async || {
            calls += 1;
            (calls == 3).then_some(calls)
        })
        .await;
        assert_eq!(value, 3);
        assert_eq!(start.elapsed(), 2 * POLL);
        eventually(Duration::from_secs(1), "true", async || true).await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 1s waiting for ready; last seen: \"pending\"")]
    async fn a_timeout_says_what_was_awaited_and_seen() {
        eventually(Duration::from_secs(1), "ready", async || {
            Err::<(), _>("pending")
        })
        .await;
    }

    #[test]
    #[should_panic(expected = "timed out after 20ms waiting for nothing")]
    fn the_blocking_wait_times_out_too() {
        eventually_blocking(Duration::from_millis(20), "nothing", || false);
    }
}
