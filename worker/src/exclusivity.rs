//! Exclusivity and latest intent on JetStream KV.
//!
//! - [`Leases`] (`helmq_leases`): one key per release. Acquire = `create` (fails while someone
//!   holds it), renew = `update` at the revision we hold, release = purge at that revision. The
//!   bucket's `max_age` is the lease lifetime: a dead worker's lease expires and another worker
//!   takes it over with a plain `create`. A lease's clock starts when its last write was sent
//!   ([`Lease::written_at`]), never later: the server stores the write after that, so the lease
//!   cannot expire before `written_at + ttl`. [`Leases::keep`] runs work under a lease by the
//!   deadlines of [`LeaseTiming`] (see `docs/RELIABILITY.md`, "Exclusivity").
//! - [`Intents`] (`helmq_intents`): one key per Component object ([`intent_key`]: namespace,
//!   name and uid, so an object deleted and created again under the same name starts afresh)
//!   holding the newest job seen and how it ended, updated with compare-and-set;
//!   [`Intents::claim`] decides whether a job still runs. When an object is terminated its
//!   final intent moves to `helmq_tombstones`, whose `max_age` expires it: a late copy of one of
//!   its jobs (redelivered, retried, replayed) is skipped meanwhile, and nothing is kept for ever.
//!   The same bucket holds one owner record per release helmq deployed ([`owner_key`]): the
//!   [`Owner`] of the last run that succeeded on it, so a worker that finds its own Component
//!   there runs Helm at once instead of asking Helm and the API server first (see `Prior` in
//!   `helm_run.rs`).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use helmq_queue::topology::{INTENTS_BUCKET, LEASES_BUCKET, TOMBSTONES_BUCKET};
use helmq_schemas::event::{ComponentRef, JobEvent, StatusEvent};
use helmq_schemas::subject::{component_key, encode_token};

use crate::driver::ReleaseRef;
use crate::ownership::Owner;
use crate::policy::{Decision, Intent, Outcome, Precedence, decide, latest, records};

/// The intents key of a job's target: `<namespace>.<name>.<uid>` (encoded), or
/// `<namespace>.<name>` for an orchestrator's job without a uid. Intents of two objects that
/// shared a name never meet.
pub fn intent_key(component: &ComponentRef) -> String {
    let key = component_key(&component.namespace, &component.name);
    match component.uid.as_deref().filter(|u| !u.is_empty()) {
        Some(uid) => format!("{key}.{}", encode_token(uid)),
        None => key,
    }
}

/// The key of a release's owner record in the intents bucket: `_release.<namespace>.<name>`
/// (encoded). An encoded token never starts with `_r`, so no Component's key is ever one.
pub fn owner_key(release: &ReleaseRef) -> String {
    format!(
        "_release.{}",
        component_key(&release.namespace, &release.release)
    )
}

/// Errors talking to the KV buckets.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The bucket is not there.
    #[error("cannot open KV bucket {bucket}: {source}")]
    Open {
        /// The bucket.
        bucket: &'static str,
        /// What the server said.
        #[source]
        source: BoxError,
    },
    /// A read or write failed (connection, timeout).
    #[error("KV {action} of {key} failed: {source}")]
    Request {
        /// What was done.
        action: &'static str,
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// Our lease was taken over (it expired before we renewed it).
    #[error("lease {0} was lost")]
    LeaseLost(String),
}

/// The error source kept inside a [`KvError`].
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn request<E: Into<BoxError>>(action: &'static str, key: &str) -> impl FnOnce(E) -> KvError {
    let key = key.to_owned();
    move |source| KvError::Request {
        action,
        key,
        source: source.into(),
    }
}

/// The per-release leases.
#[derive(Debug, Clone)]
pub struct Leases {
    kv: kv::Store,
    ttl: Duration,
}

/// A lease we hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The key.
    pub key: String,
    /// The revision we wrote last.
    pub revision: u64,
    /// When that write was sent (taken before sending): the lease lives at least until
    /// `written_at + ttl`, and every deadline of work under it counts from here.
    pub written_at: Instant,
}

/// The lease was taken over, or could not be renewed before work under it had to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseLost;

/// When work under a lease renews it and when it must stop. A run is cancelled at
/// [`LeaseTiming::cancel_at`] (`ttl - grace - margin` after the lease's last write) and is
/// gone `grace` later at most, `margin` before the lease can expire; renewals come every
/// `renew_every`, so a healthy run is never cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// The lease's lifetime without renewal (the bucket's `max_age`).
    pub ttl: Duration,
    /// Time between renewals: a fifth of the TTL.
    pub renew_every: Duration,
    /// How long a cancelled run may go on (`--helm-grace` for `helm`, between SIGTERM and SIGKILL).
    pub grace: Duration,
    /// Slack for scheduling delays and reaping a killed process: a tenth of the TTL.
    pub margin: Duration,
}

/// A lease TTL too short for the renewal period, the run's grace and the margin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the release lease TTL ({ttl:?}, max_age of the {LEASES_BUCKET} bucket) must exceed the renewal period ({renew_every:?}) + --helm-grace ({grace:?}) + a margin of a tenth of the TTL ({margin:?}): lower --helm-grace or re-create the bucket with a longer max_age"
)]
pub struct TimingError {
    ttl: Duration,
    renew_every: Duration,
    grace: Duration,
    margin: Duration,
}

/// Shortest renewal period (a zero period would spin).
const MIN_RENEWAL: Duration = Duration::from_millis(50);
/// Pause before another attempt at a renewal that failed (not lost).
const RENEW_RETRY: Duration = Duration::from_millis(200);

impl LeaseTiming {
    /// The timing of leases that live `ttl`, for runs that end within `grace` of being
    /// cancelled; refused when the run could outlive the lease.
    ///
    /// # Errors
    ///
    /// [`TimingError`] unless `ttl > renew_every + grace + margin`.
    pub fn new(ttl: Duration, grace: Duration) -> Result<LeaseTiming, TimingError> {
        let timing = LeaseTiming {
            ttl,
            renew_every: (ttl / 5).max(MIN_RENEWAL),
            grace,
            margin: ttl / 10,
        };
        if timing.renew_every + timing.grace + timing.margin < timing.ttl {
            Ok(timing)
        } else {
            Err(TimingError {
                ttl,
                renew_every: timing.renew_every,
                grace,
                margin: timing.margin,
            })
        }
    }

    /// When work under a lease written at `written_at` must be cancelled unless the lease was
    /// renewed meanwhile.
    pub fn cancel_at(&self, written_at: Instant) -> Instant {
        written_at + self.ttl - self.grace - self.margin
    }
}

impl Leases {
    /// Opens the bucket and reads the lease lifetime from its `max_age`.
    pub async fn open(js: &Context) -> Result<Leases, KvError> {
        let kv = js
            .get_key_value(LEASES_BUCKET)
            .await
            .map_err(|e| KvError::Open {
                bucket: LEASES_BUCKET,
                source: e.into(),
            })?;
        let ttl = kv
            .status()
            .await
            .map(|s| s.info.config.max_age)
            .map_err(|e| KvError::Open {
                bucket: LEASES_BUCKET,
                source: e.into(),
            })?;
        let ttl = if ttl.is_zero() {
            Duration::from_secs(30)
        } else {
            ttl
        };
        Ok(Leases { kv, ttl })
    }

    /// How long a lease lives without renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lease on `key`; `None` while someone else holds it.
    pub async fn try_acquire(&self, key: &str, holder: &str) -> Result<Option<Lease>, KvError> {
        let written_at = Instant::now();
        match self.kv.create(key, holder.to_owned().into()).await {
            Ok(revision) => Ok(Some(Lease {
                key: key.to_owned(),
                revision,
                written_at,
            })),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(request("create", key)(e)),
        }
    }

    /// Extends the lease; [`KvError::LeaseLost`] when someone else took it.
    pub async fn renew(&self, lease: &Lease, holder: &str) -> Result<Lease, KvError> {
        let written_at = Instant::now();
        match self
            .kv
            .update(&lease.key, holder.to_owned().into(), lease.revision)
            .await
        {
            Ok(revision) => Ok(Lease {
                key: lease.key.clone(),
                revision,
                written_at,
            }),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                Err(KvError::LeaseLost(lease.key.clone()))
            }
            Err(e) => Err(request("update", &lease.key)(e)),
        }
    }

    /// Runs `run` under `lease`. Unless the lease was written less than
    /// [`LeaseTiming::renew_every`] ago, it is renewed with compare-and-set before `run` is
    /// first polled: when that fails (taken over, or not renewed before its cancel deadline),
    /// `run` never starts. Then it is renewed every [`LeaseTiming::renew_every`]; when it is
    /// taken over or cannot be renewed before [`LeaseTiming::cancel_at`], `cancel` is cancelled
    /// and `run` awaited to its end (its process killed within the grace). Returns `run`'s output
    /// or [`LeaseLost`], with the lease as last written.
    pub async fn keep<T>(
        &self,
        lease: Lease,
        holder: &str,
        timing: &LeaseTiming,
        cancel: &CancellationToken,
        run: impl Future<Output = T>,
    ) -> (Result<T, LeaseLost>, Lease) {
        let held = Mutex::new(lease);
        let current =
            |held: &Mutex<Lease>| held.lock().unwrap_or_else(PoisonError::into_inner).clone();
        // A lease written less than a renewal period ago cannot have expired, so nobody can
        // have taken it over: the renewal would only cost a round trip before Helm starts.
        let fresh = current(&held).written_at.elapsed() < timing.renew_every;
        if !fresh && let Err(lost) = self.renew_before_deadline(&held, holder, timing).await {
            return (Err(lost), current(&held));
        }
        let renewals = async {
            loop {
                let next = current(&held).written_at + timing.renew_every;
                tokio::time::sleep_until(next).await;
                if let Err(lost) = self.renew_before_deadline(&held, holder, timing).await {
                    return lost;
                }
            }
        };
        tokio::pin!(run, renewals);
        let result = tokio::select! {
            biased;
            value = &mut run => Ok(value),
            lost = &mut renewals => Err(lost),
        };
        if result.is_err() {
            cancel.cancel();
            // The run's process must be gone before anyone else may take the release.
            let _ = run.await;
        }
        (result, current(&held))
    }

    /// Renews the lease in `held`, retrying until its cancel deadline.
    async fn renew_before_deadline(
        &self,
        held: &Mutex<Lease>,
        holder: &str,
        timing: &LeaseTiming,
    ) -> Result<(), LeaseLost> {
        let lease = held.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let deadline = timing.cancel_at(lease.written_at);
        loop {
            match tokio::time::timeout_at(deadline, self.renew(&lease, holder)).await {
                Ok(Ok(renewed)) => {
                    *held.lock().unwrap_or_else(PoisonError::into_inner) = renewed;
                    return Ok(());
                }
                Ok(Err(KvError::LeaseLost(key))) => {
                    warn!(lease = %key, "release lease taken over");
                    return Err(LeaseLost);
                }
                Ok(Err(e)) => warn!(error = %e, "cannot renew the release lease; retrying"),
                Err(_) => {}
            }
            if Instant::now() + RENEW_RETRY >= deadline {
                warn!(lease = %lease.key, "cannot renew the release lease before it may expire");
                return Err(LeaseLost);
            }
            tokio::time::sleep(RENEW_RETRY).await;
        }
    }

    /// Gives the lease back (a no-op when it is no longer ours).
    pub async fn release(&self, lease: &Lease) -> Result<(), KvError> {
        match self
            .kv
            .purge_expect_revision(&lease.key, Some(lease.revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(request("purge", &lease.key)(e)),
        }
    }
}

/// A Helm run of a job as counted in its intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Its number, from 1: the attempt the budget is measured by.
    pub number: u32,
    /// The intent's revision once the run was counted.
    pub revision: u64,
}

/// The latest intent per Component object, and the final intents of terminated ones.
#[derive(Debug, Clone)]
pub struct Intents {
    kv: kv::Store,
    tombstones: kv::Store,
}

async fn open_bucket(js: &Context, bucket: &'static str) -> Result<kv::Store, KvError> {
    js.get_key_value(bucket).await.map_err(|e| KvError::Open {
        bucket,
        source: e.into(),
    })
}

/// What a key of an intents bucket holds, as read: what a compare-and-set is made against.
#[derive(Debug, Clone, PartialEq)]
pub enum Live {
    /// Nothing was ever written under the key; a write against this expects it still empty.
    Never,
    /// The key's last write holds no intent: the intent was removed when its object ended (or
    /// the value cannot be read), at this revision.
    Ended(u64),
    /// An intent and its revision.
    Intent(Box<Intent>, u64),
}

impl Live {
    /// The intent, when there is one.
    pub fn intent(&self) -> Option<&Intent> {
        match self {
            Live::Intent(intent, _) => Some(intent.as_ref()),
            Live::Never | Live::Ended(_) => None,
        }
    }

    /// The revision a write expects: 0 when the key never had one.
    fn revision(&self) -> u64 {
        match self {
            Live::Never => 0,
            Live::Ended(revision) | Live::Intent(_, revision) => *revision,
        }
    }

    fn into_intent(self) -> Option<(Intent, u64)> {
        match self {
            Live::Intent(intent, revision) => Some((*intent, revision)),
            Live::Never | Live::Ended(_) => None,
        }
    }
}

/// Reads a key of an intents bucket (an unreadable or deleted value holds no intent).
async fn read(store: &kv::Store, key: &str) -> Result<Live, KvError> {
    let entry = store.entry(key).await.map_err(|e| request("get", key)(e))?;
    Ok(match entry {
        None => Live::Never,
        Some(e) => match serde_json::from_slice::<Intent>(&e.value) {
            Ok(intent) if e.operation == Operation::Put => {
                Live::Intent(Box::new(intent), e.revision)
            }
            _ => Live::Ended(e.revision),
        },
    })
}

fn encode_intent(key: &str, intent: &Intent) -> Result<bytes::Bytes, KvError> {
    serde_json::to_vec(intent)
        .map(Into::into)
        .map_err(|e| request("encode", key)(e))
}

impl Intents {
    /// Opens the intents and tombstones buckets.
    pub async fn open(js: &Context) -> Result<Intents, KvError> {
        Ok(Intents {
            kv: open_bucket(js, INTENTS_BUCKET).await?,
            tombstones: open_bucket(js, TOMBSTONES_BUCKET).await?,
        })
    }

    /// The intents bucket, for the worker's shared watch.
    pub(crate) fn bucket(&self) -> kv::Store {
        self.kv.clone()
    }

    /// The live intent under `key` and its revision.
    pub async fn get(&self, key: &str) -> Result<Option<(Intent, u64)>, KvError> {
        Ok(self.live(key).await?.into_intent())
    }

    /// What the live intents bucket holds under `key`, for [`Intents::count_run`].
    pub async fn live(&self, key: &str) -> Result<Live, KvError> {
        read(&self.kv, key).await
    }

    /// The final intent of the terminated object under `key`, while it is kept.
    pub async fn tombstone(&self, key: &str) -> Result<Option<Intent>, KvError> {
        Ok(read(&self.tombstones, key)
            .await?
            .into_intent()
            .map(|(i, _)| i))
    }

    /// The intent a job under `key` is measured against: the live one, or the tombstone when
    /// that is at least as new (see [`latest`]). The tombstone is only read when the live intent
    /// alone would let the job run, so the common paths cost one read.
    pub async fn current(&self, key: &str, job: Precedence) -> Result<Option<Intent>, KvError> {
        let live = self.get(key).await?.map(|(i, _)| i);
        if decide(job, live.as_ref()) != Decision::Run {
            return Ok(live);
        }
        let tombstone = self.tombstone(key).await?;
        Ok(latest(live.as_ref(), tombstone.as_ref()).cloned())
    }

    /// Writes `intent` if the key is still at `revision` (`None`: absent); false on a conflict.
    async fn put_if(
        &self,
        key: &str,
        intent: &Intent,
        revision: Option<u64>,
    ) -> Result<bool, KvError> {
        Ok(self.write_if(key, intent, revision).await?.is_some())
    }

    /// Writes `intent` if the key is still at `revision` (`None`: absent) and returns its new
    /// revision; `None` on a conflict.
    async fn write_if(
        &self,
        key: &str,
        intent: &Intent,
        revision: Option<u64>,
    ) -> Result<Option<u64>, KvError> {
        let value = encode_intent(key, intent)?;
        match revision {
            None => match self.kv.create(key, value).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(request("create", key)(e)),
            },
            Some(revision) => match self.kv.update(key, value, revision).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(request("update", key)(e)),
            },
        }
    }

    /// Decides whether `job` runs, recording it as the newest intent when it is newer.
    pub async fn claim(&self, key: &str, job: &JobEvent) -> Result<Decision, KvError> {
        let position = Precedence::of(job);
        loop {
            let live = self.get(key).await?;
            let live_intent = live.as_ref().map(|(i, _)| i);
            let mut decision = decide(position, live_intent);
            if decision == Decision::Run {
                let tombstone = self.tombstone(key).await?;
                decision = decide(position, latest(live_intent, tombstone.as_ref()));
            }
            if decision != Decision::Run || !records(position, live_intent) {
                return Ok(decision);
            }
            if self
                .put_if(key, &Intent::running(job), live.map(|(_, r)| r))
                .await?
            {
                return Ok(Decision::Run);
            }
        }
    }

    /// Counts a Helm run of `job` and returns its number (from 1), the attempt its budget is
    /// measured by, and the intent's revision after the count; `None` when the live intent is
    /// no longer this job's (a newer one replaced it, or it ended meanwhile).
    pub async fn begin_run(&self, key: &str, job: &JobEvent) -> Result<Option<Run>, KvError> {
        loop {
            let Some((intent, revision)) = self.get(key).await? else {
                return Ok(None);
            };
            if intent.precedence() != Precedence::of(job) || intent.outcome != Outcome::Running {
                return Ok(None);
            }
            if let Some(run) = self
                .count_run(key, job, &Live::Intent(Box::new(intent), revision))
                .await?
            {
                return Ok(Some(run));
            }
        }
    }

    /// Records `job` as its object's running intent and counts a Helm run of it, in one
    /// compare-and-set against `live` (the key as last read: a key that never had an intent
    /// must still have none, not even one written and removed since), for a job [`decide`]
    /// lets run: a job newer than `live` (or rerunning a failed one) starts at run 1, the job
    /// `live` already names counts one more. `None` when the key changed since it was read.
    pub async fn count_run(
        &self,
        key: &str,
        job: &JobEvent,
        live: &Live,
    ) -> Result<Option<Run>, KvError> {
        let intent = match live.intent() {
            Some(intent) if !records(Precedence::of(job), Some(intent)) => Intent {
                runs: intent.runs.saturating_add(1),
                ..intent.clone()
            },
            _ => Intent {
                runs: 1,
                ..Intent::running(job)
            },
        };
        let revision = self.write_if(key, &intent, Some(live.revision())).await?;
        Ok(revision.map(|revision| Run {
            number: intent.runs,
            revision,
        }))
    }

    /// Records how `job` ended, unless a newer intent replaced it meanwhile. A terminated
    /// object's final intent becomes its tombstone and its live intent is removed. `run` is the
    /// job's run as this worker counted it, when it did: while the intent is still at the
    /// revision of that count (the common case) it is written without being read first.
    pub async fn finish(
        &self,
        key: &str,
        job: &JobEvent,
        outcome: Outcome,
        status: &StatusEvent,
        run: Option<Run>,
    ) -> Result<(), KvError> {
        let mut done = Intent {
            outcome,
            last_status: Some(status.clone()),
            ..Intent::running(job)
        };
        if let Some(run) = run {
            done.runs = run.number;
            if self.end_at(key, &done, Some(run.revision)).await? {
                return Ok(());
            }
        }
        loop {
            let current = self.get(key).await?;
            if let Some((intent, _)) = &current {
                if intent.precedence() != Precedence::of(job) {
                    return Ok(());
                }
                done.runs = intent.runs;
            }
            if self.end_at(key, &done, current.map(|(_, r)| r)).await? {
                return Ok(());
            }
        }
    }

    /// Writes the end `done` over the live intent at `revision` (`None`: there is none): for a
    /// terminated object the tombstone, then the live intent's removal; else one
    /// compare-and-set. `false` when the live intent is no longer at that revision.
    async fn end_at(
        &self,
        key: &str,
        done: &Intent,
        revision: Option<u64>,
    ) -> Result<bool, KvError> {
        if done.outcome != Outcome::Terminated {
            return self.put_if(key, done, revision).await;
        }
        // Tombstone first: a copy of the job that arrives between the two writes still finds a
        // record of the object's end.
        self.tombstones
            .put(key, encode_intent(key, done)?)
            .await
            .map_err(|e| request("put tombstone", key)(e))?;
        let Some(revision) = revision else {
            return Ok(true);
        };
        match self.kv.purge_expect_revision(key, Some(revision)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(request("purge", key)(e)),
        }
    }

    /// The owner helmq last deployed `release` for; `None` when there is no (readable) record.
    pub async fn owner(&self, release: &ReleaseRef) -> Result<Option<Owner>, KvError> {
        let key = owner_key(release);
        let entry = self.kv.entry(&key).await.map_err(request("get", &key))?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    /// Records that `release` was deployed for `owner`.
    pub async fn record_owner(&self, release: &ReleaseRef, owner: &Owner) -> Result<(), KvError> {
        let key = owner_key(release);
        let value = serde_json::to_vec(owner).map_err(request("encode", &key))?;
        self.kv
            .put(&key, value.into())
            .await
            .map(drop)
            .map_err(request("put", &key))
    }

    /// Forgets the owner of an uninstalled `release`.
    pub async fn forget_owner(&self, release: &ReleaseRef) -> Result<(), KvError> {
        let key = owner_key(release);
        self.kv.purge(&key).await.map_err(request("purge", &key))
    }
}
