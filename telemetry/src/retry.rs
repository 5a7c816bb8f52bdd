//! Waiting between attempts, the one way every helmq process does it: capped exponential
//! backoff (built on `backon`) and a sleep that shutdown cuts short.

use std::time::Duration;

use backon::BackoffBuilder as _;
use tokio_util::sync::CancellationToken;

/// The delay before the retry after `failures` failures in a row (1 for the first): `first`,
/// doubled per earlier failure, at most `max`; with `jitter`, plus up to the same again at
/// random, still at most `max`. No failure yet (0) waits `first` too.
pub fn backoff(first: Duration, max: Duration, failures: u32, jitter: bool) -> Duration {
    // Past 64 doublings every delay is `max`; the cap keeps the iteration short.
    let times = failures.clamp(1, 64) as usize;
    let mut builder = backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_max_times(times);
    if jitter {
        builder = builder.with_jitter();
    }
    let delay = builder.build().last().unwrap_or(first).min(max);
    // backon multiplies in f64 (200 ms doubled is 400.000006 ms): whole microseconds make the
    // doubling exact again.
    let micros = (delay.as_nanos() + 500) / 1_000;
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX)).min(max)
}

/// Sleeps for `delay`; `false` if `shutdown` came first.
pub async fn pause(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_from_first_up_to_max() {
        let (first, max) = (100 * MS, 5_000 * MS);
        let delays: Vec<Duration> = (0..10).map(|n| backoff(first, max, n, false)).collect();
        assert_eq!(
            delays,
            [100, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000].map(|ms| ms * MS)
        );
        assert_eq!(backoff(first, max, u32::MAX, false), max);
        // A first delay over the cap is capped too.
        assert_eq!(backoff(10 * max, max, 1, false), max);
    }

    #[test]
    fn jitter_adds_at_most_the_delay_again_and_never_passes_max() {
        let (first, max) = (100 * MS, 1_000 * MS);
        for failures in 1..8 {
            let plain = backoff(first, max, failures, false);
            for _ in 0..50 {
                let jittered = backoff(first, max, failures, true);
                assert!(
                    jittered >= plain && jittered <= (plain * 2).min(max),
                    "{failures}: {jittered:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn pause_sleeps_unless_shutdown_comes_first() {
        let shutdown = CancellationToken::new();
        assert!(pause(&shutdown, 5 * MS).await);
        shutdown.cancel();
        assert!(!pause(&shutdown, Duration::from_secs(3600)).await);
    }
}
