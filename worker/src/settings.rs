//! The pool's settings: what the flags (or a test) decide about slots, attempts, limits,
//! patience and tenancy.

use std::time::Duration;

use helmq_telemetry::Readiness;

use crate::allowlist::Allowlist;
use crate::policy::RetryPolicy;

/// How the pool behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Worker id in status events and lease values.
    pub worker_id: String,
    /// Jobs at once.
    pub concurrency: usize,
    /// Attempts (deliveries) per job before a transient failure becomes final.
    pub max_attempts: u32,
    /// Delays between attempts.
    pub retry: RetryPolicy,
    /// Allowed chart sources and namespaces (any, by default: the binary always sets it from
    /// its required flags).
    pub allowlist: Allowlist,
    /// Time running jobs get to finish after shutdown starts.
    pub drain_deadline: Duration,
    /// Longest wait for a release lease before the job is given back with a short delay.
    pub lease_wait: Duration,
    /// How long one pull request waits for a job (also bounds how fast a slot notices shutdown).
    pub fetch_expires: Duration,
    /// Longest job timeout accepted; a job asking for more is rejected.
    pub max_timeout: Duration,
    /// How long a job keeps retrying one NATS operation (status publish, intent write,
    /// dead letter, ack) before it gives up and leaves the message to be redelivered.
    pub nats_patience: Duration,
    /// Where the pool reports that it cannot work any more (a slot or the advisory task ended
    /// on its own): `/readyz` turns red.
    pub health: Readiness,
    /// The ServiceAccount, in each job's Component namespace, that jobs without
    /// `config.serviceAccountName` run as (`--default-service-account`); `None` with no
    /// such field runs Helm with the worker's own rights (single-tenant mode).
    pub default_service_account: Option<String>,
    /// Act on releases whatever their owner labels say (`--allow-shared-releases`): several
    /// Components may then share one release, as the original controller allowed. Off by
    /// default: a job acts only on a release its own Component (or subject) owns.
    pub allow_shared_releases: bool,
    /// Running jobs of one tenant (a Component namespace) at once on this worker
    /// (`--tenant-concurrency`); 0: no limit.
    pub tenant_concurrency: usize,
    /// Running Background jobs (drift checks) at once on this worker (`--check-concurrency`);
    /// `None`: [`Settings::check_limit`]'s default.
    pub check_concurrency: Option<usize>,
    /// Deliveries waiting on this worker for their tenant's or class's turn at which its slots
    /// stop pulling (`--max-parked`).
    pub max_parked: usize,
}

impl Settings {
    /// Defaults for a worker called `worker_id`.
    pub fn new(worker_id: impl Into<String>) -> Settings {
        Settings {
            worker_id: worker_id.into(),
            concurrency: 4,
            max_attempts: 5,
            retry: RetryPolicy::default(),
            allowlist: Allowlist::any(),
            drain_deadline: Duration::from_secs(60),
            lease_wait: Duration::from_secs(60),
            fetch_expires: Duration::from_secs(2),
            max_timeout: Duration::from_secs(3600),
            nats_patience: Duration::from_secs(120),
            health: Readiness::default(),
            default_service_account: None,
            allow_shared_releases: false,
            tenant_concurrency: 0,
            check_concurrency: None,
            max_parked: 1000,
        }
    }

    /// Running Background jobs allowed at once: `check_concurrency`, else a quarter of the
    /// slots, at least one.
    pub fn check_limit(&self) -> usize {
        self.check_concurrency
            .unwrap_or_else(|| (self.concurrency / 4).max(1))
    }
}
