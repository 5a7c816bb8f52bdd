//! The worker's Prometheus metrics: jobs by outcome, job and Helm durations, Helm failures by
//! cause, jobs in flight, retries, dead letters, lease waits, NATS operations retried, open
//! allowlists, and the fair scheduler's parked deliveries.

use helmq_telemetry::register_all;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a job (one delivery) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Applied or deleted.
    Succeeded,
    /// Failed transiently; redelivered later.
    Retried,
    /// Failed for good (permanent or budget spent): dead-lettered.
    Failed,
    /// Rejected as bad input: dead-lettered.
    Rejected,
    /// A newer generation exists: acked without running Helm.
    Superseded,
    /// Already done: its status published again.
    Duplicate,
    /// Given back to the stream (shutdown, lease wait too long, lease lost).
    Requeued,
}

impl JobOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Succeeded => "succeeded",
            JobOutcome::Retried => "retried",
            JobOutcome::Failed => "failed",
            JobOutcome::Rejected => "rejected",
            JobOutcome::Superseded => "superseded",
            JobOutcome::Duplicate => "duplicate",
            JobOutcome::Requeued => "requeued",
        }
    }
}

type Labels = Vec<(&'static str, &'static str)>;

/// The metrics, registered once and shared by every job.
#[derive(Debug, Clone)]
pub struct Metrics {
    jobs: Family<Labels, Counter>,
    /// Seconds from receiving a job to acking it.
    pub job_duration: Histogram,
    /// Seconds spent in Helm per job.
    pub helm_duration: Histogram,
    /// Jobs being processed.
    pub in_flight: Gauge,
    /// Transient failures sent back for a retry.
    pub retries: Counter,
    /// Jobs copied to the dead-letter stream.
    pub dead_letters: Counter,
    /// Jobs that had to wait for a release lease.
    pub lease_waits: Counter,
    /// NATS operations of a job (status publish, intent write, ack, dead letter) that failed
    /// and were retried: non-zero while the connection is down.
    pub nats_retries: Counter,
    /// Jobs whose handling panicked (each dead-lettered with reason `panic: ...`).
    pub panics: Counter,
    /// Helm runs that failed, by cause (`other` when it is none of the common ones).
    helm_failures: Family<Labels, Counter>,
    /// 1 for each allowlist the operator opened with `--allow-any-*` (`what`: `source`,
    /// `namespace`) and for `--allow-shared-releases` (`shared-releases`), else 0.
    allow_any: Family<Labels, Gauge>,
    /// 1 when jobs without `config.serviceAccountName` run Helm with the worker's own rights
    /// (no `--default-service-account`), else 0.
    single_tenant: Gauge,
    /// Drift checks by what they found (`clean`, `drifted`, `corrected`, `failed`).
    drift_checks: Family<Labels, Counter>,
    /// Objects drift checks found drifted.
    drifted_objects: Counter,
    /// Deliveries parked, waiting for their tenant's or class's turn.
    pub parked: Gauge,
    /// Deliveries that had to park, by why (`tenant-limit`, `check-limit`).
    parked_jobs: Family<Labels, Counter>,
    /// Seconds from a delivery's arrival at the worker to its job's start.
    pub start_wait: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them under `helmq_worker_*`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            jobs: Family::default(),
            job_duration: Histogram::new(exponential_buckets(0.005, 2.5, 14)),
            helm_duration: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            in_flight: Gauge::default(),
            retries: Counter::default(),
            dead_letters: Counter::default(),
            lease_waits: Counter::default(),
            nats_retries: Counter::default(),
            panics: Counter::default(),
            helm_failures: Family::default(),
            allow_any: Family::default(),
            single_tenant: Gauge::default(),
            drift_checks: Family::default(),
            drifted_objects: Counter::default(),
            parked: Gauge::default(),
            parked_jobs: Family::default(),
            start_wait: Histogram::new(exponential_buckets(0.000_1, 4.0, 12)),
        };
        let sub = registry.sub_registry_with_prefix("helmq_worker");
        metrics.register_jobs(sub);
        metrics.register_settings(sub);
        metrics.register_fairness(sub);
        metrics.register_drift(sub);
        metrics
    }

    /// The fair scheduler: why deliveries parked (`sub`: `helmq_worker_`).
    fn register_fairness(&self, sub: &mut Registry) {
        register_labelled(
            sub,
            (
                "parked_jobs",
                "Deliveries that parked because their tenant (--tenant-concurrency) or class (--check-concurrency) was at its limit",
            ),
            &self.parked_jobs,
            "reason",
            [
                crate::fair::Wait::TenantLimit,
                crate::fair::Wait::CheckLimit,
            ]
            .map(|w| w.as_str()),
        );
    }

    /// Counts a delivery that parked for `wait`.
    pub(crate) fn parked_for(&self, wait: crate::fair::Wait) {
        self.parked_jobs
            .get_or_create(&vec![("reason", wait.as_str())])
            .inc();
    }

    /// Deliveries that parked for `reason` (`tenant-limit`, `check-limit`) so far.
    pub fn parked_with(&self, reason: &'static str) -> u64 {
        self.parked_jobs
            .get_or_create(&vec![("reason", reason)])
            .get()
    }

    /// What the jobs do: outcomes, durations, retries, failures (`sub`: `helmq_worker_`).
    fn register_jobs(&self, sub: &mut Registry) {
        let metrics = self;
        sub.register("jobs", "Jobs (deliveries) by outcome", metrics.jobs.clone());
        register_all(
            sub,
            [
                (
                    "job_duration_seconds",
                    "Time from receiving a job to settling it",
                    &metrics.job_duration,
                ),
                (
                    "helm_duration_seconds",
                    "Time spent running Helm for a job",
                    &metrics.helm_duration,
                ),
                (
                    "start_wait_seconds",
                    "Time from a delivery's arrival at the worker to its job's start",
                    &metrics.start_wait,
                ),
            ],
        );
        register_all(
            sub,
            [
                ("jobs_in_flight", "Jobs being processed", &metrics.in_flight),
                (
                    "parked",
                    "Deliveries parked on this worker, waiting for their tenant's or class's turn",
                    &metrics.parked,
                ),
            ],
        );
        register_all(
            sub,
            [
                ("retries", "Transient failures retried", &metrics.retries),
                (
                    "dead_letters",
                    "Jobs moved to the dead-letter stream",
                    &metrics.dead_letters,
                ),
                (
                    "lease_waits",
                    "Jobs that waited for another job on the same release",
                    &metrics.lease_waits,
                ),
                (
                    "nats_retries",
                    "NATS operations of a job that failed and were retried",
                    &metrics.nats_retries,
                ),
                (
                    "panics",
                    "Jobs whose handling panicked; each was dead-lettered",
                    &metrics.panics,
                ),
            ],
        );
        register_labelled(
            sub,
            ("helm_failures", "Helm runs that failed, by cause"),
            &metrics.helm_failures,
            "cause",
            crate::failure::Cause::LABELS
                .iter()
                .copied()
                .chain(["other"]),
        );
    }

    /// What drift checks found (`sub`: `helmq_worker_`).
    fn register_drift(&self, sub: &mut Registry) {
        register_labelled(
            sub,
            (
                "drift_checks",
                "Drift checks by what they found: clean, drifted (reported), corrected, or failed (could not compare or correct)",
            ),
            &self.drift_checks,
            "outcome",
            ["clean", "drifted", "corrected", "failed"],
        );
        sub.register(
            "drifted_objects",
            "Objects drift checks found drifted",
            self.drifted_objects.clone(),
        );
    }

    /// What the operator configured: open allowlists, single-tenant mode (`sub`:
    /// `helmq_worker_`).
    fn register_settings(&self, sub: &mut Registry) {
        let metrics = self;
        sub.register(
            "allow_any",
            "1 where the operator allowed any chart source or namespace (--allow-any-*) or shared releases (--allow-shared-releases)",
            metrics.allow_any.clone(),
        );
        sub.register(
            "single_tenant",
            "1 when jobs without config.serviceAccountName run Helm with the worker's own rights (no --default-service-account)",
            metrics.single_tenant.clone(),
        );
    }

    /// Shows in `helmq_worker_single_tenant` whether jobs may run as the worker itself.
    pub fn single_tenant(&self, default_service_account: Option<&str>) {
        self.single_tenant
            .set(i64::from(default_service_account.is_none()));
    }

    /// Shows in `helmq_worker_allow_any` which allowlists are open, and whether releases may
    /// be shared (`--allow-shared-releases`).
    pub fn allow_any(&self, allowlist: &crate::allowlist::Allowlist, shared_releases: bool) {
        for (what, open) in [
            ("source", allowlist.any_source()),
            ("namespace", allowlist.any_namespace()),
            ("shared-releases", shared_releases),
        ] {
            self.allow_any
                .get_or_create(&vec![("what", what)])
                .set(i64::from(open));
        }
    }

    /// Counts a failed Helm run with this cause.
    pub fn helm_failure(&self, cause: Option<&crate::failure::Cause>) {
        let cause = cause.map_or("other", crate::failure::Cause::label);
        self.helm_failures
            .get_or_create(&vec![("cause", cause)])
            .inc();
    }

    /// Counts a drift check and the objects it found drifted.
    pub fn drift_check(&self, report: &helmq_schemas::event::DriftReport) {
        let outcome = match (report.failed, report.drifted, report.corrected) {
            (true, ..) => "failed",
            (false, 0, _) => "clean",
            (false, _, false) => "drifted",
            (false, _, true) => "corrected",
        };
        self.drift_checks
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
        self.drifted_objects.inc_by(u64::from(report.drifted));
    }

    /// Counts a finished job.
    pub fn job(&self, outcome: JobOutcome) {
        self.jobs
            .get_or_create(&vec![("outcome", outcome.as_str())])
            .inc();
    }

    /// Jobs counted with `outcome` so far.
    pub fn jobs_with(&self, outcome: JobOutcome) -> u64 {
        self.jobs
            .get_or_create(&vec![("outcome", outcome.as_str())])
            .get()
    }
}

/// Registers `family` (`name`, `help`) with every value of its label `key` at 0 from the start,
/// so that a panel or alert over them has a series to show.
fn register_labelled(
    sub: &mut Registry,
    (name, help): (&str, &str),
    family: &Family<Labels, Counter>,
    key: &'static str,
    values: impl IntoIterator<Item = &'static str>,
) {
    for value in values {
        family.get_or_create(&vec![(key, value)]).inc_by(0);
    }
    sub.register(name, help, family.clone());
}
