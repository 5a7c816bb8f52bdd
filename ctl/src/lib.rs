//! `helmqctl`: operator commands against the queue — set up the topology, show queue depth and
//! consumer state, list/show/replay/purge dead letters, publish a job from a YAML or JSON file
//! (for orchestrators and for trying things), follow status events, and check the cluster
//! before a local start, and make day-2 requests on a Component (reconcile now, suspend,
//! resume). Human-readable tables by default, `-o json` for scripts.
//!
//! A thin layer over [`helmq_queue`] and [`helmq_schemas`]: the dead-letter operations are
//! [`helmq_queue::dlq`]'s, job ids and subjects come from the schemas; what is left here is the
//! command line ([`Args`]), reading job files ([`load_job`]), the queue report
//! ([`status::QueueStatus`]), following status events ([`watch`]), the Kubernetes check
//! ([`preflight`]), the day-2 annotations ([`annotate`]) and the output (tables or JSON, [`Output`]).
// No production function over 80 lines of code (clippy.toml); tests may be longer tables.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod annotate;
pub mod preflight;
mod render;
pub mod status;
pub mod watch;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, Context};
use clap::{Parser, Subcommand};
use helmq_queue::dlq::{self, DlqError};
use helmq_queue::topology::STATUS_STREAM;
use helmq_queue::{JetStreamQueue, JobQueue, NatsArgs, Topology, request};
use helmq_schemas::event::{JOB_SCHEMA, JobEvent, default_job_id, issued_job_id, job_nonce};
use serde_json::Value;

pub use render::Output;

/// Errors of `helmqctl` commands; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Could not connect.
    #[error(transparent)]
    Connect(#[from] helmq_queue::ConnectError),
    /// Topology setup or lookup failed.
    #[error(transparent)]
    Topology(#[from] helmq_queue::TopologyError),
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] helmq_queue::PublishError),
    /// A dead-letter operation failed.
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// The cluster check failed.
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    /// A day-2 request failed.
    #[error(transparent)]
    Annotate(#[from] annotate::AnnotateError),
    /// A job file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A job file is not valid YAML or JSON.
    #[error("{path} is not valid YAML or JSON: {source}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: Box<serde_saphyr::Error>,
    },
    /// A job file does not match `helmq.job/v1`.
    #[error("{path} is not a valid {JOB_SCHEMA} job: {source}")]
    InvalidJob {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A JetStream request failed.
    #[error(transparent)]
    Request(#[from] helmq_queue::RequestError),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Operate a helmq installation.
#[derive(Debug, Parser)]
#[command(name = "helmqctl", version, about)]
pub struct Args {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `helmqctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the streams, consumers and KV buckets helmq needs (a no-op when present).
    Setup {
        /// Stream replicas (3 on a clustered server).
        #[arg(long, env = "HELMQ_REPLICAS", default_value_t = 1)]
        replicas: usize,
    },
    /// Queue depth, consumer lag and in-flight jobs, dead letters and the workers seen lately.
    Status {
        /// How far back to look for workers in the status events.
        #[arg(long, default_value = "15m", value_parser = helmq_schemas::component::parse_duration_flag)]
        workers_since: Duration,
    },
    /// Dead letters.
    Dlq {
        /// What to do with them.
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Validate a job file (YAML or JSON, `helmq.job/v1`) and publish it. `schema`, `id` and
    /// `requestedAt` may be left out; they are filled in.
    Publish {
        /// The job file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Validate only; publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check that a Kubernetes cluster is reachable (and install the Component CRD when it is
    /// missing, with --install-crd). Needs no NATS.
    Preflight {
        /// Create the Component CRD if the cluster does not have it.
        #[arg(long)]
        install_crd: bool,
    },
    /// Apply a Component's current generation again now, even with an unchanged spec (sets
    /// the annotation helm.deployment-orchestrator.io/requested-at). Needs no NATS.
    Reconcile {
        /// `<namespace>/<name>`.
        component: String,
    },
    /// Stop Helm runs for a Component until it is resumed (annotation
    /// helm.deployment-orchestrator.io/suspend: "true"); deleting it still uninstalls. Needs no
    /// NATS.
    Suspend {
        /// `<namespace>/<name>`.
        component: String,
    },
    /// Resume a suspended Component: it is reconciled at once. Needs no NATS.
    Resume {
        /// `<namespace>/<name>`.
        component: String,
    },
    /// Follow status events.
    Watch {
        /// Only this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Only this Component (needs --namespace).
        #[arg(long, requires = "namespace")]
        name: Option<String>,
        /// Start this far back (e.g. 10m) instead of with new events; a duration reaching
        /// back before 1970 starts with the oldest event kept.
        #[arg(long, value_parser = helmq_schemas::component::parse_duration_flag)]
        since: Option<Duration>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
}

/// `helmqctl dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter with its payload.
    Show {
        /// Its sequence in HELMQ_DLQ.
        sequence: u64,
    },
    /// Publish dead letters back to their original subject and remove them from the DLQ.
    Replay {
        /// Sequences to replay.
        #[arg(required_unless_present = "all")]
        sequences: Vec<u64>,
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "sequences")]
        all: bool,
    },
    /// Delete dead letters.
    Purge {
        /// Sequences to delete.
        #[arg(required_unless_present = "all")]
        sequences: Vec<u64>,
        /// Delete every dead letter.
        #[arg(long, conflicts_with = "sequences")]
        all: bool,
    },
}

/// Runs one command, writing what it reports to `out`.
pub async fn run(args: Args, out: &mut (dyn Write + Send)) -> Result<(), CtlError> {
    if let Command::Publish {
        file,
        dry_run: true,
    } = &args.command
    {
        let job = load_job(file)?;
        return render::published(out, args.output, &job, None);
    }
    let request = match &args.command {
        Command::Preflight { install_crd } => {
            let report = preflight::check(*install_crd).await?;
            writeln!(out, "{report}")?;
            return Ok(());
        }
        Command::Reconcile { component } => Some((component, annotate::Request::Reconcile)),
        Command::Suspend { component } => Some((component, annotate::Request::Suspend)),
        Command::Resume { component } => Some((component, annotate::Request::Resume)),
        _ => None,
    };
    if let Some((component, request)) = request {
        let report = annotate::annotate(component, request).await?;
        writeln!(out, "{report}")?;
        return Ok(());
    }
    let client = helmq_queue::connect(&args.nats, "helmqctl").await?;
    let js = jetstream::new(client.clone());
    let result = dispatch(&js, args, out).await;
    // Flush what was published before exiting.
    let _ = client.flush().await;
    result
}

async fn dispatch(js: &Context, args: Args, out: &mut (dyn Write + Send)) -> Result<(), CtlError> {
    let output = args.output;
    match args.command {
        Command::Setup { replicas } => {
            let topology = Topology {
                replicas,
                ..Topology::default()
            };
            let report = topology.ensure(js).await?;
            render::setup(out, output, &report)
        }
        Command::Status { workers_since } => {
            let status = status::queue_status(js, workers_since).await?;
            render::status(out, output, &status)
        }
        Command::Dlq { command } => dlq_command(js, command, output, out).await,
        Command::Preflight { .. }
        | Command::Reconcile { .. }
        | Command::Suspend { .. }
        | Command::Resume { .. } => Ok(()),
        Command::Publish { file, .. } => {
            let job = load_job(&file)?;
            let outcome = JetStreamQueue::new(js.clone()).publish_job(&job).await?;
            render::published(out, output, &job, Some(outcome))
        }
        Command::Watch {
            namespace,
            name,
            since,
            count,
        } => {
            let filter = watch::Filter {
                namespace,
                name,
                since,
                count,
            };
            watch::watch(js, &filter, output, out).await
        }
    }
}

/// Where to start reading a stream for "the last `since`", at `now`: by start time, or from
/// the first message when `since` reaches back before 1970 (or beyond what a date can hold),
/// since no stream holds anything older. Saturates instead of overflowing.
pub fn deliver_since(now: time::OffsetDateTime, since: Duration) -> DeliverPolicy {
    time::Duration::try_from(since)
        .ok()
        .and_then(|since| now.checked_sub(since))
        .filter(|start| *start >= time::OffsetDateTime::UNIX_EPOCH)
        .map_or(DeliverPolicy::All, |start_time| {
            DeliverPolicy::ByStartTime { start_time }
        })
}

/// Reads, fills in and validates a job file.
pub fn load_job(path: &Path) -> Result<JobEvent, CtlError> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|source| CtlError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    // YAML is a superset of JSON: one parser reads both.
    let mut value: Value = serde_saphyr::from_str(&text).map_err(|e| CtlError::Syntax {
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    let invalid = |source: Box<dyn std::error::Error + Send + Sync>| CtlError::InvalidJob {
        path: path.to_owned(),
        source,
    };
    let object = value
        .as_object_mut()
        .ok_or_else(|| invalid("expected a mapping at the top level".into()))?;
    object
        .entry("schema")
        .or_insert_with(|| Value::String(JOB_SCHEMA.into()));
    object
        .entry("requestedAt")
        .or_insert_with(|| Value::String(jiff::Timestamp::now().to_string()));
    // Without an id, the job gets the default one, `<uid>:<generation>:<action>`, once decoding
    // has checked the fields it is made of: publishing it again inside the duplicate window is
    // dropped. Without a uid the default id (`<namespace>/<name>:…`) could be guessed, and a
    // message another tenant published first with it as `Nats-Msg-Id` would make the server drop
    // this job: such jobs get a random nonce too (`<default id>:<nonce>`). (The producer's own
    // jobs add a nonce it records in the Component's status; a Component changes only on
    // answers to those.)
    let without_id = !object.contains_key("id");
    if without_id {
        object.insert("id".into(), Value::String("-".into()));
    }
    let bytes = serde_json::to_vec(&value).map_err(|e| invalid(e.into()))?;
    let mut job = JobEvent::decode(&bytes).map_err(|e| invalid(e.into()))?;
    if without_id {
        job.id = match job.component.uid {
            Some(_) => default_job_id(&job.component, job.action),
            None => issued_job_id(
                &job.component,
                job.action,
                &job_nonce().map_err(|e| invalid(e.to_string().into()))?,
            ),
        };
    }
    Ok(job)
}

async fn dlq_command(
    js: &Context,
    command: DlqCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> Result<(), CtlError> {
    match command {
        DlqCommand::List { limit } => {
            let letters = dlq::list(js, limit).await?;
            render::dead_letters(out, output, &letters)
        }
        DlqCommand::Show { sequence } => {
            let letter = dlq::get(js, sequence).await?;
            render::dead_letter(out, output, &letter)
        }
        DlqCommand::Replay { sequences, all } => {
            let sequences = if all {
                dlq::list(js, usize::MAX)
                    .await?
                    .iter()
                    .map(|l| l.dlq_sequence)
                    .collect()
            } else {
                sequences
            };
            let mut replayed = Vec::new();
            for sequence in sequences {
                replayed.push(dlq::replay(js, sequence).await?);
            }
            render::replayed(out, output, &replayed)
        }
        DlqCommand::Purge { sequences, all } => {
            let purged = if all {
                dlq::purge_all(js).await?
            } else {
                dlq::purge(js, &sequences).await?
            };
            render::purged(out, output, purged)
        }
    }
}

/// The messages of a new ordered consumer of the status stream made with `config`, named
/// [`follower_name`] of `purpose`. Errors say `open` when the stream cannot be read, `follow`
/// when the consumer cannot be made or read.
async fn follow_status(
    js: &Context,
    purpose: &str,
    config: pull::OrderedConfig,
    (open, follow): (&str, &str),
) -> Result<pull::Ordered, CtlError> {
    let stream = js.get_stream(STATUS_STREAM).await.map_err(request(open))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            name: Some(follower_name(purpose)),
            ..config
        })
        .await
        .map_err(request(follow))?;
    Ok(consumer.messages().await.map_err(request(follow))?)
}

/// A unique name for an ordered consumer. Named creates can be told apart from the writer's
/// durable in NATS permissions (an unnamed create cannot), so orchestrators' users need no
/// right to the unnamed create subject (deploy/nats/helmq-accounts.conf).
pub fn follower_name(purpose: &str) -> String {
    let nanos = jiff::Timestamp::now().as_nanosecond();
    format!("helmqctl-{purpose}-{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_saturates_at_the_oldest_event() {
        let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let hours = |h: u64| Duration::from_secs(h * 3600);
        let cases = [
            ("1h", hours(1), Some(now - time::Duration::hours(1))),
            (
                "to the epoch",
                hours(20_000 * 24),
                Some(time::OffsetDateTime::UNIX_EPOCH),
            ),
            ("before the epoch", hours(20_000 * 24 + 1), None),
            ("200000000h", hours(200_000_000), None),
            ("beyond any date", Duration::MAX, None),
        ];
        for (name, since, want) in cases {
            let got = deliver_since(now, since);
            let want = want.map_or(DeliverPolicy::All, |start_time| {
                DeliverPolicy::ByStartTime { start_time }
            });
            assert_eq!(got, want, "{name}");
        }
    }
}
