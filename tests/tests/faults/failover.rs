//! Scenario 8, producer failover: two producers with `--leader-elect` over one in-memory API
//! server; the leader is killed during a burst of 300 new Components.
//!
//! Each producer runs the real `helmq_producer::run` (watcher mode, its own NATS connection) on
//! its own tokio runtime, whose threads are its own: the kill is
//! `Runtime::shutdown_background()`, which stops it mid-step without releasing the Lease,
//! draining or flushing anything, as SIGKILL does. No worker runs, so `HELMQ_JOBS` (a work
//! queue) still holds every job published when the jobs are counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::stream::BoxStream;
use helmq_producer::store::fake::{FakeComponentStore, FakeEventStore, FakeLeaseStore};
use helmq_producer::store::{Change, ComponentStore, Listing, Observed, StoreError};
use helmq_queue::topology::JOBS_STREAM;
use helmq_queue::{Connection, Topology};
use helmq_schemas::component::{Component, ComponentStatus, HELM_FINALIZER};
use helmq_schemas::event::JobEvent;
use helmq_tests::NatsServer;
use helmq_tests::faults::{Row, write_row};
use helmq_tests::wait::eventually;
use tokio_util::sync::CancellationToken;

use crate::support::{NAMESPACE, config_json, read_stream};

const COMPONENTS: usize = 300;
/// The Component after which the leader is killed.
const KILL_AFTER: usize = 100;
/// Pause between two new Components: the burst takes about three seconds.
const PACE: Duration = Duration::from_millis(10);
const LEASE_SECONDS: u64 = 3;
const LEASE_NAMESPACE: &str = "helmq-system";
const LEASE_NAME: &str = "helmq-producer";
const DEADLINE: Duration = Duration::from_secs(120);

/// The in-memory API server, counting each successful claim (finalizer added) per uid.
#[derive(Debug, Clone)]
struct ClaimCounting {
    inner: FakeComponentStore,
    claims: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
}

impl ClaimCounting {
    fn claims(&self) -> HashMap<String, Vec<Instant>> {
        self.claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ComponentStore for ClaimCounting {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Observed>, StoreError> {
        self.inner.get(namespace, name).await
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        self.inner.list().await
    }

    fn changes(&self) -> BoxStream<'static, Change> {
        self.inner.changes()
    }

    async fn add_finalizer(&self, component: &Component) -> Result<Observed, StoreError> {
        let claimed = self.inner.add_finalizer(component).await?;
        self.claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(claimed.meta().uid.clone().unwrap_or_default())
            .or_default()
            .push(Instant::now());
        Ok(claimed)
    }

    async fn remove_finalizer(
        &self,
        component: &Component,
    ) -> Result<Option<Observed>, StoreError> {
        self.inner.remove_finalizer(component).await
    }

    async fn patch_status(
        &self,
        component: &Component,
        status: &ComponentStatus,
    ) -> Result<Observed, StoreError> {
        self.inner.patch_status(component, status).await
    }
}

/// A producer process: the real producer loop on a runtime of its own.
struct Producer {
    name: &'static str,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Producer {
    fn start(name: &'static str, url: &str, store: ClaimCounting, leases: FakeLeaseStore) -> Self {
        let lease = format!("{LEASE_SECONDS}s");
        let args = helmq_producer::Args::try_parse_from([
            "helmq-producer",
            "--nats-url",
            url,
            "--mode",
            "watcher",
            "--leader-elect",
            "--leader-identity",
            name,
            "--lease-namespace",
            LEASE_NAMESPACE,
            "--lease-name",
            LEASE_NAME,
            "--lease-duration",
            &lease,
            "--listen",
            "127.0.0.1:0",
        ])
        .expect("producer flags");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("producer-{name}"))
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.spawn(async move {
            let connection = Connection::open(&args.service.nats, name)
                .await
                .expect("producer connects");
            // Never cancelled: the process runs until it is killed.
            let shutdown = CancellationToken::new();
            if let Err(error) = helmq_producer::run(
                &args,
                store,
                leases,
                FakeEventStore::new(),
                connection.jetstream(),
                shutdown,
            )
            .await
            {
                eprintln!("producer {name} stopped: {error}");
            }
        });
        Producer {
            name,
            runtime: Some(runtime),
        }
    }

    /// SIGKILL: every task stops where it is; nothing is released or flushed.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn holder(leases: &FakeLeaseStore) -> Option<String> {
    leases
        .snapshot(LEASE_NAMESPACE, LEASE_NAME)
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// The producer (by name) that holds the Lease, if any.
fn leader(leases: &FakeLeaseStore, producers: &[&'static str]) -> Option<&'static str> {
    let holder = holder(leases)?;
    producers
        .iter()
        .copied()
        .find(|name| holder.starts_with(&format!("{name}_")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: just faults"]
async fn producer_failover() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    Topology::default().ensure(&js).await.unwrap();

    let store = ClaimCounting {
        inner: FakeComponentStore::new(),
        claims: Arc::default(),
    };
    let leases = FakeLeaseStore::new();
    let names = ["a", "b"];
    let mut producers: Vec<Producer> = names
        .iter()
        .map(|name| Producer::start(name, server.url(), store.clone(), leases.connection()))
        .collect();
    let first = eventually(DEADLINE, "a producer to lead", async || {
        leader(&leases, &names)
    })
    .await;
    let survivor = names.iter().copied().find(|n| *n != first).unwrap();

    let mut killed_at = None;
    for i in 0..COMPONENTS {
        let name = format!("burst-{i:03}");
        let component = helmq_tests::build::component(&name)
            .namespace(NAMESPACE)
            .config(config_json(&name, serde_json::json!({})))
            .build();
        store.inner.create(component).unwrap();
        if i + 1 == KILL_AFTER {
            let leader = producers.iter_mut().find(|p| p.name == first).unwrap();
            leader.kill();
            killed_at = Some(Instant::now());
            eprintln!("killed producer {first} (the leader) after {KILL_AFTER} Components");
        }
        tokio::time::sleep(PACE).await;
    }
    let killed_at = killed_at.unwrap();
    let claims_before_kill = store
        .claims()
        .values()
        .filter(|at| at.iter().any(|t| *t < killed_at))
        .count();

    let takeover = eventually(DEADLINE, "the survivor to take the Lease", async || {
        (leader(&leases, &names) == Some(survivor)).then(|| killed_at.elapsed())
    })
    .await;
    eprintln!(
        "{survivor} took over {:.1} s after the kill",
        takeover.as_secs_f64()
    );

    // Every Component claimed and its job in HELMQ_JOBS.
    let uids: Vec<String> = (0..COMPONENTS)
        .map(|i| {
            store
                .inner
                .snapshot(NAMESPACE, &format!("burst-{i:03}"))
                .and_then(|c| c.metadata.uid)
                .unwrap()
        })
        .collect();
    eventually(DEADLINE, "a job for every Component", async || {
        let Some(payloads) = read_stream(&js, JOBS_STREAM).await else {
            return Err("HELMQ_JOBS cannot be read".to_owned());
        };
        let jobs: Vec<JobEvent> = payloads
            .iter()
            .map(|p| serde_json::from_slice(p).expect("a job"))
            .collect();
        let covered = uids
            .iter()
            .filter(|uid| jobs.iter().any(|j| j.component.uid.as_ref() == Some(uid)))
            .count();
        if covered == COMPONENTS {
            Ok(())
        } else {
            Err(format!("{covered} of {COMPONENTS} Components have a job"))
        }
    })
    .await;
    let recovered = killed_at.elapsed();
    // Anything the survivor would publish again for the Components it found already claimed
    // comes at its first listing: give stragglers a moment before the final count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let jobs: Vec<JobEvent> = read_stream(&js, JOBS_STREAM)
        .await
        .unwrap()
        .iter()
        .map(|p| serde_json::from_slice(p).expect("a job"))
        .collect();
    assert!(jobs.len() >= COMPONENTS, "{} jobs", jobs.len());
    drop(producers);

    let claims = store.claims();
    let mut per_job: HashMap<(String, i64), usize> = HashMap::new();
    for job in &jobs {
        *per_job
            .entry((
                job.component.uid.clone().unwrap_or_default(),
                job.component.generation,
            ))
            .or_default() += 1;
    }
    let claimed_twice: Vec<&String> = uids
        .iter()
        .filter(|uid| claims.get(*uid).map_or(0, Vec::len) > 1)
        .collect();
    let unclaimed: Vec<&String> = uids
        .iter()
        .filter(|uid| !claims.contains_key(*uid))
        .collect();
    let repeated_jobs: Vec<_> = per_job.iter().filter(|(_, n)| **n > 1).collect();
    let stale_jobs: Vec<_> = per_job.keys().filter(|(_, g)| *g != 1).collect();
    let finalizers_wrong: Vec<String> = (0..COMPONENTS)
        .map(|i| format!("burst-{i:03}"))
        .filter(|name| {
            let finalizers = store
                .inner
                .snapshot(NAMESPACE, name)
                .and_then(|c| c.metadata.finalizers)
                .unwrap_or_default();
            finalizers.iter().filter(|f| *f == HELM_FINALIZER).count() != 1
        })
        .collect();
    let first_survivor_claim = claims
        .values()
        .flatten()
        .filter(|t| **t > killed_at)
        .min()
        .map(|t| t.duration_since(killed_at));

    println!(
        "scenario 8: {COMPONENTS} Components, leader {first} killed after {KILL_AFTER} \
         ({claims_before_kill} claimed by then); {survivor} took the Lease {:.1} s later \
         (lease {LEASE_SECONDS} s), first claim by it {:.1} s after the kill, every job in \
         {:.1} s; {} jobs in HELMQ_JOBS, {} claims",
        takeover.as_secs_f64(),
        first_survivor_claim.map_or(f64::NAN, |d| d.as_secs_f64()),
        recovered.as_secs_f64(),
        jobs.len(),
        claims.values().map(Vec::len).sum::<usize>(),
    );

    let mut row = Row {
        scenario: 8,
        name: "Producer failover".into(),
        injected: format!(
            "two producers with --leader-elect; the leader killed (runtime dropped: no Lease \
             release, no drain) after {KILL_AFTER} of a burst of {COMPONENTS} new Components"
        ),
        jobs: jobs.len() as u64,
        releases: COMPONENTS as u64,
        lost: (COMPONENTS - per_job.len().min(COMPONENTS)) as u64,
        overlapping_runs: 0,
        duplicated_runs: repeated_jobs.len() as u64,
        duplicated_why: "none in HELMQ_JOBS: the survivor publishes again the jobs of the \
                         Components the dead leader had claimed (it cannot know they went out); \
                         their Nats-Msg-Id (uid, generation, action) makes the server drop the \
                         copies. No Helm runs in this scenario"
            .into(),
        recovery: format!(
            "takeover {:.1} s after the kill (lease {LEASE_SECONDS} s); every job published \
             {:.1} s after it",
            takeover.as_secs_f64(),
            recovered.as_secs_f64()
        ),
        test: "tests/tests/faults/failover.rs::producer_failover".into(),
        ..Row::default()
    };
    row.figures.insert(
        "claims before the kill".into(),
        claims_before_kill.to_string(),
    );
    row.figures.insert(
        "first claim by the survivor".into(),
        first_survivor_claim.map_or("none".into(), |d| format!("{:.1} s", d.as_secs_f64())),
    );
    write_row(&row);

    assert!(
        claimed_twice.is_empty(),
        "claimed more than once: {claimed_twice:?}"
    );
    assert!(unclaimed.is_empty(), "never claimed: {unclaimed:?}");
    assert!(
        finalizers_wrong.is_empty(),
        "not exactly one helm finalizer: {finalizers_wrong:?}"
    );
    assert!(
        repeated_jobs.is_empty(),
        "more than one job per (uid, generation) for {} Components, e.g. {:?}",
        repeated_jobs.len(),
        &repeated_jobs[..repeated_jobs.len().min(3)]
    );
    assert!(
        stale_jobs.is_empty(),
        "jobs for a generation other than 1: {stale_jobs:?}"
    );
    assert_eq!(per_job.len(), COMPONENTS);
}
