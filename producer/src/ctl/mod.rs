//! `helmqctl`: operator commands against the queue — set up the topology, show queue depth and
//! consumer state, list/show/replay/purge dead letters, publish a job from a YAML or JSON file
//! (for orchestrators and for trying things), and follow status events. Human-readable tables
//! by default, `-o json` for scripts.

mod render;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Context};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use helmq_queue::dlq::{self, StoredDeadLetter};
use helmq_queue::topology::{
    DLQ_STREAM, JOBS_STREAM, STATUS_STREAM, WORKERS_CONSUMER, WRITER_CONSUMER,
};
use helmq_queue::{JetStreamQueue, JobQueue, NatsArgs, Topology};
use helmq_schemas::event::{JOB_SCHEMA, JobEvent, StatusEvent};
use helmq_schemas::subject::{STATUS_PREFIX, encode_token};
use serde_json::{Value, json};

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
    /// A job file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A job file is not valid YAML or JSON.
    #[error("{path} is not valid YAML or JSON: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A job file does not match `helmq.job/v1`.
    #[error("{path} is not a valid {JOB_SCHEMA} job: {reason}")]
    InvalidJob {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No dead letter at that sequence.
    #[error("no dead letter at sequence {0} in {DLQ_STREAM} (see `helmqctl dlq list`)")]
    NoDeadLetter(u64),
    /// A JetStream request failed.
    #[error("cannot {action}: {reason}")]
    Request {
        /// What was being done.
        action: String,
        /// What the server or client said.
        reason: String,
    },
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// No usable kubeconfig.
    #[error("cannot load a kubeconfig (KUBECONFIG={kubeconfig}): {reason}")]
    Kubeconfig {
        /// The KUBECONFIG value, or `unset (~/.kube/config)`.
        kubeconfig: String,
        /// What the loader said.
        reason: String,
    },
    /// The cluster did not answer.
    #[error("no Kubernetes cluster reachable at {url}: {reason}")]
    Unreachable {
        /// The API server URL from the kubeconfig.
        url: String,
        /// What the client said.
        reason: String,
    },
}

fn request<E: std::fmt::Display>(action: impl Into<String>) -> impl FnOnce(E) -> CtlError {
    let action = action.into();
    move |e| CtlError::Request {
        action,
        reason: e.to_string(),
    }
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
    /// Follow status events.
    Watch {
        /// Only this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Only this Component (needs --namespace).
        #[arg(long, requires = "namespace")]
        name: Option<String>,
        /// Start this far back (e.g. 10m) instead of with new events.
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
    if let Command::Preflight { install_crd } = &args.command {
        let report = preflight(*install_crd).await?;
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
            let status = queue_status(js, workers_since).await?;
            render::status(out, output, &status)
        }
        Command::Dlq { command } => dlq_command(js, command, output, out).await,
        Command::Preflight { .. } => Ok(()),
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
        } => watch(js, namespace, name, since, count, output, out).await,
    }
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
        reason: e.to_string(),
    })?;
    let invalid = |reason: String| CtlError::InvalidJob {
        path: path.to_owned(),
        reason,
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
    if !object.contains_key("id") {
        // The same id the producer would give this job: uid (or namespace/name), generation, action.
        let part = |v: &Value, key: &str| v.get(key).cloned().unwrap_or(Value::Null);
        let component = part(&value, "component");
        let identity = match part(&component, "uid") {
            Value::String(uid) if !uid.is_empty() => uid,
            _ => format!(
                "{}/{}",
                part(&component, "namespace").as_str().unwrap_or_default(),
                part(&component, "name").as_str().unwrap_or_default()
            ),
        };
        let id = format!(
            "{identity}:{}:{}",
            part(&component, "generation"),
            part(&value, "action").as_str().unwrap_or_default()
        );
        if let Some(object) = value.as_object_mut() {
            object.insert("id".into(), Value::String(id));
        }
    }
    let bytes = serde_json::to_vec(&value).map_err(|e| invalid(e.to_string()))?;
    JobEvent::decode(&bytes).map_err(|e| invalid(e.to_string()))
}

/// One stream's numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamStatus {
    /// Stream name.
    pub name: String,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
}

/// One consumer's numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerStatus {
    /// Stream.
    pub stream: String,
    /// Consumer name.
    pub name: String,
    /// Messages not yet delivered (lag).
    pub pending: u64,
    /// Delivered, not yet acknowledged (in flight).
    pub in_flight: usize,
    /// Redelivered messages.
    pub redelivered: usize,
    /// Pull requests waiting (idle pullers).
    pub waiting: usize,
}

/// A worker seen in recent status events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerSeen {
    /// Worker id.
    pub worker: String,
    /// Events it published in the window.
    pub events: u64,
    /// When it was last heard from.
    pub last_seen: String,
}

/// What `helmqctl status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueStatus {
    /// The helmq streams present.
    pub streams: Vec<StreamStatus>,
    /// The helmq consumers present.
    pub consumers: Vec<ConsumerStatus>,
    /// Dead letters stored.
    pub dead_letters: u64,
    /// Workers seen in the window.
    pub workers: Vec<WorkerSeen>,
    /// Parts missing (setup not run).
    pub missing: Vec<String>,
}

async fn queue_status(js: &Context, workers_since: Duration) -> Result<QueueStatus, CtlError> {
    let mut status = QueueStatus {
        streams: Vec::new(),
        consumers: Vec::new(),
        dead_letters: 0,
        workers: Vec::new(),
        missing: Vec::new(),
    };
    for name in [JOBS_STREAM, STATUS_STREAM, DLQ_STREAM] {
        let Ok(mut stream) = js.get_stream(name).await else {
            status.missing.push(format!("stream {name}"));
            continue;
        };
        let info = stream
            .info()
            .await
            .map_err(request(format!("read stream {name}")))?;
        if name == DLQ_STREAM {
            status.dead_letters = info.state.messages;
        }
        status.streams.push(StreamStatus {
            name: name.into(),
            messages: info.state.messages,
            bytes: info.state.bytes,
        });
        let consumer = match name {
            JOBS_STREAM => WORKERS_CONSUMER,
            STATUS_STREAM => WRITER_CONSUMER,
            _ => continue,
        };
        match stream.consumer_info(consumer).await {
            Ok(info) => status.consumers.push(ConsumerStatus {
                stream: name.into(),
                name: consumer.into(),
                pending: info.num_pending,
                in_flight: info.num_ack_pending,
                redelivered: info.num_redelivered,
                waiting: info.num_waiting,
            }),
            Err(_) => status
                .missing
                .push(format!("consumer {consumer} on {name}")),
        }
    }
    if !status.missing.iter().any(|m| m.contains(STATUS_STREAM)) {
        status.workers = workers_seen(js, workers_since).await?;
    }
    Ok(status)
}

/// Distinct `worker` fields of the status events of the last `since`.
async fn workers_seen(js: &Context, since: Duration) -> Result<Vec<WorkerSeen>, CtlError> {
    const MAX_SCANNED: usize = 100_000;
    let stream = js
        .get_stream(STATUS_STREAM)
        .await
        .map_err(request("read the status stream"))?;
    let start = time::OffsetDateTime::now_utc() - since;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            name: Some(follower_name("status")),
            deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await
        .map_err(request("read the status stream"))?;
    let mut seen: std::collections::BTreeMap<String, WorkerSeen> = Default::default();
    let mut messages = consumer
        .messages()
        .await
        .map_err(request("read the status stream"))?;
    let mut scanned = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_millis(500), messages.next()).await;
        let Ok(Some(Ok(message))) = next else { break };
        scanned += 1;
        let pending = message.info().map(|i| i.pending).unwrap_or(0);
        if let Ok(event) = StatusEvent::decode(&message.payload)
            && event.worker != "producer"
        {
            let entry = seen.entry(event.worker.clone()).or_insert(WorkerSeen {
                worker: event.worker.clone(),
                events: 0,
                last_seen: String::new(),
            });
            entry.events += 1;
            entry.last_seen = event.at.to_string();
        }
        if pending == 0 || scanned >= MAX_SCANNED {
            break;
        }
    }
    Ok(seen.into_values().collect())
}

async fn dlq_command(
    js: &Context,
    command: DlqCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> Result<(), CtlError> {
    match command {
        DlqCommand::List { limit } => {
            let letters = list_dead_letters(js, limit).await?;
            render::dead_letters(out, output, &letters)
        }
        DlqCommand::Show { sequence } => {
            let letter = get_dead_letter(js, sequence).await?;
            render::dead_letter(out, output, &letter)
        }
        DlqCommand::Replay { sequences, all } => {
            let sequences = chosen(js, sequences, all).await?;
            let mut results = Vec::new();
            for sequence in sequences {
                let letter = get_dead_letter(js, sequence).await?;
                let republished = replay(js, &letter).await?;
                results.push(json!({
                    "dlqSequence": sequence,
                    "subject": letter.subject,
                    "streamSequence": republished,
                }));
            }
            render::replayed(out, output, &results)
        }
        DlqCommand::Purge { sequences, all } => {
            let stream = js
                .get_stream(DLQ_STREAM)
                .await
                .map_err(request("open the dead-letter stream"))?;
            let purged = if all {
                stream
                    .purge()
                    .await
                    .map_err(request("purge the dead-letter stream"))?
                    .purged
            } else {
                let mut purged = 0;
                for sequence in sequences {
                    stream
                        .delete_message(sequence)
                        .await
                        .map_err(|_| CtlError::NoDeadLetter(sequence))?;
                    purged += 1;
                }
                purged
            };
            render::purged(out, output, purged)
        }
    }
}

async fn chosen(js: &Context, sequences: Vec<u64>, all: bool) -> Result<Vec<u64>, CtlError> {
    if !all {
        return Ok(sequences);
    }
    Ok(list_dead_letters(js, usize::MAX)
        .await?
        .into_iter()
        .map(|l| l.dlq_sequence)
        .collect())
}

async fn list_dead_letters(js: &Context, limit: usize) -> Result<Vec<StoredDeadLetter>, CtlError> {
    let mut stream = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(request("open the dead-letter stream"))?;
    let state = stream
        .info()
        .await
        .map_err(request("read the dead-letter stream"))?
        .state
        .clone();
    let mut letters = Vec::new();
    if state.messages == 0 {
        return Ok(letters);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        if letters.len() >= limit {
            break;
        }
        // Deleted sequences (replayed or purged one by one) leave gaps.
        if let Ok(message) = stream.get_raw_message(sequence).await {
            letters.push(dlq::read_stored(
                sequence,
                Some(&message.headers),
                message.payload,
            ));
        }
    }
    Ok(letters)
}

async fn get_dead_letter(js: &Context, sequence: u64) -> Result<StoredDeadLetter, CtlError> {
    let stream = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(request("open the dead-letter stream"))?;
    let message = stream
        .get_raw_message(sequence)
        .await
        .map_err(|_| CtlError::NoDeadLetter(sequence))?;
    Ok(dlq::read_stored(
        sequence,
        Some(&message.headers),
        message.payload,
    ))
}

/// Publishes a dead letter's payload to its original subject, then removes it from the DLQ.
async fn replay(js: &Context, letter: &StoredDeadLetter) -> Result<u64, CtlError> {
    if letter.subject.is_empty() {
        return Err(CtlError::Request {
            action: format!("replay dead letter {}", letter.dlq_sequence),
            reason: "it records no original subject".into(),
        });
    }
    // A fresh id: the original dedupe id may still be inside the duplicate window.
    let message = PublishMessage::build()
        .payload(letter.payload.clone())
        .message_id(format!(
            "replay:{}:{}",
            letter.dlq_sequence,
            jiff::Timestamp::now()
        ));
    let ack = js
        .send_publish(letter.subject.clone(), message)
        .await
        .map_err(request(format!(
            "replay dead letter {}",
            letter.dlq_sequence
        )))?
        .await
        .map_err(request(format!(
            "replay dead letter {}",
            letter.dlq_sequence
        )))?;
    let stream = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(request("open the dead-letter stream"))?;
    stream
        .delete_message(letter.dlq_sequence)
        .await
        .map_err(request(format!(
            "remove replayed dead letter {}",
            letter.dlq_sequence
        )))?;
    Ok(ack.sequence)
}

#[allow(clippy::too_many_arguments)]
async fn watch(
    js: &Context,
    namespace: Option<String>,
    name: Option<String>,
    since: Option<Duration>,
    count: Option<usize>,
    output: Output,
    out: &mut (dyn Write + Send),
) -> Result<(), CtlError> {
    let filter = match (&namespace, &name) {
        (Some(ns), Some(name)) => {
            format!(
                "{STATUS_PREFIX}.{}.{}",
                encode_token(ns),
                encode_token(name)
            )
        }
        (Some(ns), None) => format!("{STATUS_PREFIX}.{}.*", encode_token(ns)),
        _ => format!("{STATUS_PREFIX}.>"),
    };
    let deliver_policy = match since {
        Some(since) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::now_utc() - since,
        },
        None => DeliverPolicy::New,
    };
    let stream = js
        .get_stream(STATUS_STREAM)
        .await
        .map_err(request("open the status stream"))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            name: Some(follower_name("watch")),
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(request("follow the status stream"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(request("follow the status stream"))?;
    render::watch_header(out, output)?;
    let mut shown = 0;
    while count.is_none_or(|c| shown < c) {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message.map_err(request("follow the status stream"))?;
        match StatusEvent::decode(&message.payload) {
            Ok(event) => render::status_event(out, output, &event)?,
            Err(e) => writeln!(
                out,
                "# skipped an unreadable event on {}: {e}",
                message.subject
            )?,
        }
        out.flush()?;
        shown += 1;
    }
    Ok(())
}

/// Checks the cluster from the current kubeconfig and, when asked, installs the CRD.
async fn preflight(install_crd: bool) -> Result<String, CtlError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, PostParams};

    let kubeconfig =
        std::env::var("KUBECONFIG").unwrap_or_else(|_| "unset (~/.kube/config)".into());
    let config = kube::Config::infer()
        .await
        .map_err(|e| CtlError::Kubeconfig {
            kubeconfig: kubeconfig.clone(),
            reason: e.to_string(),
        })?;
    let url = config.cluster_url.to_string();
    let unreachable = |e: kube::Error| CtlError::Unreachable {
        url: url.clone(),
        reason: e.to_string(),
    };
    let client = kube::Client::try_from(config).map_err(unreachable)?;
    let version = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
        .await
        .map_err(|_| CtlError::Unreachable {
            url: url.clone(),
            reason: "no answer within 10s".into(),
        })?
        .map_err(unreachable)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let crd = helmq_schemas::component::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    let present = crds.get_opt(&name).await.map_err(unreachable)?.is_some();
    let crd_state = match (present, install_crd) {
        (true, _) => "present".to_owned(),
        (false, true) => {
            crds.create(&PostParams::default(), &crd)
                .await
                .map_err(unreachable)?;
            "installed".to_owned()
        }
        (false, false) => {
            "missing (run with --install-crd, or kubectl apply -f deploy/crds/)".to_owned()
        }
    };
    Ok(format!(
        "cluster {url} (Kubernetes {}.{}) reachable; CRD {name} {crd_state}",
        version.major, version.minor
    ))
}

/// A unique name for an ordered consumer. Named creates can be told apart from the writer's
/// durable in NATS permissions (an unnamed create cannot), so orchestrators' users need no
/// right to the unnamed create subject (deploy/nats/helmq-accounts.conf).
pub fn follower_name(purpose: &str) -> String {
    let nanos = jiff::Timestamp::now().as_nanosecond();
    format!("helmqctl-{purpose}-{}-{nanos}", std::process::id())
}
