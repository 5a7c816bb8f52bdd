//! Leader election between candidates on one in-memory API server ([`FakeLeaseStore`]): one
//! leader at any time, takeover when the leader is cut off, crashes or shuts down.
//!
//! The takeover tests run on tokio's paused clock (with [`Clock::Tokio`], so Leases expire on
//! it too): seconds of renewals and expiries take no wall time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use helmq_producer::leader::{Clock, ElectionConfig, LeaderElector, Leadership, Round};
use helmq_producer::store::LeaseStore;
use helmq_producer::store::fake::FakeLeaseStore;
use helmq_tests::wait::eventually;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);
const NS: &str = "helmq-system";
const NAME: &str = "helmq-producer";

/// A 1s lease (the API's minimum) with fast rounds, on `clock`.
fn config(identity: &str, clock: Clock) -> ElectionConfig {
    ElectionConfig {
        renew_interval: Duration::from_millis(100),
        renew_deadline: Duration::from_millis(500),
        retry_interval: Duration::from_millis(100),
        clock,
        ..ElectionConfig::new(NS, NAME, identity, Duration::from_secs(1))
    }
}

fn holder(store: &FakeLeaseStore) -> Option<String> {
    store
        .snapshot(NS, NAME)
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// Samples the candidates' leadership every millisecond and records whether two ever led at
/// once.
struct Monitor {
    overlap: Arc<AtomicBool>,
    samples: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Monitor {
    fn start(views: Vec<Leadership>) -> Monitor {
        let (overlap, samples, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            CancellationToken::new(),
        );
        let (o, n, s) = (overlap.clone(), samples.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.is_cancelled() {
                if views.iter().filter(|v| v.is_leader()).count() > 1 {
                    o.store(true, Ordering::SeqCst);
                }
                n.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        Monitor {
            overlap,
            samples,
            stop,
        }
    }

    fn assert_never_two(&self) {
        assert!(self.samples.load(Ordering::SeqCst) > 0);
        assert!(
            !self.overlap.load(Ordering::SeqCst),
            "two candidates led at the same time"
        );
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test(start_paused = true)]
async fn a_cut_off_leader_stops_leading_before_the_follower_takes_over() {
    let store = FakeLeaseStore::new();
    let (link_a, link_b) = (store.connection(), store.connection());
    let clock = Clock::tokio();
    let a = LeaderElector::new(link_a.clone(), config("a", clock));
    let b = LeaderElector::new(link_b.clone(), config("b", clock));
    let (view_a, view_b) = (a.leadership(), b.leadership());
    let monitor = Monitor::start(vec![view_a.clone(), view_b.clone()]);
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();

    tokio::spawn(a.run(token.clone()));
    eventually(DEADLINE, "a to lead", async || view_a.is_leader()).await;
    tokio::spawn(b.run(token.clone()));
    // b has read the Lease (and follows) once the Lease was renewed after b started.
    let renewed = |store: &FakeLeaseStore| {
        store
            .snapshot(NS, NAME)
            .and_then(|l| l.metadata.resource_version)
    };
    let seen = renewed(&store);
    eventually(DEADLINE, "a to renew twice", async || {
        renewed(&store).and_then(|rv| rv.parse::<u64>().ok())
            >= seen
                .as_ref()
                .and_then(|rv| rv.parse::<u64>().ok())
                .map(|v| v + 2)
    })
    .await;
    assert!(view_a.is_leader() && !view_b.is_leader());

    // a loses the API server: it stops leading on its own, then b takes over.
    link_a.cut_off(true);
    eventually(DEADLINE, "b to lead", async || view_b.is_leader()).await;
    assert!(!view_a.is_leader());
    assert_eq!(holder(&store).as_deref(), Some("b"));
    let spec = store.snapshot(NS, NAME).unwrap().spec.unwrap();
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(spec.lease_duration_seconds, Some(1));

    // a is back: it follows b.
    link_a.cut_off(false);
    let seen = renewed(&store);
    eventually(DEADLINE, "b to keep renewing", async || {
        renewed(&store).and_then(|rv| rv.parse::<u64>().ok())
            >= seen
                .as_ref()
                .and_then(|rv| rv.parse::<u64>().ok())
                .map(|v| v + 3)
    })
    .await;
    assert!(view_b.is_leader() && !view_a.is_leader());
    assert_eq!(holder(&store).as_deref(), Some("b"));
    monitor.assert_never_two();
}

#[tokio::test(start_paused = true)]
async fn the_follower_takes_over_from_a_crashed_leader_after_expiry_and_from_a_stopped_one_at_once()
{
    let store = FakeLeaseStore::new();
    let clock = Clock::tokio();
    let a = LeaderElector::new(store.connection(), config("a", clock));
    let b = LeaderElector::new(store.connection(), config("b", clock));
    let c = LeaderElector::new(store.connection(), config("c", clock));
    let (view_a, view_b, view_c) = (a.leadership(), b.leadership(), c.leadership());
    let (token_b, token_c) = (CancellationToken::new(), CancellationToken::new());
    let _stop = (token_b.clone().drop_guard(), token_c.clone().drop_guard());

    let crashed = tokio::spawn(a.run(CancellationToken::new()));
    eventually(DEADLINE, "a to lead", async || view_a.is_leader()).await;
    let monitor = Monitor::start(vec![view_b.clone(), view_c.clone()]);
    tokio::spawn(b.run(token_b.clone()));
    tokio::spawn(c.run(token_c.clone()));

    // A crash: no release, no more renewals; a successor once the 1s lease expired.
    crashed.abort();
    let crash = tokio::time::Instant::now();
    eventually(DEADLINE, "b or c to lead", async || {
        view_b.is_leader() || view_c.is_leader()
    })
    .await;
    assert!(
        crash.elapsed() >= Duration::from_millis(500),
        "took over after {:?}, before the lease could expire",
        crash.elapsed()
    );
    let (leader, follower, leader_view, follower_view) = if view_b.is_leader() {
        (token_b, "c", view_b, view_c)
    } else {
        (token_c, "b", view_c, view_b)
    };

    // A shutdown: the leader releases the Lease and the follower takes it over without
    // waiting for it to expire.
    leader.cancel();
    eventually(DEADLINE, "the leader to stop", async || {
        !leader_view.is_leader()
    })
    .await;
    let stopped = tokio::time::Instant::now();
    eventually(DEADLINE, "the follower to lead", async || {
        follower_view.is_leader()
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_millis(900),
        "took {:?}",
        stopped.elapsed()
    );
    assert_eq!(holder(&store).as_deref(), Some(follower));
    monitor.assert_never_two();
}

fn expired_lease(holder: &str) -> Lease {
    let mut lease = Lease::default();
    lease.metadata.namespace = Some(NS.into());
    lease.metadata.name = Some(NAME.into());
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(
            Timestamp::now() - jiff::SignedDuration::from_secs(60),
        )),
        ..LeaseSpec::default()
    });
    lease
}

/// A connection whose first read waits until every candidate has read: all of them decide on
/// the same state, then race to write.
struct SameRead {
    store: FakeLeaseStore,
    barrier: Arc<tokio::sync::Barrier>,
    read: AtomicBool,
}

impl LeaseStore for SameRead {
    async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Lease>, helmq_producer::store::StoreError> {
        let lease = self.store.get(namespace, name).await;
        if !self.read.swap(true, Ordering::SeqCst) {
            self.barrier.wait().await;
        }
        lease
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, helmq_producer::store::StoreError> {
        self.store.create(lease).await
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, helmq_producer::store::StoreError> {
        self.store.replace(lease).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn candidates_racing_for_an_absent_or_expired_lease_never_both_win() {
    for existing in [None, Some(expired_lease("gone"))] {
        let store = FakeLeaseStore::new();
        if let Some(lease) = &existing {
            store.create(lease).await.unwrap();
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let electors: Vec<_> = (0..8)
            .map(|i| {
                let link = SameRead {
                    store: store.clone(),
                    barrier: barrier.clone(),
                    read: AtomicBool::new(false),
                };
                Arc::new(LeaderElector::new(
                    link,
                    config(&format!("c{i}"), Clock::System),
                ))
            })
            .collect();
        let rounds = futures::future::join_all(electors.iter().map(|e| {
            let e = e.clone();
            tokio::spawn(async move { e.round().await })
        }))
        .await;
        let rounds: Vec<Round> = rounds.into_iter().map(|r| r.unwrap().unwrap()).collect();
        let leaders = rounds.iter().filter(|r| **r == Round::Leading).count();
        assert_eq!(leaders, 1, "{existing:?}: {rounds:#?}");
        let winner = holder(&store).unwrap();
        for round in &rounds {
            if let Round::Following { holder } = round {
                assert_eq!(holder, &winner);
            }
        }
        let spec = store.snapshot(NS, NAME).unwrap().spec.unwrap();
        assert_eq!(
            spec.lease_transitions,
            Some(i32::from(existing.is_some())),
            "{existing:?}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_api_server_is_an_error_not_a_decision() {
    let store = FakeLeaseStore::new();
    let elector = LeaderElector::new(store.clone(), config("a", Clock::System));
    store.set_unavailable(true);
    assert!(elector.round().await.unwrap_err().is_transient());
    store.set_unavailable(false);
    assert_eq!(elector.round().await.unwrap(), Round::Leading);
    // Renewing keeps the acquire time and counts no transition.
    let first = store.snapshot(NS, NAME).unwrap().spec.unwrap();
    assert_eq!(elector.round().await.unwrap(), Round::Leading);
    let second = store.snapshot(NS, NAME).unwrap().spec.unwrap();
    assert_eq!(first.acquire_time, second.acquire_time);
    assert!(second.renew_time.unwrap().0 >= first.renew_time.unwrap().0);
    assert_eq!(second.lease_transitions, Some(0));
}
