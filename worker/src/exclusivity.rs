//! Exclusivity and latest intent on JetStream KV.
//!
//! - [`Leases`] (`helmq_leases`): one key per release. Acquire = `create` (fails while someone
//!   holds it), renew = `update` at the revision we hold, release = purge at that revision. The
//!   bucket's `max_age` is the lease lifetime: a dead worker's lease expires and another worker
//!   takes it over with a plain `create`.
//! - [`Intents`] (`helmq_intents`): one key per Component holding the newest job seen and how it
//!   ended, updated with compare-and-set; [`Intents::claim`] decides whether a job still runs.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use futures::StreamExt as _;

use helmq_queue::topology::{INTENTS_BUCKET, LEASES_BUCKET};
use helmq_schemas::event::{JobEvent, StatusEvent};

use crate::policy::{Decision, Intent, Outcome, Position, decide};

/// Errors talking to the KV buckets.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The bucket is not there.
    #[error("cannot open KV bucket {bucket}: {reason}")]
    Open {
        /// The bucket.
        bucket: &'static str,
        /// What the server said.
        reason: String,
    },
    /// A read or write failed (connection, timeout).
    #[error("KV {action} of {key} failed: {reason}")]
    Request {
        /// What was done.
        action: &'static str,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Our lease was taken over (it expired before we renewed it).
    #[error("lease {0} was lost")]
    LeaseLost(String),
}

fn request(action: &'static str, key: &str) -> impl FnOnce(String) -> KvError {
    let key = key.to_owned();
    move |reason| KvError::Request {
        action,
        key,
        reason,
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
}

impl Leases {
    /// Opens the bucket and reads the lease lifetime from its `max_age`.
    pub async fn open(js: &Context) -> Result<Leases, KvError> {
        let kv = js
            .get_key_value(LEASES_BUCKET)
            .await
            .map_err(|e| KvError::Open {
                bucket: LEASES_BUCKET,
                reason: e.to_string(),
            })?;
        let ttl = kv
            .status()
            .await
            .map(|s| s.info.config.max_age)
            .map_err(|e| KvError::Open {
                bucket: LEASES_BUCKET,
                reason: e.to_string(),
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
        match self.kv.create(key, holder.to_owned().into()).await {
            Ok(revision) => Ok(Some(Lease {
                key: key.to_owned(),
                revision,
            })),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(request("create", key)(e.to_string())),
        }
    }

    /// Extends the lease; [`KvError::LeaseLost`] when someone else took it.
    pub async fn renew(&self, lease: &Lease, holder: &str) -> Result<Lease, KvError> {
        match self
            .kv
            .update(&lease.key, holder.to_owned().into(), lease.revision)
            .await
        {
            Ok(revision) => Ok(Lease {
                key: lease.key.clone(),
                revision,
            }),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                Err(KvError::LeaseLost(lease.key.clone()))
            }
            Err(e) => Err(request("update", &lease.key)(e.to_string())),
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
            Err(e) if e.to_string().contains("wrong last sequence") => Ok(()),
            Err(e) => Err(request("purge", &lease.key)(e.to_string())),
        }
    }
}

/// The latest intent per Component.
#[derive(Debug, Clone)]
pub struct Intents {
    kv: kv::Store,
}

impl Intents {
    /// Opens the bucket.
    pub async fn open(js: &Context) -> Result<Intents, KvError> {
        let kv = js
            .get_key_value(INTENTS_BUCKET)
            .await
            .map_err(|e| KvError::Open {
                bucket: INTENTS_BUCKET,
                reason: e.to_string(),
            })?;
        Ok(Intents { kv })
    }

    /// The intent under `key` and its revision (an unreadable value counts as none).
    pub async fn get(&self, key: &str) -> Result<Option<(Intent, u64)>, KvError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| request("get", key)(e.to_string()))?;
        Ok(entry.and_then(|e| {
            if e.operation != Operation::Put {
                return None;
            }
            serde_json::from_slice::<Intent>(&e.value)
                .ok()
                .map(|i| (i, e.revision))
        }))
    }

    /// Writes `intent` if the key is still at `revision` (`None`: absent); false on a conflict.
    async fn put_if(
        &self,
        key: &str,
        intent: &Intent,
        revision: Option<u64>,
    ) -> Result<bool, KvError> {
        let value = serde_json::to_vec(intent)
            .map_err(|e| request("encode", key)(e.to_string()))?
            .into();
        match revision {
            None => match self.kv.create(key, value).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(request("create", key)(e.to_string())),
            },
            Some(revision) => match self.kv.update(key, value, revision).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(request("update", key)(e.to_string())),
            },
        }
    }

    /// Decides whether `job` runs, recording it as the newest intent when it is newer.
    pub async fn claim(&self, key: &str, job: &JobEvent) -> Result<Decision, KvError> {
        loop {
            let current = self.get(key).await?;
            let decision = decide(Position::of(job), current.as_ref().map(|(i, _)| i));
            let newer = current
                .as_ref()
                .is_none_or(|(i, _)| Position::of(job) > i.position());
            let same_failed = current.as_ref().is_some_and(|(i, _)| {
                Position::of(job) == i.position() && i.outcome == Outcome::Failed
            });
            if decision != Decision::Run || !(newer || same_failed) {
                return Ok(decision);
            }
            if self
                .put_if(key, &Intent::running(job), current.map(|(_, r)| r))
                .await?
            {
                return Ok(Decision::Run);
            }
        }
    }

    /// Records how `job` ended, unless a newer intent replaced it meanwhile.
    pub async fn finish(
        &self,
        key: &str,
        job: &JobEvent,
        outcome: Outcome,
        status: &StatusEvent,
    ) -> Result<(), KvError> {
        loop {
            let current = self.get(key).await?;
            if let Some((intent, _)) = &current
                && intent.position() != Position::of(job)
            {
                return Ok(());
            }
            let done = Intent {
                outcome,
                last_status: Some(status.clone()),
                ..Intent::running(job)
            };
            if self.put_if(key, &done, current.map(|(_, r)| r)).await? {
                return Ok(());
            }
        }
    }

    /// Resolves with the newer position once an intent newer than `position` is recorded.
    /// Pends forever if the watch cannot be set up or ends (the job then simply runs on).
    pub async fn newer_than(&self, key: &str, position: Position) -> Position {
        match self.kv.watch_with_history(key).await {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    let Ok(entry) = entry else { continue };
                    if let Ok(intent) = serde_json::from_slice::<Intent>(&entry.value)
                        && intent.position() > position
                    {
                        return intent.position();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, key, "cannot watch the intent"),
        }
        std::future::pending().await
    }
}
