//! The producer's command line: one clap [`Args`] with `HELMQ_*` environment fallbacks,
//! flattening the shared NATS, logging and HTTP flag groups.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use helmq_schemas::component::parse_duration_flag;

use crate::producer::ProducerConfig;
use crate::writer::WriterConfig;

/// Watches `Component` resources, claims them and publishes Helm jobs to JetStream; applies
/// status events back to the Components.
#[derive(Debug, Clone, Parser)]
#[command(name = "helmq-producer", version, about)]
pub struct Args {
    /// NATS connection.
    #[command(flatten)]
    pub nats: helmq_queue::NatsArgs,
    /// Logging.
    #[command(flatten)]
    pub log: helmq_telemetry::LogArgs,
    /// Operations endpoint.
    #[command(flatten)]
    pub http: helmq_telemetry::HttpArgs,
    /// What this process runs: the watcher and the status writer (`all`), or one of them.
    #[arg(long, env = "HELMQ_MODE", value_enum, default_value_t = Mode::All)]
    pub mode: Mode,
    /// The `spec.handler` value this system answers to.
    #[arg(long, env = "HELMQ_HANDLER", default_value = helmq_schemas::component::DEFAULT_HANDLER)]
    pub handler: String,
    /// Namespaces to watch, comma-separated; all namespaces when empty.
    #[arg(long, env = "HELMQ_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// How often the watcher re-lists every Component to recover lost jobs (e.g. `5m`).
    #[arg(long, env = "HELMQ_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration_flag)]
    pub resync_interval: Duration,
    /// How long a published job may go unanswered before resync re-publishes it; default:
    /// the Component's own timeout plus one minute.
    #[arg(long, env = "HELMQ_RESYNC_GRACE", value_parser = parse_duration_flag)]
    pub resync_grace: Option<Duration>,
    /// Status messages the writer pulls per fetch.
    #[arg(long, env = "HELMQ_WRITER_BATCH", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub writer_batch: u16,
    /// Time the NATS connection gets to drain at shutdown.
    #[arg(long, env = "HELMQ_DRAIN_DEADLINE", default_value = "10s", value_parser = parse_duration_flag)]
    pub drain_deadline: Duration,
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
    pub fn producer_config(&self) -> ProducerConfig {
        ProducerConfig {
            handler: self.handler.clone(),
            resync_interval: self.resync_interval,
            resync_grace: self.resync_grace,
            ..ProducerConfig::default()
        }
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
        ])
        .unwrap();
        assert!(args.mode.writer() && !args.mode.watcher());
        assert_eq!(args.namespaces, ["a", "b"]);
        assert_eq!(
            args.producer_config().resync_grace,
            Some(Duration::from_secs(120))
        );
        let err = Args::try_parse_from(["helmq-producer", "--resync-interval", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a duration"), "{err}");
    }
}
