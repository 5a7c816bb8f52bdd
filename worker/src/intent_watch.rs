//! One watch of `helmq_intents` per worker, shared by its jobs ([`IntentWatch`]): a job
//! registers its object's key and position before it reads the intent, and learns when a newer
//! intent is recorded for that object (its run is then cancelled), without a consumer of its
//! own on the server.
//!
//! The watch delivers updates from the moment it starts; when it breaks it starts again from
//! the revision after the last one it delivered. While it is down, a job is not told of a
//! newer intent and simply runs on, as it did before runs could be cancelled.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::exclusivity::KvError;
use crate::policy::{Intent, Precedence};
use helmq_telemetry::retry::pause;

/// How long the watch waits before it starts again after it broke.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// The jobs waiting for newer intents, by intents key.
#[derive(Debug, Default)]
struct Waiters {
    next_id: u64,
    by_key: HashMap<String, Vec<Waiter>>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    position: Precedence,
    tell: oneshot::Sender<Precedence>,
}

/// The worker's shared watch of the intents bucket; clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct IntentWatch {
    waiters: Arc<Mutex<Waiters>>,
    stop: CancellationToken,
}

impl IntentWatch {
    /// Starts watching `bucket` (the watch is in place when this returns) and keeps at it
    /// until [`IntentWatch::stop`].
    pub(crate) async fn start(bucket: kv::Store) -> Result<IntentWatch, KvError> {
        let entries = bucket.watch_all().await.map_err(|e| KvError::Request {
            action: "watch",
            key: ">".into(),
            source: e.into(),
        })?;
        let watch = IntentWatch::default();
        tokio::spawn(watch.clone().run(bucket, entries));
        Ok(watch)
    }

    /// Stops the watch.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves with the newer position once an intent newer than `position` is recorded
    /// under `key` after this call.
    pub(crate) fn newer_than(&self, key: &str, position: Precedence) -> Newer {
        let (tell, told) = oneshot::channel();
        let mut waiters = self.waiters();
        let id = waiters.next_id;
        waiters.next_id += 1;
        waiters
            .by_key
            .entry(key.to_owned())
            .or_default()
            .push(Waiter { id, position, tell });
        Newer {
            watch: self.clone(),
            key: key.to_owned(),
            id,
            told,
        }
    }

    /// Tells the jobs waiting on `key` whose position `value` (an intent) outranks.
    fn dispatch(&self, key: &str, value: &[u8]) {
        let mut waiters = self.waiters();
        // Most updates are other workers' jobs': nothing to decode.
        let Some(list) = waiters.by_key.get_mut(key) else {
            return;
        };
        let Ok(intent) = serde_json::from_slice::<Intent>(value) else {
            // A purge, or an owner record: not an intent.
            return;
        };
        let newer = intent.precedence();
        for waiter in list.extract_if(.., |w| w.position < newer) {
            let _ = waiter.tell.send(newer);
        }
        if list.is_empty() {
            waiters.by_key.remove(key);
        }
    }

    fn forget(&self, key: &str, id: u64) {
        let mut waiters = self.waiters();
        if let Some(list) = waiters.by_key.get_mut(key) {
            list.retain(|w| w.id != id);
            if list.is_empty() {
                waiters.by_key.remove(key);
            }
        }
    }

    async fn run(self, bucket: kv::Store, mut entries: kv::Watch) {
        let stop = self.stop.clone();
        let mut last = None;
        loop {
            loop {
                let entry = tokio::select! {
                    () = stop.cancelled() => return,
                    entry = entries.next() => entry,
                };
                match entry {
                    Some(Ok(entry)) => {
                        last = Some(entry.revision);
                        self.dispatch(&entry.key, &entry.value);
                    }
                    Some(Err(error)) => warn!(%error, "the intents watch failed an entry"),
                    None => break,
                }
            }
            loop {
                if !pause(&stop, RESTART_PAUSE).await {
                    return;
                }
                let restarted = match last {
                    Some(revision) => bucket.watch_all_from_revision(revision + 1).await,
                    None => bucket.watch_all().await,
                };
                match restarted {
                    Ok(watch) => {
                        entries = watch;
                        break;
                    }
                    Err(error) => warn!(%error, "cannot watch the intents again; retrying"),
                }
            }
        }
    }
}

/// A job's interest in newer intents of its object (see [`IntentWatch::newer_than`]);
/// dropping it ends the interest. Pends for ever when the watch is gone.
#[derive(Debug)]
pub(crate) struct Newer {
    watch: IntentWatch,
    key: String,
    id: u64,
    told: oneshot::Receiver<Precedence>,
}

impl Future for Newer {
    type Output = Precedence;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Precedence> {
        match Pin::new(&mut self.told).poll(cx) {
            Poll::Ready(Ok(newer)) => Poll::Ready(newer),
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Newer {
    fn drop(&mut self) {
        self.watch.forget(&self.key, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt as _;
    use helmq_schemas::event::JobAction;

    fn intent(generation: i64, action: JobAction) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "generation": generation, "action": action, "jobId": "j", "outcome": "running"
        }))
        .unwrap()
    }

    fn at(generation: i64) -> Precedence {
        Precedence {
            generation,
            action: JobAction::Apply,
            refresh: 0,
        }
    }

    #[test]
    fn only_a_newer_intent_of_the_same_key_tells_a_waiter_and_dropping_forgets_it() {
        let watch = IntentWatch::default();
        let mut waiting = watch.newer_than("ns.web", at(2));
        let other = watch.newer_than("ns.api", at(1));
        // The same position, an older one, another key's, a purge and an owner record: nothing.
        for (key, value) in [
            ("ns.web", intent(2, JobAction::Apply)),
            ("ns.web", intent(1, JobAction::Delete)),
            ("ns.db", intent(9, JobAction::Apply)),
            ("ns.web", Vec::new()),
            (
                "_release.ns.web",
                br#"{"namespace":"ns","name":"x","uid":""}"#.to_vec(),
            ),
        ] {
            watch.dispatch(key, &value);
        }
        assert_eq!((&mut waiting).now_or_never(), None);
        // The delete of the same generation outranks its apply.
        watch.dispatch("ns.web", &intent(2, JobAction::Delete));
        assert_eq!(
            (&mut waiting).now_or_never(),
            Some(Precedence {
                generation: 2,
                action: JobAction::Delete,
                refresh: 0,
            })
        );
        drop(waiting);
        assert_eq!(watch.waiters().by_key.len(), 1, "ns.api still waits");
        drop(other);
        // Told or dropped: nothing is left behind.
        assert!(watch.waiters().by_key.is_empty(), "{:?}", watch.waiters());
    }
}
