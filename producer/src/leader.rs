//! Leader election on a `coordination.k8s.io/v1` Lease, with the semantics of client-go's
//! `leaderelection`, so that only one producer replica runs the watcher (claims, jobs,
//! resync) at a time.
//!
//! - [`lease_decision`] is the pure rule: acquire a Lease that is absent, released or expired
//!   (`renewTime + leaseDurationSeconds < now`), renew our own, follow anyone else's;
//! - [`LeaderElector`] carries it out through the [`LeaseStore`] every
//!   [`ElectionConfig::renew_interval`] (a third of the lease duration). Creates and replaces
//!   carry the `resourceVersion` that was read, so of two candidates that both saw an expired
//!   Lease only one write succeeds; the other gets a 409, re-reads and follows;
//! - [`Leadership`] is what the watcher looks at. A leader that has not renewed within
//!   [`ElectionConfig::renew_deadline`] (two thirds of the lease duration) stops leading at
//!   once, before any other candidate may consider the Lease expired: the last third covers
//!   the work in hand and clock skew between replicas.
//!
//! The expiry is judged on `renewTime`, written by the holder's clock and read by the
//! candidate's: replicas are assumed to have clocks within a third of the lease duration.
//! That clock is the system's ([`Clock::System`]); tests may run election on tokio's paused
//! clock instead ([`Clock::Tokio`]).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{LeaseStore, StoreError};

/// Longest time the release of the Lease may take at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// What [`lease_decision`] needs to know about a Lease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseState {
    /// `spec.holderIdentity`; `None` or empty: released.
    pub holder: Option<String>,
    /// `spec.renewTime`: when the holder last renewed.
    pub renew_time: Option<Timestamp>,
    /// `spec.leaseDurationSeconds`: how long a renewal holds.
    pub duration: Option<Duration>,
}

impl LeaseState {
    /// The state of `lease`.
    pub fn of(lease: &Lease) -> LeaseState {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseState {
            holder: spec.holder_identity,
            renew_time: spec.renew_time.map(|t| t.0),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
        }
    }
}

/// What a candidate does about the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take it: it is absent, released or expired.
    Acquire,
    /// It is ours: renew it.
    Renew,
    /// Someone else holds it until `until` (unless they renew).
    Follow {
        /// The holder's identity.
        holder: String,
        /// When the Lease expires unless renewed.
        until: Timestamp,
    },
}

/// The decision of candidate `me` at `now` about `lease` (`None`: it does not exist).
/// `duration` stands in for a Lease that does not say how long it lasts.
pub fn lease_decision(
    lease: Option<&LeaseState>,
    me: &str,
    now: Timestamp,
    duration: Duration,
) -> Decision {
    let Some(lease) = lease else {
        return Decision::Acquire;
    };
    let holder = match lease.holder.as_deref() {
        None | Some("") => return Decision::Acquire,
        Some(holder) => holder,
    };
    if holder == me {
        return Decision::Renew;
    }
    let Some(renewed) = lease.renew_time else {
        return Decision::Acquire;
    };
    let until = renewed
        .checked_add(lease.duration.unwrap_or(duration))
        .unwrap_or(Timestamp::MAX);
    if until < now {
        Decision::Acquire
    } else {
        Decision::Follow {
            holder: holder.to_owned(),
            until,
        }
    }
}

/// Settings of leader election.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This candidate's identity (unique per process).
    pub identity: String,
    /// How long a renewal holds (`leaseDurationSeconds`, rounded up to whole seconds).
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_interval: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often a follower checks whether it may take over.
    pub retry_interval: Duration,
    /// Where the times written into and judged from the Lease come from.
    pub clock: Clock,
}

/// Where leader election reads the wall-clock time (`renewTime`, `acquireTime`, expiry).
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A wall time that moves with tokio's clock: under tokio's paused time (tests), Leases
    /// expire as the paused clock advances, without waiting for real time to pass.
    Tokio {
        /// The wall time at `origin`.
        wall: Timestamp,
        /// tokio's time at `wall`.
        origin: Instant,
    },
}

impl Clock {
    /// A [`Clock::Tokio`] that reads the system time now.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            wall: Timestamp::now(),
            origin: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Tokio { wall, origin } => {
                wall.checked_add(origin.elapsed()).unwrap_or(Timestamp::MAX)
            }
        }
    }
}

impl ElectionConfig {
    /// Settings for `lease_duration`: renew every third, give up leading after two thirds
    /// without a renewal, followers check every third.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
        lease_duration: Duration,
    ) -> Self {
        let third = lease_duration / 3;
        ElectionConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            renew_interval: third,
            renew_deadline: lease_duration.saturating_sub(third),
            retry_interval: third,
            clock: Clock::System,
        }
    }
}

/// Whether this process leads, as seen by the loops that only the leader may run.
#[derive(Debug, Clone)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// True while this process leads. An elector that is gone renews nothing: not leading,
    /// whatever it said last.
    pub fn is_leader(&self) -> bool {
        self.0.has_changed().is_ok() && *self.0.borrow()
    }

    /// Waits until this process leads (`leader`) or does not (`!leader`); `false` when the
    /// elector is gone without getting there.
    pub async fn wait_until(&mut self, leader: bool) -> bool {
        let reached = self.0.wait_for(|l| *l == leader).await.is_ok();
        reached && (!leader || self.0.has_changed().is_ok())
    }
}

/// The outcome of one election round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// We hold the Lease (acquired or renewed it).
    Leading,
    /// Someone else holds it.
    Following {
        /// The holder's identity.
        holder: String,
    },
}

/// Runs the election for one candidate and publishes the outcome as [`Leadership`].
#[derive(Debug)]
pub struct LeaderElector<L> {
    store: L,
    config: ElectionConfig,
    leading: watch::Sender<bool>,
}

impl<L: LeaseStore> LeaderElector<L> {
    /// A candidate that does not lead until [`LeaderElector::run`] acquires the Lease.
    pub fn new(store: L, config: ElectionConfig) -> Self {
        LeaderElector {
            store,
            config,
            leading: watch::Sender::new(false),
        }
    }

    /// A view of this candidate's leadership.
    pub fn leadership(&self) -> Leadership {
        Leadership(self.leading.subscribe())
    }

    /// Reads the Lease and acquires or renews it when [`lease_decision`] says so. A conflict
    /// (someone else wrote first) is re-read and decided again, once.
    pub async fn round(&self) -> Result<Round, StoreError> {
        let (namespace, name) = (&self.config.namespace, &self.config.name);
        let me = self.config.identity.as_str();
        let mut conflict = None;
        for _ in 0..2 {
            let now = self.config.clock.now();
            let current = self.store.get(namespace, name).await?;
            let state = current.as_ref().map(LeaseState::of);
            match lease_decision(state.as_ref(), me, now, self.config.lease_duration) {
                Decision::Follow { holder, .. } => return Ok(Round::Following { holder }),
                Decision::Acquire | Decision::Renew => {
                    let desired = self.desired(current.as_ref(), now);
                    let written = match current {
                        None => self.store.create(&desired).await,
                        Some(_) => self.store.replace(&desired).await,
                    };
                    match written {
                        Ok(_) => return Ok(Round::Leading),
                        Err(error @ StoreError::Conflict(_)) => {
                            tracing::debug!("lease conflict; re-reading");
                            conflict = Some(error);
                        }
                        Err(error) => return Err(error),
                    }
                }
            }
        }
        Err(conflict.unwrap_or_else(|| StoreError::Unavailable("lease conflicts".into())))
    }

    /// `current` (or a new Lease) held by us, renewed at `now`; keeps its resourceVersion.
    fn desired(&self, current: Option<&Lease>, now: Timestamp) -> Lease {
        let mut lease = current.cloned().unwrap_or_else(|| {
            let mut lease = Lease::default();
            lease.metadata.namespace = Some(self.config.namespace.clone());
            lease.metadata.name = Some(self.config.name.clone());
            lease
        });
        let previous = lease.spec.take().unwrap_or_default();
        let me = self.config.identity.clone();
        let acquiring = previous.holder_identity.as_ref() != Some(&me);
        let transitions = previous.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            acquire_time: if acquiring {
                Some(MicroTime(now))
            } else {
                previous.acquire_time.clone()
            },
            lease_transitions: Some(if acquiring && current.is_some() {
                transitions.saturating_add(1)
            } else {
                transitions
            }),
            holder_identity: Some(me),
            lease_duration_seconds: Some(whole_seconds(self.config.lease_duration)),
            renew_time: Some(MicroTime(now)),
            ..previous
        });
        lease
    }

    /// Gives the Lease up if we hold it, so another candidate takes over without waiting for
    /// it to expire.
    async fn release(&self) -> Result<(), StoreError> {
        let (namespace, name) = (&self.config.namespace, &self.config.name);
        let Some(mut lease) = self.store.get(namespace, name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(self.config.clock.now()));
        self.store.replace(&lease).await.map(drop)
    }

    fn set_leading(&self, leading: bool, why: &str) {
        let changed = self.leading.send_if_modified(|current| {
            let changed = *current != leading;
            *current = leading;
            changed
        });
        if changed && leading {
            tracing::info!(identity = %self.config.identity, "became the leader ({why})");
        } else if changed {
            tracing::warn!(identity = %self.config.identity, "stopped leading ({why})");
        }
    }

    /// Campaigns, renews and follows until `shutdown` is cancelled; then stops leading and
    /// releases the Lease if it held it.
    pub async fn run(self, shutdown: CancellationToken) {
        let config = &self.config;
        // Some while leading: when leadership ends unless renewed.
        let mut deadline: Option<Instant> = None;
        let mut holder_seen: Option<String> = None;
        tracing::info!(
            identity = %config.identity,
            lease = %format!("{}/{}", config.namespace, config.name),
            "campaigning for leadership"
        );
        loop {
            let started = Instant::now();
            let round = self.round();
            // A leader's round may not outlast its deadline: it stops leading at once then.
            let bounded = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, round),
                None => tokio::time::timeout(config.lease_duration, round),
            };
            let outcome = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                outcome = bounded => outcome,
            };
            let wait = match outcome {
                Ok(Ok(Round::Leading)) => {
                    deadline = Some(started + config.renew_deadline);
                    holder_seen = None;
                    self.set_leading(true, "lease acquired or renewed");
                    config.renew_interval
                }
                Ok(Ok(Round::Following { holder })) => {
                    deadline = None;
                    self.set_leading(false, "another candidate holds the lease");
                    if holder_seen.as_ref() != Some(&holder) {
                        tracing::info!(%holder, "following the leader");
                        holder_seen = Some(holder);
                    }
                    config.retry_interval
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "leader election round failed");
                    self.retry_after_failure(deadline)
                }
                Err(_elapsed) => {
                    tracing::warn!("leader election round timed out");
                    self.retry_after_failure(deadline)
                }
            };
            if deadline.is_some_and(|d| Instant::now() >= d) {
                deadline = None;
                self.set_leading(false, "could not renew the lease in time");
            }
            let mut wake = Instant::now() + wait;
            if let Some(deadline) = deadline {
                wake = wake.min(deadline);
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(wake) => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                deadline = None;
                self.set_leading(false, "could not renew the lease in time");
            }
        }
        let was_leading = *self.leading.borrow();
        self.set_leading(false, "shutting down");
        if was_leading {
            match tokio::time::timeout(RELEASE_TIMEOUT, self.release()).await {
                Ok(Ok(())) => tracing::info!("lease released"),
                Ok(Err(error)) => tracing::warn!(%error, "cannot release the lease"),
                Err(_elapsed) => tracing::warn!("releasing the lease timed out"),
            }
        }
    }

    /// How long to wait after a failed round: a leader retries sooner, to renew before its
    /// deadline.
    fn retry_after_failure(&self, deadline: Option<Instant>) -> Duration {
        match deadline {
            Some(_) => self.config.renew_interval / 4,
            None => self.config.retry_interval,
        }
    }
}

/// `duration` in whole seconds, rounded up, at least one (the API's unit).
fn whole_seconds(duration: Duration) -> i32 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn held(holder: &str, renewed: Option<i64>, seconds: Option<u64>) -> LeaseState {
        LeaseState {
            holder: Some(holder.into()),
            renew_time: renewed.map(at),
            duration: seconds.map(Duration::from_secs),
        }
    }

    fn follow(holder: &str, until: i64) -> Decision {
        Decision::Follow {
            holder: holder.into(),
            until: at(until),
        }
    }

    #[test]
    fn decisions() {
        let released = LeaseState {
            holder: Some(String::new()),
            ..held("x", Some(0), Some(15))
        };
        let cases: Vec<(&str, Option<LeaseState>, i64, Decision)> = vec![
            ("absent", None, 0, Decision::Acquire),
            (
                "ours, fresh",
                Some(held("me", Some(0), Some(15))),
                1,
                Decision::Renew,
            ),
            // Ours even when expired: renewing keeps it, nobody else wrote since.
            (
                "ours, expired",
                Some(held("me", Some(0), Some(15))),
                99,
                Decision::Renew,
            ),
            (
                "theirs, fresh",
                Some(held("b", Some(0), Some(15))),
                10,
                follow("b", 15),
            ),
            // Expired means strictly after renewTime + duration.
            (
                "theirs, at expiry",
                Some(held("b", Some(0), Some(15))),
                15,
                follow("b", 15),
            ),
            (
                "theirs, expired",
                Some(held("b", Some(0), Some(15))),
                16,
                Decision::Acquire,
            ),
            // The Lease's own duration wins over ours.
            (
                "theirs, short lease",
                Some(held("b", Some(0), Some(5))),
                6,
                Decision::Acquire,
            ),
            (
                "theirs, long lease",
                Some(held("b", Some(0), Some(60))),
                59,
                follow("b", 60),
            ),
            (
                "theirs, no duration",
                Some(held("b", Some(0), None)),
                14,
                follow("b", 15),
            ),
            (
                "theirs, never renewed",
                Some(held("b", None, Some(15))),
                0,
                Decision::Acquire,
            ),
            (
                "released (empty holder)",
                Some(released),
                1,
                Decision::Acquire,
            ),
            (
                "released (no holder)",
                Some(LeaseState::default()),
                1,
                Decision::Acquire,
            ),
        ];
        for (name, lease, now, expected) in cases {
            assert_eq!(
                lease_decision(lease.as_ref(), "me", at(now), D),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn lease_state_reads_the_spec() {
        let mut lease = Lease::default();
        assert_eq!(LeaseState::of(&lease), LeaseState::default());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some("a".into()),
            renew_time: Some(MicroTime(at(3))),
            lease_duration_seconds: Some(0),
            ..LeaseSpec::default()
        });
        assert_eq!(LeaseState::of(&lease), held("a", Some(3), None));
        lease.spec.as_mut().unwrap().lease_duration_seconds = Some(7);
        assert_eq!(LeaseState::of(&lease), held("a", Some(3), Some(7)));
    }

    #[tokio::test]
    async fn a_gone_elector_leads_no_more() {
        let elector = LeaderElector::new(crate::store::fake::FakeLeaseStore::new(), {
            ElectionConfig::new("ns", "l", "me", D)
        });
        let mut leadership = elector.leadership();
        elector.set_leading(true, "test");
        assert!(leadership.is_leader());
        drop(elector);
        assert!(!leadership.is_leader());
        assert!(!leadership.wait_until(true).await);
        assert!(!leadership.wait_until(false).await);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let start = clock.now();
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now().duration_since(start).as_secs(), 90);
    }

    #[test]
    fn intervals_follow_the_lease_duration() {
        let c = ElectionConfig::new("ns", "l", "me", D);
        assert_eq!(c.renew_interval, Duration::from_secs(5));
        assert_eq!(c.retry_interval, Duration::from_secs(5));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(whole_seconds(D), 15);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(10)), 1);
    }
}
