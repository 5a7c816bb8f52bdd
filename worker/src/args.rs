//! The worker's command line: one clap `Args` with `HELMQ_*` environment fallbacks, flattening
//! the NATS, logging and HTTP flags every service shares ([`helmq_telemetry::ServiceArgs`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use helmq_schemas::component::parse_duration_flag;

use crate::allowlist::{Allowlist, Refusal};
use crate::driver::HelmCliSettings;
use crate::policy::RetryPolicy;
use crate::settings::Settings;

/// Pulls Helm jobs from JetStream, runs `helm upgrade --install` / `helm uninstall` and
/// publishes status events.
#[derive(Debug, Clone, Parser)]
#[command(name = "helmq-worker", version, about)]
pub struct Args {
    /// NATS connection, logging and the operations endpoint.
    #[command(flatten)]
    pub service: helmq_telemetry::ServiceArgs,
    /// Create the streams, consumer and KV buckets when missing (off: an operator runs
    /// `helmqctl setup`).
    #[arg(long, env = "HELMQ_SETUP")]
    pub setup: bool,
    /// Jobs this process runs at once (one pulled message per free slot).
    #[arg(long, env = "HELMQ_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Running jobs of one tenant (a Component namespace) at once on this process; 0: no
    /// limit. Below `--concurrency`, one tenant's burst leaves slots free: they pull past its
    /// queued jobs to other tenants' (see `--max-parked`).
    #[arg(long, env = "HELMQ_TENANT_CONCURRENCY", default_value_t = 0)]
    pub tenant_concurrency: u16,
    /// Running drift checks at once on this process (default: a quarter of `--concurrency`, at
    /// least 1); applies and deletes always start before a waiting check.
    #[arg(long, env = "HELMQ_CHECK_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..))]
    pub check_concurrency: Option<u16>,
    /// Pulled jobs waiting on this process for their tenant's or class's turn (each kept alive
    /// with a Progress ack every third of the consumer's `ack_wait`) at which it stops pulling.
    /// Keep it at or below the consumer's `max_ack_pending` (1000).
    #[arg(long, env = "HELMQ_MAX_PARKED", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parked: u32,
    /// Attempts per job before a transient failure becomes final.
    #[arg(long, env = "HELMQ_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Delay before the second attempt (then doubling, with jitter), e.g. `1s`, `500ms`.
    #[arg(long, env = "HELMQ_RETRY_MIN_DELAY", default_value = "1s", value_parser = parse_duration_flag)]
    pub retry_min_delay: Duration,
    /// Longest delay between attempts.
    #[arg(long, env = "HELMQ_RETRY_MAX_DELAY", default_value = "60s", value_parser = parse_duration_flag)]
    pub retry_max_delay: Duration,
    /// Time running jobs get to finish after SIGTERM; the rest are returned to the queue.
    #[arg(long, env = "HELMQ_DRAIN_DEADLINE", default_value = "60s", value_parser = parse_duration_flag)]
    pub drain_deadline: Duration,
    /// Longest wait for a busy release before the job is returned to the queue.
    #[arg(long, env = "HELMQ_LEASE_WAIT", default_value = "60s", value_parser = parse_duration_flag)]
    pub lease_wait: Duration,
    /// Longest job timeout accepted (a Component's deploymentTimeout/terminationTimeout); a job
    /// asking for more is rejected with a dead letter. At most 24h.
    #[arg(long, env = "HELMQ_MAX_TIMEOUT", default_value = "1h", value_parser = parse_duration_flag)]
    pub max_timeout: Duration,
    /// How long a job retries one NATS operation (publishing a status, writing an intent, an
    /// ack) before giving up and leaving the message to be redelivered.
    #[arg(long, env = "HELMQ_NATS_PATIENCE", default_value = "2m", value_parser = parse_duration_flag)]
    pub nats_patience: Duration,
    /// The `helm` executable (Helm 3.14+ or 4).
    #[arg(long, env = "HELMQ_HELM_BIN", default_value = "helm")]
    pub helm_bin: PathBuf,
    /// Time a cancelled or timed-out helm (or kubectl) gets between SIGTERM, which lets Helm
    /// mark the release `failed`, and SIGKILL.
    #[arg(long, env = "HELMQ_HELM_GRACE", default_value = "10s", value_parser = parse_duration_flag)]
    pub helm_grace: Duration,
    /// `kubectl`, used to delete managed namespaces and to read OCI registry secrets; empty disables both.
    #[arg(long, env = "HELMQ_KUBECTL_BIN", default_value = "kubectl")]
    pub kubectl_bin: String,
    /// Kubeconfig handed to helm and kubectl (in-cluster config when absent).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Chart cache and Helm home directory, shared by all jobs of this process.
    #[arg(long, env = "HELMQ_CACHE_DIR", default_value = "/tmp/helmq-cache")]
    pub cache_dir: PathBuf,
    /// Allowed chart sources, comma-separated: `http(s)://host[:port]/path` or
    /// `oci://registry[:port]/path` prefixes, matched on scheme, host, port and whole path
    /// segments. Required unless `--allow-any-source`.
    #[arg(long, env = "HELMQ_ALLOWED_SOURCES", value_delimiter = ',')]
    pub allowed_sources: Vec<String>,
    /// Allow charts from any source (not recommended: whoever can publish a job chooses the
    /// chart). Logged as a warning and shown in `/metrics` (`helmq_worker_allow_any`).
    #[arg(
        long,
        env = "HELMQ_ALLOW_ANY_SOURCE",
        conflicts_with = "allowed_sources"
    )]
    pub allow_any_source: bool,
    /// Allowed release namespaces, comma-separated. Required unless `--allow-any-namespace`.
    #[arg(long, env = "HELMQ_ALLOWED_NAMESPACES", value_delimiter = ',')]
    pub allowed_namespaces: Vec<String>,
    /// Bound of the chart cache in bytes: least recently used charts no job uses are deleted
    /// beyond it. Keep it well below the cache volume's size.
    #[arg(long, env = "HELMQ_CHART_CACHE_MAX_BYTES", default_value_t = crate::driver::helm_cli::DEFAULT_CHART_CACHE_MAX_BYTES)]
    pub chart_cache_max_bytes: u64,
    /// Allow releases in any namespace (not recommended). Logged as a warning and shown in
    /// `/metrics` (`helmq_worker_allow_any`).
    #[arg(
        long,
        env = "HELMQ_ALLOW_ANY_NAMESPACE",
        conflicts_with = "allowed_namespaces"
    )]
    pub allow_any_namespace: bool,
    /// Namespaces whose Secrets any job may name for an OCI registry login, besides the job's
    /// own (the namespace of its subject and Component, also for a job without a uid).
    /// Default: none.
    #[arg(long, env = "HELMQ_ALLOWED_SECRET_NAMESPACES", value_delimiter = ',')]
    pub allowed_secret_namespaces: Vec<String>,
    /// The ServiceAccount every job without `config.serviceAccountName` runs as, in the job's
    /// Component namespace (impersonated: helm's `--kube-as-user`, kubectl's `--as`). Without
    /// it such jobs run Helm with the worker's own rights: single-tenant mode, logged as a
    /// warning and shown in `/metrics` (`helmq_worker_single_tenant`).
    #[arg(long, env = "HELMQ_DEFAULT_SERVICE_ACCOUNT", value_parser = parse_service_account)]
    pub default_service_account: Option<String>,
    /// Let jobs act on releases another Component or job owns, or that helmq never installed
    /// (not recommended: one tenant could then upgrade or uninstall another's release). For
    /// setups where several Components deliberately share a release. Logged as a warning and
    /// shown in `/metrics` (`helmq_worker_allow_any{what="shared-releases"}`).
    #[arg(long, env = "HELMQ_ALLOW_SHARED_RELEASES")]
    pub allow_shared_releases: bool,
    /// Worker id in status events and leases (default: hostname-pid).
    #[arg(long, env = "HELMQ_WORKER_ID")]
    pub worker_id: Option<String>,
}

/// A ServiceAccount name: a DNS-1123 subdomain.
fn parse_service_account(text: &str) -> Result<String, String> {
    if helmq_schemas::dns::is_subdomain(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a ServiceAccount name (a DNS-1123 subdomain)"
        ))
    }
}

impl Args {
    /// The worker id: `--worker-id`, else `<hostname>-<pid>`.
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = helmq_telemetry::instance_name("worker");
            format!("{host}-{}", std::process::id())
        })
    }

    /// The allowlist these flags describe: explicit lists, or "any" only where the operator
    /// said so.
    ///
    /// # Errors
    ///
    /// [`Refusal`] when a list is missing without its `--allow-any-*` flag, or an entry cannot be
    /// compared with.
    pub fn allowlist(&self) -> Result<Allowlist, Refusal> {
        let sources = non_empty(&self.allowed_sources);
        let namespaces = non_empty(&self.allowed_namespaces);
        if sources.is_empty() && !self.allow_any_source {
            return Err(Refusal::Missing {
                list: "--allowed-sources",
                any: "--allow-any-source",
            });
        }
        if namespaces.is_empty() && !self.allow_any_namespace {
            return Err(Refusal::Missing {
                list: "--allowed-namespaces",
                any: "--allow-any-namespace",
            });
        }
        Allowlist::new(
            (!self.allow_any_source).then_some(sources.as_slice()),
            (!self.allow_any_namespace).then_some(namespaces.as_slice()),
        )
    }

    /// The pool settings these flags describe, with `allowlist` (from [`Args::allowlist`]).
    pub fn settings(&self, allowlist: Allowlist) -> Settings {
        Settings {
            concurrency: usize::from(self.concurrency),
            max_attempts: self.max_attempts,
            retry: RetryPolicy {
                min: self.retry_min_delay,
                max: self.retry_max_delay.max(self.retry_min_delay),
                jitter: true,
            },
            allowlist,
            drain_deadline: self.drain_deadline,
            lease_wait: self.lease_wait,
            max_timeout: self.max_timeout.min(Duration::from_secs(
                helmq_schemas::event::MAX_TIMEOUT_SECONDS,
            )),
            nats_patience: self.nats_patience,
            default_service_account: self.default_service_account.clone(),
            allow_shared_releases: self.allow_shared_releases,
            tenant_concurrency: usize::from(self.tenant_concurrency),
            check_concurrency: self.check_concurrency.map(usize::from),
            max_parked: usize::try_from(self.max_parked).unwrap_or(usize::MAX),
            ..Settings::new(self.worker_id())
        }
    }

    /// The [`crate::driver::HelmCli`] settings these flags describe.
    pub fn helm(&self) -> HelmCliSettings {
        HelmCliSettings {
            kubeconfig: self.kubeconfig.clone(),
            kubectl_bin: (!self.kubectl_bin.trim().is_empty())
                .then(|| PathBuf::from(self.kubectl_bin.trim())),
            grace: self.helm_grace,
            allowed_secret_namespaces: non_empty(&self.allowed_secret_namespaces),
            chart_cache_max_bytes: self.chart_cache_max_bytes,
            ..HelmCliSettings::new(&self.helm_bin, &self.cache_dir)
        }
    }
}

fn non_empty(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_settings() {
        let args = Args::try_parse_from([
            "helmq-worker",
            "--concurrency",
            "8",
            "--allowed-sources",
            "https://charts.example.com/,oci://registry.example.com/",
            "--allowed-namespaces",
            "apps",
            "--kubectl-bin",
            "",
            "--worker-id",
            "w1",
            "--retry-min-delay",
            "2s",
            "--helm-grace",
            "3s",
        ])
        .unwrap();
        let settings = args.settings(args.allowlist().unwrap());
        assert_eq!(settings.concurrency, 8);
        assert_eq!(settings.worker_id, "w1");
        assert!(!settings.allowlist.any_source() && !settings.allowlist.any_namespace());
        assert_eq!(settings.retry.min, Duration::from_secs(2));
        assert_eq!(args.helm().kubectl_bin, None);
        assert_eq!(args.helm().grace, Duration::from_secs(3));
        let defaults = Args::try_parse_from(["helmq-worker"]).unwrap();
        assert_eq!(defaults.helm().grace, Duration::from_secs(10));
        assert!(Args::try_parse_from(["helmq-worker", "--concurrency", "0"]).is_err());
        // Single-tenant, exclusive releases unless told otherwise.
        let defaults = defaults.settings(Allowlist::any());
        assert_eq!(defaults.default_service_account, None);
        assert!(!defaults.allow_shared_releases);
    }

    #[test]
    fn fairness_flags_become_limits() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["helmq-worker"];
            argv.extend_from_slice(flags);
            Args::try_parse_from(argv).map(|args| args.settings(Allowlist::any()))
        };
        // No limits by default: one tenant may use every slot, as before fairness.
        let defaults = parse(&["--concurrency", "8"]).unwrap();
        assert_eq!(defaults.tenant_concurrency, 0);
        assert_eq!(defaults.check_limit(), 2);
        assert_eq!(defaults.max_parked, 1000);
        assert_eq!(parse(&["--concurrency", "2"]).unwrap().check_limit(), 1);
        let set = parse(&[
            "--tenant-concurrency",
            "2",
            "--check-concurrency",
            "3",
            "--max-parked",
            "50",
        ])
        .unwrap();
        assert_eq!(
            (set.tenant_concurrency, set.check_limit(), set.max_parked),
            (2, 3, 50)
        );
        assert!(parse(&["--check-concurrency", "0"]).is_err());
        assert!(parse(&["--max-parked", "0"]).is_err());
    }

    #[test]
    fn the_default_service_account_must_be_a_service_account_name() {
        let parse = |name: &str| {
            Args::try_parse_from(["helmq-worker", "--default-service-account", name])
                .map(|args| args.settings(Allowlist::any()).default_service_account)
        };
        assert_eq!(
            parse("helmq-deployer").unwrap().as_deref(),
            Some("helmq-deployer")
        );
        // It becomes part of `system:serviceaccount:<ns>:<name>`: nothing else may reach it.
        for bad in ["x:y", "Deployer", "", "-x"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn allowlists_are_required_unless_any_is_explicit() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["helmq-worker"];
            argv.extend_from_slice(flags);
            Args::try_parse_from(argv).unwrap().allowlist()
        };
        // Flags, then (any source, any namespace) or the start of the error.
        type Case<'a> = (&'a [&'a str], Result<(bool, bool), &'a str>);
        let cases: &[Case<'_>] = &[
            (&[], Err("no --allowed-sources")),
            (
                &["--allowed-namespaces", "apps"],
                Err("no --allowed-sources"),
            ),
            (
                &["--allowed-sources", "https://c.example/"],
                Err("no --allowed-namespaces"),
            ),
            (
                &["--allowed-sources", " , ", "--allowed-namespaces", "apps"],
                Err("no --allowed-sources"),
            ),
            (
                &[
                    "--allowed-sources",
                    "https://c.example/",
                    "--allowed-namespaces",
                    "apps",
                ],
                Ok((false, false)),
            ),
            (
                &["--allow-any-source", "--allowed-namespaces", "apps"],
                Ok((true, false)),
            ),
            (
                &[
                    "--allowed-sources",
                    "https://c.example/",
                    "--allow-any-namespace",
                ],
                Ok((false, true)),
            ),
            (
                &["--allow-any-source", "--allow-any-namespace"],
                Ok((true, true)),
            ),
            (
                &[
                    "--allowed-sources",
                    "c.example",
                    "--allowed-namespaces",
                    "apps",
                ],
                Err("--allowed-sources entry \"c.example\" is invalid"),
            ),
        ];
        for (flags, want) in cases {
            let got = parse(flags)
                .map(|a| (a.any_source(), a.any_namespace()))
                .map_err(|e| e.to_string());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{flags:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{flags:?}: {got}"),
                (got, want) => panic!("{flags:?}: got {got:?}, want {want:?}"),
            }
        }
        // A list and "any" for the same thing contradict each other.
        assert!(
            Args::try_parse_from([
                "helmq-worker",
                "--allowed-sources",
                "https://c.example/",
                "--allow-any-source"
            ])
            .is_err()
        );
    }
}
