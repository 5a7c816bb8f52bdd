//! [`MemoryDriver`]: a [`HelmDriver`] that keeps releases in memory, for tests of the pipeline.
//! It records every call, notices two mutating calls on one release at the same time (an
//! exclusivity violation), and can be scripted to fail (before or after writing a failed
//! revision), to take a while, or to wait at a gate until the test lets it go on, and to fail a
//! release's tests. Built only for this crate's tests and with the `testing`
//! feature (which the integration tests turn on), never into a release binary.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::helm_cli::{helm_failure, test_failure};
use super::{
    Apply, DriverError, HelmDriver, HelmProcesses, HelmStatus, NamespaceDeletion, Release,
    ReleaseRef, Revision, Target, Tool, Uninstalled, is_pending,
};
use crate::drift::ObjectState;
use crate::ownership::{Identity, Owner};
use crate::values::SourceData;
use helmq_schemas::config::ValuesKind;

/// One call the driver received.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `apply`, `uninstall`, `status`, `labels`, `history`, `rollback`, `test`,
    /// `delete-namespace`, or
    /// `refused`: an apply Helm refuses before it writes anything (`helm install` of a name in
    /// use, another operation in progress).
    pub op: &'static str,
    /// Release name (the namespace for `delete-namespace`).
    pub release: String,
    /// Release namespace.
    pub namespace: String,
    /// The values of an apply (a test double may look at them; [`super::HelmCli`] never logs them).
    pub values: Map<String, Value>,
    /// Whether the call was cancelled before it finished.
    pub cancelled: bool,
    /// The impersonated user it ran as (`None`: the worker's own account).
    pub user: Option<String>,
    /// When the call started.
    pub at: std::time::Instant,
}

/// A scripted reaction to the next mutating call on a release.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Fail like helm with this stderr, read as `HelmCli` reads helm's (class and cause),
    /// before writing anything.
    Fail(String),
    /// An apply that fails after writing its revision as `failed` (as a wait timeout or a failed
    /// hook does), with this stderr; any other call fails as [`Step::Fail`].
    FailRecorded(String),
    /// Take this long (cancellable), then do the work.
    Delay(Duration),
    /// Panic with this message, as a bug in the job path would.
    Panic(String),
}

#[derive(Debug, Default)]
struct State {
    releases: HashMap<ReleaseRef, Vec<Revision>>,
    /// The labels of each release's newest record (merged over upgrades, as Helm does).
    labels: HashMap<ReleaseRef, BTreeMap<String, String>>,
    /// Namespaces that exist, with the owner helmq created them for (`None`: not created by
    /// helmq).
    namespaces: HashMap<String, Option<Owner>>,
    running: HashMap<ReleaseRef, usize>,
    overlaps: Vec<String>,
    calls: Vec<Call>,
    /// `(release, own_namespace)` of every apply: the namespace registry Secrets would come from.
    tenants: Vec<(String, String)>,
    script: HashMap<String, VecDeque<Step>>,
    /// Per release: how many more `test` calls fail, and helm's stderr for them.
    test_failures: HashMap<String, (usize, String)>,
    delay: Duration,
    gate_closed: bool,
    /// ConfigMaps and Secrets `valuesFrom` reads, by (kind, namespace, name).
    values_sources: HashMap<(ValuesKind, String, String), BTreeMap<String, Vec<u8>>>,
    /// A release's objects as `drift_states` answers them; a `reapply` sets each object it
    /// gets live again.
    objects: HashMap<ReleaseRef, Vec<ObjectState>>,
}

/// In-memory [`HelmDriver`]; clones share their state.
#[derive(Debug, Clone, Default)]
pub struct MemoryDriver {
    state: Arc<Mutex<State>>,
    gate_opened: Arc<tokio::sync::Notify>,
    /// The helm processes its calls stand for, by subcommand (`helm_processes`, as
    /// [`super::HelmCli`] counts them).
    processes: HelmProcesses,
}

impl MemoryDriver {
    /// An empty driver.
    pub fn new() -> Self {
        MemoryDriver::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked mid-call leaves consistent enough state for the others.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates or replaces the ConfigMap or Secret `namespace/name` with `data` (a Secret's
    /// decoded), for `valuesFrom`.
    pub fn set_values_source(
        &self,
        kind: ValuesKind,
        namespace: &str,
        name: &str,
        data: &[(&str, &str)],
    ) {
        let data = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect();
        self.state()
            .values_sources
            .insert((kind, namespace.to_owned(), name.to_owned()), data);
    }

    /// Sets what `drift_states` answers for `namespace/release`: for each object its
    /// desired state and its live one (`None`: deleted).
    pub fn set_objects(
        &self,
        namespace: &str,
        release: &str,
        objects: Vec<(Value, Option<Value>)>,
    ) {
        let states = objects
            .into_iter()
            .map(|(desired, live)| ObjectState {
                applied: desired.clone(),
                desired,
                live,
            })
            .collect();
        self.state()
            .objects
            .insert(ReleaseRef::new(namespace, release), states);
    }

    /// Every mutating call takes at least this long (cancellable).
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// Closes the gate: from now on every mutating call, once started (and recorded in
    /// [`calls`](Self::calls)), waits (cancellable) until [`open_gate`](Self::open_gate) before
    /// its script, delay and work. Lets a test act while a job is in the middle of its Helm work.
    pub fn close_gate(&self) {
        self.state().gate_closed = true;
    }

    /// Opens the gate: calls waiting at it go on, and later calls no longer wait.
    pub fn open_gate(&self) {
        self.state().gate_closed = false;
        self.gate_opened.notify_waiters();
    }

    /// Waits while the gate is closed; `false` when cancelled first.
    async fn pass_gate(&self, cancel: &CancellationToken) -> bool {
        loop {
            // Created before the check: `notify_waiters` wakes it even if it is not polled yet.
            let opened = self.gate_opened.notified();
            if !self.state().gate_closed {
                return true;
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = opened => {}
            }
        }
    }

    /// Queues reactions for the next mutating calls on `release`.
    pub fn script(&self, release: &str, steps: impl IntoIterator<Item = Step>) {
        self.state()
            .script
            .entry(release.to_owned())
            .or_default()
            .extend(steps);
    }

    /// Makes the next `times` tests of `release` fail with helm's `stderr` (as a test pod that
    /// failed: permanent, cause `TestFailed`); `usize::MAX` for all of them.
    pub fn fail_tests(&self, release: &str, stderr: &str, times: usize) {
        self.state()
            .test_failures
            .insert(release.to_owned(), (times, stderr.to_owned()));
    }

    /// `(release, own namespace)` of every apply so far: the namespace a registry Secret
    /// without a namespace would be read from.
    pub fn tenants(&self) -> Vec<(String, String)> {
        self.state().tenants.clone()
    }

    /// Puts a release in a given state, e.g. `pending-upgrade` after a crash.
    pub fn set_history(&self, namespace: &str, release: &str, history: Vec<Revision>) {
        self.state()
            .releases
            .insert(ReleaseRef::new(namespace, release), history);
    }

    /// Sets the labels of a release's newest record (e.g. another owner's, or none).
    pub fn set_labels(&self, namespace: &str, release: &str, labels: BTreeMap<String, String>) {
        self.state()
            .labels
            .insert(ReleaseRef::new(namespace, release), labels);
    }

    /// Makes a namespace exist that helmq did not create.
    pub fn add_namespace(&self, namespace: &str) {
        self.state().namespaces.insert(namespace.to_owned(), None);
    }

    /// Whether a namespace exists.
    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.state().namespaces.contains_key(namespace)
    }

    /// The history of a release (oldest first).
    pub fn history_of(&self, namespace: &str, release: &str) -> Vec<Revision> {
        self.state()
            .releases
            .get(&ReleaseRef::new(namespace, release))
            .cloned()
            .unwrap_or_default()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Descriptions of mutating calls that overlapped on one release.
    pub fn overlaps(&self) -> Vec<String> {
        self.state().overlaps.clone()
    }

    fn begin(
        &self,
        op: &'static str,
        target: Target<'_>,
        values: Map<String, Value>,
    ) -> (usize, Option<Step>, Duration) {
        let (namespace, release) = (target.namespace, target.release);
        let mut state = self.state();
        let key = ReleaseRef::new(namespace, release);
        let running = state.running.entry(key).or_default();
        *running += 1;
        if *running > 1 {
            let note = format!("{op} on {namespace}/{release} while another call ran");
            state.overlaps.push(note);
        }
        let step = state.script.get_mut(release).and_then(VecDeque::pop_front);
        state.calls.push(Call {
            op,
            release: release.to_owned(),
            namespace: namespace.to_owned(),
            values,
            cancelled: false,
            at: std::time::Instant::now(),
            user: target.identity.user().map(str::to_owned),
        });
        let index = state.calls.len() - 1;
        (index, step, state.delay)
    }

    fn end(&self, index: usize, namespace: &str, release: &str, cancelled: bool) {
        let mut state = self.state();
        if let Some(running) = state.running.get_mut(&ReleaseRef::new(namespace, release)) {
            *running = running.saturating_sub(1);
        }
        if let Some(call) = state.calls.get_mut(index) {
            call.cancelled = cancelled;
        }
    }

    /// Runs a mutating call: overlap bookkeeping, the gate, the script, the delay, then `work`.
    async fn mutate<T>(
        &self,
        op: &'static str,
        target: Target<'_>,
        values: Map<String, Value>,
        cancel: &CancellationToken,
        work: impl FnOnce(&mut State) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        let (namespace, release) = (target.namespace, target.release);
        let (index, step, delay) = self.begin(op, target, values);
        let delay = match &step {
            Some(Step::Delay(d)) => delay.max(*d),
            _ => delay,
        };
        let waited = self.pass_gate(cancel).await
            && tokio::select! {
                () = cancel.cancelled() => false,
                () = tokio::time::sleep(delay) => true,
            };
        if !waited {
            self.end(index, namespace, release, true);
            return Err(DriverError::Cancelled {
                tool: Tool::Helm,
                command: op.into(),
            });
        }
        if let Some(Step::Panic(message)) = &step {
            // Ends the call first, so the running count does not outlive the panic.
            self.end(index, namespace, release, false);
            panic!("{message}");
        }
        let fail = |stderr| DriverError::Helm {
            command: op.into(),
            exit_code: Some(1),
            failure: Box::new(helm_failure(Some(1), stderr)),
        };
        let result = match step {
            Some(Step::Fail(stderr)) => Err(fail(stderr)),
            Some(Step::FailRecorded(stderr)) => {
                if op == "apply" {
                    let mut state = self.state();
                    let history = state.releases.entry(target.release_ref()).or_default();
                    push_failed(history);
                }
                Err(fail(stderr))
            }
            _ => work(&mut self.state()),
        };
        self.end(index, namespace, release, false);
        result
    }

    /// A helm run that changes no release record (`status`, `history`, `test`): counted as a helm
    /// process and recorded as a call.
    fn helm_run(&self, subcommand: &'static str, target: Target<'_>) {
        self.processes.count(subcommand);
        self.record(subcommand, target);
    }

    fn record(&self, op: &'static str, target: Target<'_>) {
        self.state().calls.push(Call {
            op,
            release: target.release.to_owned(),
            namespace: target.namespace.to_owned(),
            values: Map::new(),
            cancelled: false,
            at: std::time::Instant::now(),
            user: target.identity.user().map(str::to_owned),
        });
    }
}

impl MemoryDriver {
    /// Helm's refusals of an apply, which come before it writes anything: `helm install` of a
    /// name in use, and any apply of a release whose newest record is pending.
    fn refusal(&self, key: &ReleaseRef, install: bool) -> Option<DriverError> {
        let state = self.state();
        let history = state.releases.get(key).map_or(&[][..], Vec::as_slice);
        let stderr = if install && !history.is_empty() {
            "Error: INSTALLATION FAILED: release name check failed: cannot reuse a name that is still in use"
        } else if history.last().is_some_and(|r| is_pending(&r.status)) {
            "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress"
        } else {
            return None;
        };
        Some(DriverError::Helm {
            command: "apply".into(),
            exit_code: Some(1),
            failure: Box::new(helm_failure(Some(1), stderr.into())),
        })
    }
}

/// Appends a `failed` revision, as a failed install or upgrade leaves it: the one deployed
/// before stays `deployed`.
fn push_failed(history: &mut Vec<Revision>) {
    let revision = history.last().map_or(1, |r| r.revision + 1);
    let chart = history.last().map(|r| r.chart.clone()).unwrap_or_default();
    history.push(Revision {
        revision,
        status: HelmStatus::Failed,
        chart,
        description: "Upgrade failed".into(),
        updated: Some(jiff::Timestamp::now()),
        lease_revision: None,
    });
}

/// Appends a `deployed` revision; the one deployed before is `superseded`.
fn push_revision(
    history: &mut Vec<Revision>,
    chart: String,
    description: &str,
    lease_revision: Option<u64>,
) -> i64 {
    for old in history.iter_mut() {
        if old.status == HelmStatus::Deployed {
            old.status = HelmStatus::Superseded;
        }
    }
    let revision = history.last().map_or(1, |r| r.revision + 1);
    history.push(Revision {
        revision,
        status: HelmStatus::Deployed,
        chart,
        description: description.into(),
        updated: Some(jiff::Timestamp::now()),
        lease_revision,
    });
    revision
}

impl HelmDriver for MemoryDriver {
    fn grace(&self) -> Duration {
        // Cancelled runs stop at once.
        Duration::ZERO
    }

    fn register_metrics(&self, registry: &mut Registry) {
        self.processes.register(registry);
    }

    async fn apply(
        &self,
        request: Apply<'_>,
        cancel: &CancellationToken,
    ) -> Result<Release, DriverError> {
        let config = request.config;
        let key = ReleaseRef::new(&config.release_namespace, &config.release_name);
        let chart = format!("{}-{}", config.chart_name(), config.chart_version());
        let version = config.chart_version().to_owned();
        let stamp = request.lease_revision;
        let install = request.install;
        let owner = request.owner.clone();
        self.state().tenants.push((
            config.release_name.clone(),
            request.own_namespace.to_owned(),
        ));
        let target = Target {
            release: &config.release_name,
            namespace: &config.release_namespace,
            identity: request.identity,
        };
        let manage = config.manage_namespace && config.release_namespace != request.own_namespace;
        self.processes
            .count(if install { "install" } else { "upgrade" });
        if let Some(refused) = self.refusal(&key, install) {
            self.record("refused", target);
            return Err(refused);
        }
        self.mutate(
            "apply",
            target,
            config.values.clone(),
            cancel,
            move |state| {
                if manage {
                    state
                        .namespaces
                        .entry(key.namespace.clone())
                        .or_insert_with(|| Some(owner.clone()));
                }
                let labels = state.labels.entry(key.clone()).or_default();
                labels.insert(super::LEASE_LABEL.to_owned(), stamp.to_string());
                for (k, v) in owner.labels() {
                    labels.insert(k.to_owned(), v.to_owned());
                }
                let history = state.releases.entry(key).or_default();
                let revision = push_revision(history, chart, "Upgrade complete", Some(stamp));
                Ok(Release {
                    revision,
                    status: HelmStatus::Deployed,
                    chart_version: Some(version),
                })
            },
        )
        .await
    }

    async fn uninstall(
        &self,
        target: Target<'_>,
        _timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Uninstalled, DriverError> {
        let key = target.release_ref();
        self.processes.count("uninstall");
        self.mutate("uninstall", target, Map::new(), cancel, move |state| {
            state.labels.remove(&key);
            Ok(match state.releases.remove(&key) {
                Some(_) => Uninstalled::Removed,
                None => Uninstalled::NotFound,
            })
        })
        .await
    }

    async fn status(
        &self,
        target: Target<'_>,
        _cancel: &CancellationToken,
    ) -> Result<Option<Release>, DriverError> {
        self.helm_run("status", target);
        let history = self.history_of(target.namespace, target.release);
        Ok(history.last().map(|r| Release {
            revision: r.revision,
            status: r.status.clone(),
            chart_version: r.chart.rsplit_once('-').map(|(_, v)| v.to_owned()),
        }))
    }

    async fn labels(
        &self,
        target: Target<'_>,
        _revision: i64,
        _cancel: &CancellationToken,
    ) -> Result<BTreeMap<String, String>, DriverError> {
        self.record("labels", target);
        let key = target.release_ref();
        Ok(self.state().labels.get(&key).cloned().unwrap_or_default())
    }

    async fn history(
        &self,
        target: Target<'_>,
        _cancel: &CancellationToken,
    ) -> Result<Vec<Revision>, DriverError> {
        self.helm_run("history", target);
        Ok(self.history_of(target.namespace, target.release))
    }

    async fn test(
        &self,
        target: Target<'_>,
        _timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        self.helm_run("test", target);
        if cancel.is_cancelled() {
            return Err(DriverError::Cancelled {
                tool: Tool::Helm,
                command: "test".into(),
            });
        }
        let mut state = self.state();
        if !state.releases.contains_key(&target.release_ref()) {
            return Err(DriverError::Helm {
                command: "test".into(),
                exit_code: Some(1),
                failure: Box::new(helm_failure(Some(1), "Error: release: not found".into())),
            });
        }
        match state.test_failures.get_mut(target.release) {
            Some((times, stderr)) if *times > 0 => {
                *times -= 1;
                Err(DriverError::Helm {
                    command: "test".into(),
                    exit_code: Some(1),
                    failure: Box::new(test_failure(stderr.clone())),
                })
            }
            _ => Ok(()),
        }
    }

    async fn rollback(
        &self,
        target: Target<'_>,
        revision: i64,
        _timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        let key = target.release_ref();
        self.processes.count("rollback");
        self.mutate("rollback", target, Map::new(), cancel, move |state| {
            let history = state.releases.entry(key).or_default();
            let Some(target) = history.iter().find(|r| r.revision == revision).cloned() else {
                return Err(DriverError::Helm {
                    command: "rollback".into(),
                    exit_code: Some(1),
                    failure: Box::new(helm_failure(
                        Some(1),
                        format!("Error: release has no {revision} version"),
                    )),
                });
            };
            for r in history.iter_mut() {
                if is_pending(&r.status) {
                    r.status = HelmStatus::Failed;
                }
            }
            push_revision(
                history,
                target.chart,
                &format!("Rollback to {revision}"),
                target.lease_revision,
            );
            Ok(())
        })
        .await
    }

    async fn values_source(
        &self,
        kind: ValuesKind,
        name: &str,
        namespace: &str,
        _identity: &Identity,
        _cancel: &CancellationToken,
    ) -> Result<SourceData, DriverError> {
        let key = (kind, namespace.to_owned(), name.to_owned());
        Ok(self.state().values_sources.get(&key).cloned())
    }

    async fn drift_states(
        &self,
        target: Target<'_>,
        _cancel: &CancellationToken,
    ) -> Result<Vec<ObjectState>, DriverError> {
        self.record("drift-states", target);
        let key = target.release_ref();
        Ok(self.state().objects.get(&key).cloned().unwrap_or_default())
    }

    async fn reapply(
        &self,
        target: Target<'_>,
        objects: &[Value],
        _cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        self.record("reapply", target);
        let key = target.release_ref();
        let mut state = self.state();
        for state in state.objects.entry(key).or_default() {
            let same =
                |o: &Value| crate::drift::identity(o) == crate::drift::identity(&state.applied);
            if objects.iter().any(same) {
                state.live = Some(state.desired.clone());
            }
        }
        Ok(())
    }

    async fn delete_namespace(
        &self,
        namespace: &str,
        identity: &Identity,
        owner: &Owner,
        _cancel: &CancellationToken,
    ) -> Result<NamespaceDeletion, DriverError> {
        let target = Target {
            release: namespace,
            namespace,
            identity,
        };
        self.record("delete-namespace", target);
        let mut state = self.state();
        Ok(match state.namespaces.get(namespace) {
            None => NamespaceDeletion::Deleted,
            Some(Some(created_for)) if created_for == owner => {
                state.namespaces.remove(namespace);
                NamespaceDeletion::Deleted
            }
            Some(_) => NamespaceDeletion::NotOwned,
        })
    }
}
