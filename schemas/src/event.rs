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
    /// Which apply of this generation it is: 0 (absent) for the first; a higher one re-applies
    /// the same generation (a reconcile request, a resume) and supersedes a lower one. Ignored
    /// for a delete. An orchestrator raises it to run a finished job's generation again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refresh: u32,
    /// What the Component's status says is deployed (it is `Ready`): when the effective values
    /// and the config give the same digests, the worker reports `Ready` without running Helm.
    /// Absent: Helm runs (a reconcile request, a first deploy, an orchestrator's job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<Deployed>,
    /// A drift check (`config.drift`): when `deployed` matches, the worker compares the
    /// release's live objects with its manifest instead of running Helm, and reports (or, in
    /// `correct` mode, puts back) what differs; otherwise it deploys as any apply. Checks wait
    /// behind applies and deletes on a worker.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drift_check: bool,
}

/// The digests of a deploy, as `status.handlerStatus` records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deployed {
    /// `sha256:<hex>` of the effective values (`valuesFrom` merged under `values`).
    #[schemars(length(max = 80))]
    pub values_digest: String,
    /// `sha256:<hex>` of the rest of the config (chart, release, settings).
    #[schemars(length(max = 80))]
    pub config_digest: String,
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
            refresh: 0,
            deployed: None,
            drift_check: false,
        }
    }

    /// The `Nats-Msg-Id`: stable per (uid, generation, action), so a republish of the same
    /// intent inside the duplicate window is dropped by the server. It is the job's `id` when
    /// that is [`default_job_id`] or an id issued for it (`<default id>:<nonce>`), so a job
    /// another tenant publishes cannot take the id of one the producer issued; otherwise (an
    /// orchestrator's own id) it is [`default_job_id`], with `:refresh-<n>` after it for a refresh.
    pub fn dedupe_id(&self) -> String {
        let default = default_job_id(&self.component, self.action);
        match self.id.strip_prefix(default.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with(':') => self.id.clone(),
            // A refresh of an orchestrator's job is another message than the generation's first.
            _ if self.refresh > 0 => format!("{default}:refresh-{}", self.refresh),
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
        if let Some(deployed) = &job.deployed {
            deployed.check(JOB_SCHEMA, "deployed")?;
        }
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

/// A fresh nonce for a job id ([`issued_job_id`]): 128 bits from the system's random source, in
/// hex, so nobody can guess the id (and pre-empt the job by publishing its `Nats-Msg-Id` first).
pub fn job_nonce() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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
    /// The digests of what a `Ready` deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<Deployed>,
    /// What a drift check found (only on the answer to a job with `driftCheck`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftReport>,
}

/// Most objects a [`DriftReport`] names, and most fields it names per object.
pub const MAX_DRIFT_ITEMS: usize = 20;

/// What a drift check found: the objects whose live state differs from the release's
/// manifest (at most [`MAX_DRIFT_ITEMS`]), and whether they were put back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriftReport {
    /// How many objects of the release were compared.
    pub checked: u32,
    /// The drifted objects; empty when none drifted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_DRIFT_ITEMS))]
    pub objects: Vec<DriftedObject>,
    /// How many objects drifted in all (more than `objects` names when over the limit).
    #[serde(default)]
    pub drifted: u32,
    /// The drifted objects were applied again (`correct` mode).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub corrected: bool,
    /// The check could not compare the objects, or not put them back; the status message says
    /// why. The release stays as it was: the next check tries again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

/// One object of a release whose live state differs from its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriftedObject {
    /// Its kind, such as `Deployment`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its namespace (absent for a cluster-scoped object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// It is gone from the cluster.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The JSON pointers of the fields that differ (at most [`MAX_DRIFT_ITEMS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_DRIFT_ITEMS))]
    pub fields: Vec<String>,
}

impl DriftedObject {
    /// `Kind name: /a, /b` or `Kind name deleted`, for messages and Events.
    #[must_use]
    pub fn describe(&self) -> String {
        if self.deleted {
            format!("{} {} deleted", self.kind, self.name)
        } else {
            format!("{} {}: {}", self.kind, self.name, self.fields.join(", "))
        }
    }
}

impl DriftReport {
    /// The drifted objects in one line: `ConfigMap a deleted; Deployment b: /spec/replicas`.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut text: Vec<String> = self.objects.iter().map(DriftedObject::describe).collect();
        let more = (self.drifted as usize).saturating_sub(self.objects.len());
        if more > 0 {
            text.push(format!("{more} more"));
        }
        text.join("; ")
    }
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
        if let Some(deployed) = &self.deployed {
            deployed.check(STATUS_SCHEMA, "release.deployed")?;
        }
        if let Some(drift) = &self.drift {
            drift.check()?;
        }
        Ok(())
    }
}

impl DriftReport {
    /// Bounds every list and text: the report ends up in a status message and an Event.
    fn check(&self) -> Result<(), EventError> {
        let too_many = |field: &str| EventError::Malformed {
            schema: STATUS_SCHEMA,
            reason: format!("{field} holds more than {MAX_DRIFT_ITEMS} entries"),
        };
        if self.objects.len() > MAX_DRIFT_ITEMS {
            return Err(too_many("release.drift.objects"));
        }
        for object in &self.objects {
            if object.fields.len() > MAX_DRIFT_ITEMS {
                return Err(too_many("release.drift.objects[].fields"));
            }
            for text in [&object.kind, &object.name]
                .into_iter()
                .chain(object.namespace.as_ref())
                .chain(&object.fields)
            {
                check_text(STATUS_SCHEMA, "release.drift.objects[]", text, MAX_ID_LEN)?;
            }
        }
        Ok(())
    }
}

impl Deployed {
    /// Both digests are short text (they reach a Component's status); `field` is where the
    /// digests are in the payload.
    fn check(&self, schema: &'static str, field: &str) -> Result<(), EventError> {
        check_text(
            schema,
            &format!("{field}.valuesDigest"),
            &self.values_digest,
            80,
        )?;
        check_text(
            schema,
            &format!("{field}.configDigest"),
            &self.config_digest,
            80,
        )
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
    pub order: Order,
}

/// Whether `n` is zero (serde's `skip_serializing_if` passes a reference).
pub(crate) fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
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
            order: Order::new(phase, attempt, 0),
        }
        .with_message(message)
    }

    /// The same event for the job message at `sequence` in the jobs stream.
    pub fn for_job_sequence(mut self, sequence: u64) -> Self {
        self.job_sequence = sequence;
        self.order = Order::new(self.phase, self.attempt, sequence);
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
    pub fn position(&self) -> Position {
        Position {
            generation: self.component.generation,
            order: self.order,
        }
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
        if event.order != Order::new(event.phase, event.attempt, event.job_sequence) {
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

/// The order key of a status event inside one generation: deletion phases above apply phases,
/// then later job messages above earlier ones, later attempts above earlier ones, ends above
/// starts.
///
/// On the wire and in `status.handlerStatus.eventOrder` it is one integer below 2^63 (Kubernetes
/// stores it as an int64), packed from, most significant first: the deletion bit (62), the job
/// message's stream sequence (bits 22–61, saturating), the attempt (bits 8–21, saturating) and
/// the phase's rank in its job (bits 0–7, see [`Stage`]). Only this type knows that layout.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Order(u64);

// The wire's schema: the plain integer, inlined where it is used (no definition of its own).
impl JsonSchema for Order {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        u64::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        u64::json_schema(generator)
    }
}

impl Order {
    /// Largest job sequence the key tells apart; larger ones saturate to it.
    pub const MAX_JOB_SEQUENCE: u64 = (1 << 40) - 1;
    /// Largest attempt the key tells apart; larger ones saturate to it.
    pub const MAX_ATTEMPT: u32 = (1 << 14) - 1;
    const DELETION_SHIFT: u32 = 62;
    const JOB_SEQUENCE_SHIFT: u32 = 22;
    const ATTEMPT_SHIFT: u32 = 8;
    const RANK_MASK: u64 = 0xff;

    /// The key of `phase` at `attempt` of the job message at `job_sequence` (0 for the
    /// producer's own events).
    pub fn new(phase: StatusPhase, attempt: u32, job_sequence: u64) -> Order {
        let deletion = u64::from(phase.is_deletion());
        let attempt = attempt.min(Self::MAX_ATTEMPT);
        Order(
            (deletion << Self::DELETION_SHIFT)
                | (job_sequence.min(Self::MAX_JOB_SEQUENCE) << Self::JOB_SEQUENCE_SHIFT)
                | (u64::from(attempt) << Self::ATTEMPT_SHIFT)
                | phase.rank(),
        )
    }

    /// A key as stored or sent (`eventOrder`, `order`).
    pub fn from_raw(raw: u64) -> Order {
        Order(raw)
    }

    /// The integer stored and sent.
    pub fn get(self) -> u64 {
        self.0
    }

    /// Whether the key belongs to a deletion phase.
    pub fn is_deletion(self) -> bool {
        (self.0 >> Self::DELETION_SHIFT) & 1 == 1
    }

    /// The job message's stream sequence (saturated at [`Self::MAX_JOB_SEQUENCE`]).
    pub fn job_sequence(self) -> u64 {
        (self.0 >> Self::JOB_SEQUENCE_SHIFT) & Self::MAX_JOB_SEQUENCE
    }

    /// The attempt (saturated at [`Self::MAX_ATTEMPT`]).
    pub fn attempt(self) -> u32 {
        // The mask keeps it within 14 bits, so the conversion cannot fail.
        u32::try_from((self.0 >> Self::ATTEMPT_SHIFT) & u64::from(Self::MAX_ATTEMPT))
            .unwrap_or(Self::MAX_ATTEMPT)
    }

    /// The phase's place in its job, or `None` for a rank no phase has (a key not made here).
    pub fn stage(self) -> Option<Stage> {
        Stage::of_rank(self.0 & Self::RANK_MASK)
    }

    /// Whether both keys come from deliveries of one job message (any attempt): the same
    /// deletion bit and job sequence.
    pub fn same_job_message(self, other: Order) -> bool {
        self.0 >> Self::JOB_SEQUENCE_SHIFT == other.0 >> Self::JOB_SEQUENCE_SHIFT
    }

    /// This key with the stage of `other`: the job message and attempt of `self`.
    #[must_use]
    pub fn with_stage_of(self, other: Order) -> Order {
        Order((self.0 & !Self::RANK_MASK) | (other.0 & Self::RANK_MASK))
    }
}

impl std::fmt::Display for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A phase's place in its job, the low bits of its [`Order`]: the claim, then the job's start,
/// then its end (success or failure), ranked in that order and apply before delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `Claimed`.
    Claim,
    /// `Deploying` or `Terminating`.
    Start(JobAction),
    /// `Ready` or `Failed`; `Terminated` or `TerminationFailed`.
    End(JobAction),
}

impl Stage {
    fn of_rank(rank: u64) -> Option<Stage> {
        Some(match rank {
            0 => Stage::Claim,
            1 => Stage::Start(JobAction::Apply),
            2 => Stage::End(JobAction::Apply),
            3 => Stage::Start(JobAction::Delete),
            4 => Stage::End(JobAction::Delete),
            _ => return None,
        })
    }
}

/// Where a status event sits, `(generation, order)`: a consumer drops an event at or below the
/// position it last applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// `component.generation`.
    pub generation: i64,
    /// The order key inside the generation.
    pub order: Order,
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

#[cfg(test)]
mod tests {
    use super::*;

    const PHASES: [StatusPhase; 7] = [
        StatusPhase::Claimed,
        StatusPhase::Deploying,
        StatusPhase::Ready,
        StatusPhase::Failed,
        StatusPhase::Terminating,
        StatusPhase::Terminated,
        StatusPhase::TerminationFailed,
    ];

    fn stage_of(phase: StatusPhase) -> Stage {
        match phase {
            StatusPhase::Claimed => Stage::Claim,
            StatusPhase::Deploying => Stage::Start(JobAction::Apply),
            StatusPhase::Ready | StatusPhase::Failed => Stage::End(JobAction::Apply),
            StatusPhase::Terminating => Stage::Start(JobAction::Delete),
            StatusPhase::Terminated | StatusPhase::TerminationFailed => {
                Stage::End(JobAction::Delete)
            }
        }
    }

    #[test]
    fn every_field_round_trips() {
        for phase in PHASES {
            for attempt in [0, 1, 2, 77, Order::MAX_ATTEMPT] {
                for sequence in [0, 1, 40, 1 << 39, Order::MAX_JOB_SEQUENCE] {
                    let order = Order::new(phase, attempt, sequence);
                    let fields = (
                        order.is_deletion(),
                        order.job_sequence(),
                        order.attempt(),
                        order.stage(),
                    );
                    let want = (
                        phase.is_deletion(),
                        sequence,
                        attempt,
                        Some(stage_of(phase)),
                    );
                    assert_eq!(fields, want, "{phase:?} {attempt} {sequence}");
                    assert_eq!(Order::from_raw(order.get()), order);
                }
            }
        }
    }

    #[test]
    fn sequence_and_attempt_saturate_and_the_key_fits_an_int64() {
        let widest = Order::new(StatusPhase::TerminationFailed, u32::MAX, u64::MAX);
        assert_eq!(widest.attempt(), Order::MAX_ATTEMPT);
        assert_eq!(widest.job_sequence(), Order::MAX_JOB_SEQUENCE);
        assert!(widest.is_deletion());
        assert_eq!(widest.stage(), Some(Stage::End(JobAction::Delete)));
        assert!(i64::try_from(widest.get()).is_ok(), "{widest}");
        let narrowest = Order::new(StatusPhase::Claimed, 0, 0);
        assert_eq!(narrowest.get(), 0);
    }

    #[test]
    fn a_rank_no_phase_has_has_no_stage() {
        for rank in [5, 6, 0xff] {
            assert_eq!(Order::from_raw(rank).stage(), None, "{rank}");
        }
    }

    #[test]
    fn fields_order_deletion_then_sequence_then_attempt_then_stage() {
        use StatusPhase::{Claimed, Deploying, Ready, Terminated, Terminating};
        let ascending = [
            Order::new(Claimed, 0, 0),
            Order::new(Ready, 0, 0),
            Order::new(Claimed, 1, 0),
            Order::new(Ready, Order::MAX_ATTEMPT, 0),
            Order::new(Claimed, 0, 1),
            Order::new(Deploying, 3, 1),
            Order::new(Ready, 3, 1),
            Order::new(Ready, 0, Order::MAX_JOB_SEQUENCE),
            Order::new(Terminating, 0, 0),
            Order::new(Terminated, 0, 0),
            Order::new(Terminating, 1, 0),
            Order::new(Terminating, 0, 1),
        ];
        for pair in ascending.windows(2) {
            assert!(pair[0] < pair[1], "{:?} < {:?}", pair[0], pair[1]);
        }
    }

    #[test]
    fn positions_compare_generation_first() {
        let at = |generation, order| Position { generation, order };
        let terminated = Order::new(StatusPhase::Terminated, 9, 9);
        let claimed = Order::new(StatusPhase::Claimed, 0, 0);
        assert!(at(1, terminated) < at(2, claimed));
        assert!(at(2, claimed) < at(2, terminated));
    }

    #[test]
    fn same_job_message_ignores_attempt_and_stage() {
        let deploying = Order::new(StatusPhase::Deploying, 3, 17);
        let ready = Order::new(StatusPhase::Ready, 1, 17);
        assert!(deploying.same_job_message(ready));
        assert!(!deploying.same_job_message(Order::new(StatusPhase::Ready, 1, 18)));
        assert!(!deploying.same_job_message(Order::new(StatusPhase::Terminating, 3, 17)));
        let kept = deploying.with_stage_of(ready);
        assert_eq!(
            (kept.job_sequence(), kept.attempt(), kept.stage()),
            (17, 3, Some(Stage::End(JobAction::Apply)))
        );
    }

    #[test]
    fn the_wire_form_is_the_plain_integer() {
        let order = Order::new(StatusPhase::Ready, 2, 40);
        let json = serde_json::to_string(&order).unwrap();
        assert_eq!(json, order.get().to_string());
        assert_eq!(serde_json::from_str::<Order>(&json).unwrap(), order);
    }
}
