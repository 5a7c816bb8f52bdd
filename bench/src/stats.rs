//! Percentiles of measured durations (nearest rank), as pure functions.

use std::time::Duration;

/// p50, p90, p99 and the maximum of a set of durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

/// The nearest-rank `p`-th percentile (0 < p ≤ 100) of `sorted` (ascending); `None` when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank: the smallest value with at least p% of the values at or below it.
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The [`Spread`] of `values`; `None` when there are none.
pub fn spread(mut values: Vec<Duration>) -> Option<Spread> {
    values.sort_unstable();
    Some(Spread {
        p50: percentile(&values, 50.0)?,
        p90: percentile(&values, 90.0)?,
        p99: percentile(&values, 99.0)?,
        max: *values.last()?,
    })
}

/// Milliseconds with three decimals, for the report.
pub fn ms(duration: Duration) -> f64 {
    round3(duration.as_secs_f64() * 1000.0)
}

/// `value` rounded to three decimals.
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Vec<u64> = (1..=100).collect();
        let cases: [(&[u64], f64, Option<u64>); 7] = [
            (&[], 50.0, None),
            (&[7], 99.0, Some(7)),
            (&[1, 2], 50.0, Some(1)),
            (&[1, 2], 51.0, Some(2)),
            (&hundred, 50.0, Some(50)),
            (&hundred, 99.0, Some(99)),
            (&hundred, 100.0, Some(100)),
        ];
        for (values, p, expected) in cases {
            assert_eq!(
                percentile(&millis(values), p),
                expected.map(Duration::from_millis),
                "p{p} of {values:?}"
            );
        }
    }

    #[test]
    fn spread_sorts_first() {
        let spread = spread(millis(&[30, 10, 20])).unwrap();
        assert_eq!(spread.p50, Duration::from_millis(20));
        assert_eq!(spread.max, Duration::from_millis(30));
        assert_eq!(super::spread(Vec::new()), None);
        assert_eq!(ms(Duration::from_micros(1_234_567)), 1234.567);
    }
}
