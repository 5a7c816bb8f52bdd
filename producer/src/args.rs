//! The producer's command line: one clap [`Args`] with `HELMQ_*` environment fallbacks,
//! flattening the NATS, logging and HTTP flags every service shares
//! ([`helmq_telemetry::ServiceArgs`]).

use std::time::Duration;

use clap::{Parser, ValueEnum};
use helmq_schemas::component::parse_duration_flag;

use crate::leader::ElectionConfig;
use crate::watcher::WatcherConfig;
use crate::writer::WriterConfig;

/// Watches `Component` resources, claims them and publishes Helm jobs to JetStream; applies
/// status events back to the Components.
#[derive(Debug, Clone, Parser)]
#[command(name = "helmq-producer", version, about)]
pub struct Args {
    /// NATS connection, logging and the operations endpoint.
    #[command(flatten)]
    pub service: helmq_telemetry::ServiceArgs,
    /// What this process runs: the watcher and the status writer (`all`), or one of them.
    #[arg(long, env = "HELMQ_MODE", value_enum, default_value_t = Mode::All)]
    pub mode: Mode,
    /// The `spec.handler` value this system answers to.
    #[arg(long, env = "HELMQ_HANDLER", default_value = helmq_schemas::component::DEFAULT_HANDLER)]
    pub handler: String,
    /// Namespaces to watch, comma-separated; all namespaces when empty.
    #[arg(long, env = "HELMQ_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Also watch Secrets labelled `helm.deployment-orchestrator.io/watch: "true"` (valuesFrom
    /// sources; labelled ConfigMaps are always watched). Needs list/watch on Secrets, which RBAC
    /// cannot limit to metadata; without it a labelled Secret's change waits for the resync.
    #[arg(long, env = "HELMQ_WATCH_SECRETS")]
    pub watch_secrets: bool,
    /// How often the watcher re-lists every Component to recover lost jobs (e.g. `5m`).
    #[arg(long, env = "HELMQ_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration_flag)]
    pub resync_interval: Duration,
    /// How long a published job may go unanswered before resync re-publishes it; default:
    /// the Component's own timeout plus one minute.
    #[arg(long, env = "HELMQ_RESYNC_GRACE", value_parser = parse_duration_flag)]
    pub resync_grace: Option<Duration>,
    /// Longest `deploymentTimeout`/`terminationTimeout` a Component may ask for (the workers'
    /// `--max-timeout`, same default); a Component asking for more is claimed and `Failed`
    /// with the reason instead of getting a job the workers would reject. At most 24h.
    #[arg(long, env = "HELMQ_MAX_TIMEOUT", default_value = "1h", value_parser = parse_duration_flag)]
    pub max_timeout: Duration,
    /// Status messages the writer pulls per fetch.
    #[arg(long, env = "HELMQ_WRITER_BATCH", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub writer_batch: u16,
    /// Time the NATS connection gets to drain at shutdown.
    #[arg(long, env = "HELMQ_DRAIN_DEADLINE", default_value = "10s", value_parser = parse_duration_flag)]
    pub drain_deadline: Duration,
    /// Run the watcher (claims, jobs, resync) only while this replica holds the leader Lease,
    /// so that several replicas never publish twice; the status writer runs regardless.
    #[arg(long, env = "HELMQ_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (the manifests set it to the pod's own namespace).
    #[arg(long, env = "HELMQ_LEASE_NAMESPACE", default_value = "helmq-system")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "HELMQ_LEASE_NAME", default_value = "helmq-producer")]
    pub lease_name: String,
    /// How long a leader's renewal holds (whole seconds, at least 1s); it renews every third
    /// and stops leading after two thirds without a renewal.
    #[arg(long, env = "HELMQ_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    pub lease_duration: Duration,
    /// This replica's name in the Lease (default: the host name, i.e. the pod name); a
    /// per-process suffix keeps two processes of one name from both leading.
    #[arg(long, env = "HELMQ_POD_NAME")]
    pub leader_identity: Option<String>,
}

/// A lease duration: a duration flag of at least one second (the Lease counts in seconds).
fn parse_lease_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_duration_flag(value)?;
    if duration < Duration::from_secs(1) {
        return Err(format!("{value:?} is shorter than the minimum lease of 1s"));
    }
    Ok(duration)
}

/// A suffix that differs between processes: the process id and the start time.
fn process_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{:x}{:08x}", std::process::id(), nanos)
}

/// Which loops run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The watcher and the status writer.
    All,
    /// Only the Component watcher (claims, jobs).
    Watcher,
    /// Only the status writer.
    Writer,
}

impl Mode {
    /// True when the watcher runs.
    pub fn watcher(self) -> bool {
        matches!(self, Mode::All | Mode::Watcher)
    }

    /// True when the writer runs.
    pub fn writer(self) -> bool {
        matches!(self, Mode::All | Mode::Writer)
    }
}

impl Args {
    /// The watch loop's settings.
    pub fn watcher_config(&self) -> WatcherConfig {
        WatcherConfig {
            handler: self.handler.clone(),
            resync_interval: self.resync_interval,
            resync_grace: self.resync_grace,
            max_timeout: self.max_timeout.min(Duration::from_secs(
                helmq_schemas::event::MAX_TIMEOUT_SECONDS,
            )),
            ..WatcherConfig::default()
        }
    }

    /// The leader election settings: identity `<name>_<per-process suffix>`.
    pub fn election_config(&self) -> ElectionConfig {
        let name = self.replica_name();
        ElectionConfig::new(
            self.lease_namespace.clone(),
            self.lease_name.clone(),
            format!("{name}_{}", process_suffix()),
            self.lease_duration,
        )
    }

    /// This replica's name (`--leader-identity`, default the host name, i.e. the pod name):
    /// its identity in the Lease, and the `reportingInstance` of the Events the writer records.
    pub fn replica_name(&self) -> String {
        self.leader_identity
            .clone()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| helmq_telemetry::instance_name("helmq-producer"))
    }

    /// The writer's settings.
    pub fn writer_config(&self) -> WriterConfig {
        WriterConfig {
            handler: self.handler.clone(),
            batch: usize::from(self.writer_batch),
            ..WriterConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags() {
        let args = Args::try_parse_from(["helmq-producer"]).unwrap();
        assert_eq!(args.mode, Mode::All);
        assert_eq!(args.handler, "helm");
        assert!(args.namespaces.is_empty());
        assert_eq!(args.resync_interval, Duration::from_secs(300));
        assert_eq!(args.resync_grace, None);
        assert_eq!(args.watcher_config().max_timeout, Duration::from_secs(3600));
        let args = Args::try_parse_from([
            "helmq-producer",
            "--mode",
            "writer",
            "--namespaces",
            "a,b",
            "--resync-interval",
            "30s",
            "--resync-grace",
            "2m",
            "--max-timeout",
            "48h",
        ])
        .unwrap();
        assert!(args.mode.writer() && !args.mode.watcher());
        assert_eq!(args.namespaces, ["a", "b"]);
        assert_eq!(
            args.watcher_config().resync_grace,
            Some(Duration::from_secs(120))
        );
        // Capped at the jobs' own limit, 24h.
        assert_eq!(
            args.watcher_config().max_timeout,
            Duration::from_secs(86_400)
        );
        let err = Args::try_parse_from(["helmq-producer", "--resync-interval", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a duration"), "{err}");
    }

    #[test]
    fn leader_election_flags() {
        let args = Args::try_parse_from(["helmq-producer"]).unwrap();
        assert!(!args.leader_elect);
        let election = args.election_config();
        assert_eq!(
            (election.namespace.as_str(), election.name.as_str()),
            ("helmq-system", "helmq-producer")
        );
        assert_eq!(election.lease_duration, Duration::from_secs(15));
        let args = Args::try_parse_from([
            "helmq-producer",
            "--leader-elect",
            "--lease-namespace",
            "ops",
            "--lease-name",
            "p",
            "--lease-duration",
            "30s",
            "--leader-identity",
            "pod-1",
        ])
        .unwrap();
        assert!(args.leader_elect);
        let (a, b) = (args.election_config(), args.election_config());
        assert_eq!((a.namespace.as_str(), a.name.as_str()), ("ops", "p"));
        assert_eq!(a.renew_interval, Duration::from_secs(10));
        assert!(a.identity.starts_with("pod-1_"), "{}", a.identity);
        assert!(b.identity.starts_with("pod-1_"), "{}", b.identity);
        let err = Args::try_parse_from(["helmq-producer", "--lease-duration", "500ms"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("minimum lease"), "{err}");
    }
}
