//! The release lease on a real nats-server (issue 19): work under a lease starts only after a
//! compare-and-set renewal, is renewed while it runs, and is cancelled and awaited when the
//! lease is taken over; the lease's clock starts when it was written.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use helmq_queue::Topology;
use helmq_queue::topology::LEASES_BUCKET;
use helmq_worker::exclusivity::{LeaseLost, LeaseTiming, Leases};
use tokio_util::sync::CancellationToken;

use common::{Env, eventually};

const TTL: Duration = Duration::from_secs(1);

async fn leases() -> (Env, Leases) {
    let env = Env::start(Topology {
        lease_ttl: TTL,
        ..Topology::default()
    })
    .await;
    let leases = Leases::open(&env.js).await.unwrap();
    assert_eq!(leases.ttl(), TTL);
    (env, leases)
}

#[tokio::test]
async fn a_lease_taken_over_before_the_run_starts_never_starts_it() {
    let (_env, leases) = leases().await;
    let timing = LeaseTiming::new(TTL, Duration::ZERO).unwrap();
    let mine = leases.try_acquire("apps.web", "a").await.unwrap().unwrap();
    // Between taking the lease and the run (a NATS stall, say), it expires and b takes it.
    let theirs = eventually(
        Duration::from_secs(10),
        "b takes the expired lease",
        || async { leases.try_acquire("apps.web", "b").await.unwrap() },
    )
    .await;
    assert!(theirs.revision > mine.revision);

    let started = Arc::new(AtomicBool::new(false));
    let cancel = CancellationToken::new();
    let run = {
        let started = started.clone();
        async move { started.store(true, Ordering::SeqCst) }
    };
    let (result, lease) = leases.keep(mine.clone(), "a", &timing, &cancel, run).await;
    assert_eq!(result, Err(LeaseLost));
    assert!(!started.load(Ordering::SeqCst), "the run never started");
    assert_eq!(lease, mine);
    // b's lease is untouched.
    let renewed = leases.renew(&theirs, "b").await.unwrap();
    assert!(renewed.revision > theirs.revision);
}

#[tokio::test]
async fn a_run_is_renewed_past_the_ttl_and_cancelled_when_the_lease_is_taken_over() {
    let (env, leases) = leases().await;
    let timing = LeaseTiming::new(TTL, Duration::ZERO).unwrap();

    // Kept for three TTLs: renewed all along, nobody else can take it.
    let lease = leases.try_acquire("apps.web", "a").await.unwrap().unwrap();
    let cancel = CancellationToken::new();
    let run = async {
        tokio::time::sleep(TTL * 3).await;
        leases.try_acquire("apps.web", "b").await.unwrap()
    };
    let (result, kept) = leases.keep(lease.clone(), "a", &timing, &cancel, run).await;
    assert_eq!(result, Ok(None), "b could not take a kept lease");
    assert!(kept.revision > lease.revision && kept.written_at > lease.written_at);
    assert!(!cancel.is_cancelled());
    leases.release(&kept).await.unwrap();

    // Taken over mid-run (an intruder writes the key): the run is cancelled, and keep returns
    // only once the run has ended.
    let lease = leases.try_acquire("apps.web", "a").await.unwrap().unwrap();
    let cancel = CancellationToken::new();
    let ended = Arc::new(AtomicBool::new(false));
    let kv = env.js.get_key_value(LEASES_BUCKET).await.unwrap();
    let run = {
        let (cancel, ended) = (cancel.clone(), ended.clone());
        async move {
            tokio::time::sleep(TTL / 2).await;
            kv.put("apps.web", "intruder".into()).await.unwrap();
            cancel.cancelled().await;
            ended.store(true, Ordering::SeqCst);
        }
    };
    let (result, _) = leases.keep(lease, "a", &timing, &cancel, run).await;
    assert_eq!(result, Err(LeaseLost));
    assert!(cancel.is_cancelled());
    assert!(
        ended.load(Ordering::SeqCst),
        "keep waited for the run to end"
    );
}

#[test]
fn a_lease_must_outlive_renewal_grace_and_margin() {
    let secs = Duration::from_secs;
    let timing = LeaseTiming::new(secs(30), secs(10)).unwrap();
    assert_eq!(
        (timing.renew_every, timing.margin),
        (secs(6), secs(3)),
        "renewed every fifth, a tenth of margin"
    );
    let written = tokio::time::Instant::now();
    assert_eq!(timing.cancel_at(written), written + secs(17));
    // 6 + 20 + 3 = 29 < 30; 6 + 21 + 3 = 30 is not enough.
    assert!(LeaseTiming::new(secs(30), secs(20)).is_ok());
    let refused = LeaseTiming::new(secs(30), secs(21)).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "the release lease TTL (30s, max_age of the helmq_leases bucket) must exceed the renewal period (6s) + --helm-grace (21s) + a margin of a tenth of the TTL (3s): lower --helm-grace or re-create the bucket with a longer max_age"
    );
    assert!(LeaseTiming::new(secs(3), secs(10)).is_err());
}
