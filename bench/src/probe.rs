//! [`Probe`]: when each job of a phase was published, reached the driver, left it, and had
//! its `Ready` status applied, as offsets from one start instant (lock-free, one slot per job).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A point in a job's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Handed to the publisher.
    Published,
    /// The driver's `apply` was called.
    DriverCalled,
    /// The driver's `apply` returned.
    DriverReturned,
    /// The writer patched the Component's status to `Ready`.
    Applied,
}

const MARKS: usize = 4;

/// Times of every job of a phase; shared by the publisher, the driver and the store.
#[derive(Debug)]
pub struct Probe {
    start: Instant,
    started_at: jiff::Timestamp,
    // Nanoseconds after `start` plus one (0: not yet), MARKS per job.
    slots: Vec<AtomicU64>,
    applied: AtomicU64,
    progress: Notify,
}

impl Probe {
    /// A probe for `jobs` jobs, counting from now.
    pub fn new(jobs: usize) -> Probe {
        Probe {
            start: Instant::now(),
            started_at: jiff::Timestamp::now(),
            slots: (0..jobs * MARKS).map(|_| AtomicU64::new(0)).collect(),
            applied: AtomicU64::new(0),
            progress: Notify::new(),
        }
    }

    /// Records `mark` of job `index` now (only the first time: a redelivery keeps the first).
    pub fn mark(&self, index: usize, mark: Mark) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        if let Some(slot) = self.slots.get(index * MARKS + mark as usize)
            && slot
                .compare_exchange(0, nanos, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && mark == Mark::Applied
        {
            self.applied.fetch_add(1, Ordering::Relaxed);
            self.progress.notify_waiters();
        }
    }

    /// The time since the probe's start, as its marks count it.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// When `mark` of job `index` happened, after the probe's start.
    pub fn at(&self, index: usize, mark: Mark) -> Option<Duration> {
        let nanos = self
            .slots
            .get(index * MARKS + mark as usize)?
            .load(Ordering::Relaxed);
        (nanos > 0).then(|| Duration::from_nanos(nanos - 1))
    }

    /// When `mark` of job `index` happened, on the wall clock (to compare with the times in
    /// status events, which other processes of this machine write).
    pub fn wall(&self, index: usize, mark: Mark) -> Option<jiff::Timestamp> {
        let offset = jiff::SignedDuration::try_from(self.at(index, mark)?).ok()?;
        self.started_at.checked_add(offset).ok()
    }

    /// Jobs whose `Ready` status is applied.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// `to - from` of every job that has both marks.
    pub fn intervals(&self, jobs: usize, from: Mark, to: Mark) -> Vec<Duration> {
        (0..jobs)
            .filter_map(|i| Some(self.at(i, to)?.saturating_sub(self.at(i, from)?)))
            .collect()
    }

    /// Waits until `jobs` statuses are applied; fails when none is applied for `stall`.
    pub async fn wait_applied(&self, jobs: u64, stall: Duration) -> anyhow::Result<()> {
        let mut last = self.applied();
        let mut since = Instant::now();
        while self.applied() < jobs {
            let progress = self.progress.notified();
            let _ = tokio::time::timeout(Duration::from_millis(50), progress).await;
            let now = self.applied();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() > stall {
                anyhow::bail!("stalled: {now} of {jobs} statuses applied, none for {stall:?}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_mark_and_counts_applied_jobs_once() {
        let probe = Probe::new(2);
        assert_eq!(probe.at(0, Mark::Published), None);
        probe.mark(0, Mark::Published);
        let first = probe.at(0, Mark::Published).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        probe.mark(0, Mark::Published);
        assert_eq!(probe.at(0, Mark::Published), Some(first));
        probe.mark(0, Mark::Applied);
        probe.mark(0, Mark::Applied);
        probe.mark(5, Mark::Applied);
        assert_eq!(probe.applied(), 1);
        let intervals = probe.intervals(2, Mark::Published, Mark::Applied);
        assert_eq!(intervals.len(), 1);
        assert!(intervals[0] >= Duration::from_millis(2));
    }
}
