//! The two messages on the wire: [`JobEvent`] (`helmq.job/v1`, producer or orchestrator →
//! workers) and [`StatusEvent`] (`helmq.status/v1`, workers and producer → writer and
//! orchestrators), their dedupe ids and the order key that lets a consumer drop stale events.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, HelmConfig, kind};
use crate::dns;

/// The `schema` value of every [`JobEvent`] this build reads and writes.
pub const JOB_SCHEMA: &str = "helmq.job/v1";
/// The `schema` value of every [`StatusEvent`] this build reads and writes.
pub const STATUS_SCHEMA: &str = "helmq.status/v1";
/// Largest encoded job or status event accepted (NATS' default `max_payload` is 1 MiB).
pub const MAX_EVENT_BYTES: usize = 512 * 1024;
/// Largest `component.generation` accepted: 2^53, the largest integer every JSON reader keeps
/// exactly. Kubernetes starts generations at 1 and adds 1 per spec change, so a real Component
/// never comes near it; a job beyond it could only block its Component's later generations.
pub const MAX_GENERATION: i64 = 1 << 53;
/// Longest timeout a job may carry (24 hours); each worker may accept less (`--max-timeout`).
pub const MAX_TIMEOUT_SECONDS: u64 = 24 * 3600;
/// Length of a uid: an RFC 4122 UUID in its canonical text form, as Kubernetes writes
/// `metadata.uid` (`8-4-4-4-12` lowercase hex digits).
pub const UID_LEN: usize = 36;
/// Longest job id, worker id and chart version.
pub const MAX_ID_LEN: usize = 256;
/// Longest status message; longer texts (Helm's stderr can be long) are cut when the event is
/// made.
pub const MAX_MESSAGE_LEN: usize = 8 * 1024;
/// Longest Helm release name (Helm's own limit).
pub const MAX_RELEASE_NAME_LEN: usize = 53;
/// How the message of a `Ready` event starts when the worker first recovered a release that a
/// crashed run left pending (`recovered release <name> from <status> by ...`, then `; ` and the
/// rest); the writer records a `Recovered` Kubernetes Event for it.
pub const RECOVERED_PREFIX: &str = "recovered release ";
/// Timeout of a job that names none: the original's 5 minute default.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

/// Why a payload is not an acceptable event. Every variant says what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// Over [`MAX_EVENT_BYTES`].
    #[error("payload is {size} bytes, over the {limit} byte limit")]
    TooLarge {
        /// Size of the payload.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not JSON, or JSON that does not match the schema.
    #[error("malformed {schema} payload: {reason}")]
    Malformed {
        /// The schema the payload was read as.
        schema: &'static str,
        /// What the decoder found.
        reason: String,
    },
    /// No `schema` field.
    #[error("payload has no schema field (expected {expected})")]
    MissingSchema {
        /// The schema this build reads.
        expected: &'static str,
    },
    /// A `schema` other than the one this build reads.
    #[error("unknown schema {found:?} (this build reads {expected})")]
    UnknownSchema {
        /// The schema in the payload.
        found: String,
        /// The schema this build reads.
        expected: &'static str,
    },
    /// A job whose Helm config fails validation.
    #[error("invalid helm config: {0}")]
    InvalidConfig(#[from] ConfigError),
}

/// The Component (or orchestrator-defined target) an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentRef {
    /// Namespace of the Component: a DNS label.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: String,
    /// Name of the Component: a DNS subdomain.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// `metadata.uid`, an RFC 4122 UUID (`8-4-4-4-12` lowercase hex digits); orchestrators
    /// publishing without a Component may omit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 36, max = 36),
        regex(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    )]
    pub uid: Option<String>,
    /// `metadata.generation` the event is for: 1 to 2^53.
    #[schemars(range(min = 1, max = MAX_GENERATION))]
    pub generation: i64,
}

impl ComponentRef {
    /// A stable key for the target: its uid, or `namespace/name` when it has none.
    pub fn identity(&self) -> String {
        match &self.uid {
            Some(uid) if !uid.is_empty() => uid.clone(),
            _ => format!("{}/{}", self.namespace, self.name),
        }
    }

    fn check(&self, schema: &'static str) -> Result<(), EventError> {
        let malformed = |reason: String| EventError::Malformed { schema, reason };
        if self.namespace.trim().is_empty() {
            return Err(malformed("component.namespace is required".into()));
        }
        if self.name.trim().is_empty() {
            return Err(malformed("component.name is required".into()));
        }
        if !dns::is_label(&self.namespace) {
            return Err(malformed(format!(
                "component.namespace must be a DNS label (lowercase letters, digits and '-', at most 63 characters), got {}",
                quoted(&self.namespace)
            )));
        }
        if !dns::is_subdomain(&self.name) {
            return Err(malformed(format!(
                "component.name must be a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters), got {}",
                quoted(&self.name)
            )));
        }
        if let Some(uid) = &self.uid
            && !is_uid(uid)
        {
            return Err(malformed(format!(
                "component.uid must be an RFC 4122 UUID (8-4-4-4-12 lowercase hex digits, as in metadata.uid), got {}",
                quoted(uid)
            )));
        }
        // Kubernetes starts generations at 1: 0 names no generation of anything.
        if !(1..=MAX_GENERATION).contains(&self.generation) {
            return Err(malformed(format!(
                "component.generation must be between 1 and {MAX_GENERATION} (2^53), got {}",
                self.generation
            )));
        }
        Ok(())
    }
}

/// An RFC 4122 UUID in canonical form: hex groups of 8, 4, 4, 4 and 12 lowercase digits.
pub fn is_uid(uid: &str) -> bool {
    uid.len() == UID_LEN
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// `text` quoted for an error message: escaped (no line breaks reach a log or a header) and cut
/// after 64 characters, so a hostile field cannot make the message large.
fn quoted(text: &str) -> String {
    const SHOWN: usize = 64;
    let mut shown: String = text.chars().take(SHOWN).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// A free-text field of at most `max` bytes without control characters (they would break a
/// NATS header or a log line).
fn check_text(schema: &'static str, field: &str, text: &str, max: usize) -> Result<(), EventError> {
    let reason = if text.len() > max {
        format!("{field} is {} bytes, over the {max} byte limit", text.len())
    } else if text.chars().any(char::is_control) {
        format!(
            "{field} must not contain control characters, got {}",
            quoted(text)
        )
    } else {
        return Ok(());
    };
    Err(EventError::Malformed { schema, reason })
}

/// What a job asks for.
// The derived order (apply < delete) is the order inside one generation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum JobAction {
    /// `helm upgrade --install`.
    Apply,
    /// `helm uninstall`.
    Delete,
}

impl JobAction {
    /// The wire name (`apply` or `delete`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobAction::Apply => "apply",
            JobAction::Delete => "delete",
        }
    }
}

/// A deployment job: apply or delete the Helm release of one Component generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "helmq.job/v1")]
pub struct JobEvent {
    /// Always `helmq.job/v1`.
    #[schemars(extend("const" = JOB_SCHEMA))]
    pub schema: String,
    /// Job id. The producer's: `<uid>:<generation>:<action>:<nonce>`, the one it recorded in
    /// the Component's `status.handlerStatus.issuedJob`; without an issued job, by convention
    /// `<uid>:<generation>:<action>`.
    #[schemars(length(min = 1, max = 256))]
    pub id: String,
    /// Apply or delete.
    pub action: JobAction,
    /// The target Component and generation.
    pub component: ComponentRef,
    /// The normalized Helm config (the source form of `spec.config`).
    pub config: HelmConfig,
    /// Deployment or termination timeout, in seconds: 1 to 86400 (24 hours).
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = MAX_TIMEOUT_SECONDS))]
    pub timeout_seconds: u64,
    /// When the job was requested (RFC 3339).
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub requested_at: Timestamp,
}

fn default_timeout_seconds() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}

impl JobEvent {
    /// A job whose `id` is [`default_job_id`] (set `id` to an issued one where there is one).
    pub fn new(
        action: JobAction,
        component: ComponentRef,
        config: HelmConfig,
        timeout_seconds: u64,
        requested_at: Timestamp,
    ) -> Self {
        let id = default_job_id(&component, action);
        JobEvent {
            schema: JOB_SCHEMA.to_owned(),
            id,
            action,
            component,
            config,
            timeout_seconds,
            requested_at,
        }
    }

    /// The `Nats-Msg-Id`: stable per (uid, generation, action), so a republish of the same
    /// intent inside the duplicate window is dropped by the server. It is the job's `id` when
    /// that is [`default_job_id`] or an id issued for it (`<default id>:<nonce>`), so a job
    /// another tenant publishes cannot take the id of one the producer issued; otherwise (an
    /// orchestrator's own id) it is [`default_job_id`].
    pub fn dedupe_id(&self) -> String {
        let default = default_job_id(&self.component, self.action);
        match self.id.strip_prefix(default.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with(':') => self.id.clone(),
            _ => default,
        }
    }

    /// Decodes and validates a payload: size, JSON, schema version, fields, Helm config.
    ///
    /// The config goes through [`HelmConfig::parse`], so an orchestrator gets the same
    /// field-naming messages as a Component author (and may send either config shape).
    pub fn decode(payload: &[u8]) -> Result<JobEvent, EventError> {
        let mut value = checked_value(payload, JOB_SCHEMA)?;
        let malformed = |reason: String| EventError::Malformed {
            schema: JOB_SCHEMA,
            reason,
        };
        let component = value
            .get("component")
            .cloned()
            .ok_or_else(|| malformed("missing field `component`".into()))?;
        let component = serde_json::from_value::<ComponentRef>(component)
            .map_err(|e| malformed(format!("component: {e}")))?;
        if let Some(config) = value.get_mut("config") {
            component.check(JOB_SCHEMA)?;
            let normalized =
                HelmConfig::parse(Some(config), &component.namespace, &component.name)?;
            *config = serde_json::to_value(normalized).map_err(|e| malformed(e.to_string()))?;
        }
        let job: JobEvent = from_value(value, JOB_SCHEMA)?;
        job.component.check(JOB_SCHEMA)?;
        if job.id.trim().is_empty() {
            return Err(malformed("id is required".into()));
        }
        check_text(JOB_SCHEMA, "id", &job.id, MAX_ID_LEN)?;
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&job.timeout_seconds) {
            return Err(malformed(format!(
                "timeoutSeconds must be between 1 and {MAX_TIMEOUT_SECONDS}, got {}",
                job.timeout_seconds
            )));
        }
        job.config.validate()?;
        Ok(job)
    }

    /// Encodes the job as JSON.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
}

/// The id of a job for `component` and `action` when nobody issued one:
/// `<uid>:<generation>:<action>` (`<namespace>/<name>:…` without a uid). helmq before issued jobs
/// gave every job this id; the writer still accepts it for a Component whose status records no
/// issued job.
pub fn default_job_id(component: &ComponentRef, action: JobAction) -> String {
    format!(
        "{}:{}:{}",
        component.identity(),
        component.generation,
        action.as_str()
    )
}

/// The id of a job the producer issues: [`default_job_id`], then `:` and `nonce`.
pub fn issued_job_id(component: &ComponentRef, action: JobAction, nonce: &str) -> String {
    format!("{}:{nonce}", default_job_id(component, action))
}

/// The phase a [`StatusEvent`] reports: the Component phases plus `Terminated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum StatusPhase {
    /// Claimed by the producer.
    Claimed,
    /// A worker started `helm upgrade --install`.
    Deploying,
    /// The release is deployed and ready.
    Ready,
    /// The apply failed for good (permanent error or budget spent).
    Failed,
    /// A worker started `helm uninstall`.
    Terminating,
    /// The release is gone; the writer removes the finalizer.
    Terminated,
    /// The uninstall failed for good; the finalizer stays.
    TerminationFailed,
}

impl StatusPhase {
    /// The wire name (`Ready`, `TerminationFailed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            StatusPhase::Claimed => "Claimed",
            StatusPhase::Deploying => "Deploying",
            StatusPhase::Ready => "Ready",
            StatusPhase::Failed => "Failed",
            StatusPhase::Terminating => "Terminating",
            StatusPhase::Terminated => "Terminated",
            StatusPhase::TerminationFailed => "TerminationFailed",
        }
    }

    /// Rank inside one generation: apply phases before delete phases, starts before ends.
    fn rank(self) -> u64 {
        match self {
            StatusPhase::Claimed => 0,
            StatusPhase::Deploying => 1,
            StatusPhase::Ready | StatusPhase::Failed => 2,
            StatusPhase::Terminating => 3,
            StatusPhase::Terminated | StatusPhase::TerminationFailed => 4,
        }
    }

    /// True for the phases that belong to deletion.
    pub fn is_deletion(self) -> bool {
        self.rank() >= 3
    }
}

/// The Helm release a status event reports on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseInfo {
    /// Release name.
    pub name: String,
    /// Release namespace.
    pub namespace: String,
    /// Release revision, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Chart version of the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_version: Option<String>,
    /// Helm's own status (`deployed`, `failed`, `pending-upgrade`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm_status: Option<String>,
}

impl ReleaseInfo {
    fn check(&self) -> Result<(), EventError> {
        let malformed = |reason: String| EventError::Malformed {
            schema: STATUS_SCHEMA,
            reason,
        };
        if self.name.len() > MAX_RELEASE_NAME_LEN || !dns::is_subdomain(&self.name) {
            return Err(malformed(format!(
                "release.name must be a Helm release name (a DNS subdomain of at most {MAX_RELEASE_NAME_LEN} characters), got {}",
                quoted(&self.name)
            )));
        }
        if !dns::is_label(&self.namespace) {
            return Err(malformed(format!(
                "release.namespace must be a DNS label, got {}",
                quoted(&self.namespace)
            )));
        }
        for (field, value) in [
            ("release.chartVersion", &self.chart_version),
            ("release.helmStatus", &self.helm_status),
        ] {
            if let Some(value) = value {
                check_text(STATUS_SCHEMA, field, value, MAX_ID_LEN)?;
            }
        }
        Ok(())
    }
}

/// Progress of one job, as the writer and orchestrators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "helmq.status/v1")]
pub struct StatusEvent {
    /// Always `helmq.status/v1`.
    #[schemars(extend("const" = STATUS_SCHEMA))]
    pub schema: String,
    /// The job this event reports on: the id of the job it answers; the producer's own
    /// events (`Claimed`, `Failed` for an invalid config, ...) carry the id of the job it issued
    /// for that generation and action. The writer applies only events answering the issued job.
    #[schemars(length(max = 256))]
    pub job_id: String,
    /// The Component and generation.
    pub component: ComponentRef,
    /// The phase reached.
    pub phase: StatusPhase,
    /// Human-readable detail; never contains values.
    #[serde(default)]
    #[schemars(length(max = 8192))]
    pub message: String,
    /// The release, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseInfo>,
    /// Attempt number of the job, from 1 (0 for the producer's `Claimed`).
    pub attempt: u32,
    /// Who published the event (worker id or `producer`).
    #[schemars(length(max = 256))]
    pub worker: String,
    /// When the event happened (RFC 3339).
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub at: Timestamp,
    /// Stream sequence of the job message the event answers (0 for the producer's own
    /// events). A replayed or re-published job has a higher one, so its events order above the
    /// earlier run's.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub job_sequence: u64,
    /// Order inside one generation: compare `(component.generation, order)`; a consumer drops
    /// an event whose pair is lower than the one it already applied. Deletion phases above apply
    /// phases, then by job sequence, attempt and phase (starts before ends).
    pub order: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl StatusEvent {
    /// An event with its order key computed from the phase and attempt.
    pub fn new(
        job_id: impl Into<String>,
        component: ComponentRef,
        phase: StatusPhase,
        message: impl Into<String>,
        attempt: u32,
        worker: impl Into<String>,
        at: Timestamp,
    ) -> Self {
        StatusEvent {
            schema: STATUS_SCHEMA.to_owned(),
            job_id: job_id.into(),
            component,
            phase,
            message: String::new(),
            release: None,
            attempt,
            worker: worker.into(),
            at,
            job_sequence: 0,
            order: order_key(phase, attempt, 0),
        }
        .with_message(message)
    }

    /// The same event for the job message at `sequence` in the jobs stream.
    pub fn for_job_sequence(mut self, sequence: u64) -> Self {
        self.job_sequence = sequence;
        self.order = order_key(self.phase, self.attempt, sequence);
        self
    }

    /// The same event with `message`, cut to [`MAX_MESSAGE_LEN`] bytes.
    fn with_message(mut self, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > MAX_MESSAGE_LEN {
            let mut end = MAX_MESSAGE_LEN - '…'.len_utf8();
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        self.message = message;
        self
    }

    /// The same event with the release attached.
    pub fn with_release(mut self, release: ReleaseInfo) -> Self {
        self.release = Some(release);
        self
    }

    /// `(generation, order)`, the key a consumer compares to drop stale events.
    pub fn position(&self) -> (i64, u64) {
        (self.component.generation, self.order)
    }

    /// The `Nats-Msg-Id`: one per (job, attempt, phase), so republishing after a reconnect is
    /// harmless.
    pub fn dedupe_id(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.component.identity(),
            self.component.generation,
            self.order,
            self.phase.as_str()
        )
    }

    /// Decodes and checks a payload: size, JSON, schema version, fields.
    pub fn decode(payload: &[u8]) -> Result<StatusEvent, EventError> {
        let event: StatusEvent = decode(payload, STATUS_SCHEMA)?;
        event.component.check(STATUS_SCHEMA)?;
        let text =
            |field: &str, value: &str, max: usize| check_text(STATUS_SCHEMA, field, value, max);
        text("jobId", &event.job_id, MAX_ID_LEN)?;
        text("worker", &event.worker, MAX_ID_LEN)?;
        if event.message.len() > MAX_MESSAGE_LEN {
            return Err(EventError::Malformed {
                schema: STATUS_SCHEMA,
                reason: format!(
                    "message is {} bytes, over the {MAX_MESSAGE_LEN} byte limit",
                    event.message.len()
                ),
            });
        }
        if let Some(release) = &event.release {
            release.check()?;
        }
        if event.order != order_key(event.phase, event.attempt, event.job_sequence) {
            return Err(EventError::Malformed {
                schema: STATUS_SCHEMA,
                reason: format!(
                    "order {} does not match phase {} at attempt {} of job sequence {}",
                    event.order,
                    event.phase.as_str(),
                    event.attempt,
                    event.job_sequence
                ),
            });
        }
        Ok(event)
    }

    /// Encodes the event as JSON.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
}

/// The job message sequence (with the deletion bit) and the phase rank an order key was made
/// from, without the attempt: two keys with the same first part come from deliveries of one job.
pub fn order_job_and_rank(order: u64) -> (u64, u64) {
    (order >> 22, order & 0xff)
}

/// Deletion phases sort above apply phases (bit 62); then later job messages above earlier ones
/// (the sequence, 40 bits), later attempts above earlier ones (14 bits), ends above starts (the
/// phase's rank, 8 bits). Sequence and attempt saturate at their widths. The key stays below
/// 2^63: Kubernetes stores it as an int64 (`status.handlerStatus.eventOrder`).
fn order_key(phase: StatusPhase, attempt: u32, sequence: u64) -> u64 {
    const SEQUENCE_MAX: u64 = (1 << 40) - 1;
    const ATTEMPT_MAX: u64 = (1 << 14) - 1;
    let group = u64::from(phase.is_deletion());
    (group << 62)
        | (sequence.min(SEQUENCE_MAX) << 22)
        | (u64::from(attempt).min(ATTEMPT_MAX) << 8)
        | phase.rank()
}

fn decode<T: serde::de::DeserializeOwned>(
    payload: &[u8],
    schema: &'static str,
) -> Result<T, EventError> {
    from_value(checked_value(payload, schema)?, schema)
}

fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    schema: &'static str,
) -> Result<T, EventError> {
    serde_json::from_value(value).map_err(|e| EventError::Malformed {
        schema,
        reason: e.to_string(),
    })
}

/// Size, JSON object and schema version checks shared by both events.
fn checked_value(payload: &[u8], schema: &'static str) -> Result<serde_json::Value, EventError> {
    if payload.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge {
            size: payload.len(),
            limit: MAX_EVENT_BYTES,
        });
    }
    let malformed = |reason: String| EventError::Malformed { schema, reason };
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| malformed(format!("expected a JSON object, got {}", kind(&value))))?;
    match object.get("schema") {
        None => return Err(EventError::MissingSchema { expected: schema }),
        Some(serde_json::Value::String(s)) if s == schema => {}
        Some(serde_json::Value::String(s)) => {
            return Err(EventError::UnknownSchema {
                found: s.clone(),
                expected: schema,
            });
        }
        Some(other) => {
            return Err(malformed(format!(
                "schema must be a string, got {}",
                kind(other)
            )));
        }
    }
    Ok(value)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these types cannot fail: every map key is a string and no Serialize impl errs.
    serde_json::to_vec(value).unwrap_or_default()
}
