//! [`Queue`]: a view of the case's own `nats-server`: its URL, a JetStream context, and what
//! the jobs, status and dead-letter streams hold.

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, Context};
use helmq_queue::topology::{DLQ_STREAM, JOBS_STREAM, STATUS_STREAM, Topology};
use helmq_schemas::event::StatusEvent;
use helmq_schemas::subject::status_subject;
use helmq_tests::NatsServer;

use super::{binary, run_ok};

/// The case's `nats-server` and the Components' namespace its status events are read for.
pub(crate) struct Queue {
    nats: NatsServer,
    namespace: String,
}

impl Queue {
    /// Starts a `nats-server` and creates the queue topology: `helmqctl setup` with the
    /// defaults, or `topology` with its tunables.
    pub(super) async fn start(topology: Option<&Topology>, namespace: &str) -> Queue {
        let nats = NatsServer::start();
        match topology {
            None => {
                let ctl = binary("helmqctl");
                run_ok(
                    ctl.to_str().expect("utf-8 path"),
                    &["--nats-url", nats.url(), "setup"],
                )
                .await;
            }
            Some(topology) => {
                let js = jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"));
                topology.ensure(&js).await.expect("create the topology");
            }
        }
        Queue {
            nats,
            namespace: namespace.to_owned(),
        }
    }

    /// The URL of the case's own `nats-server`.
    pub(crate) fn nats_url(&self) -> &str {
        self.nats.url()
    }

    /// The process id of the `nats-server`, while it runs.
    pub(crate) fn nats_pid(&self) -> Option<u32> {
        self.nats.pid()
    }

    /// A JetStream context on the case's NATS.
    pub(crate) async fn jetstream(&self) -> Context {
        jetstream::new(
            async_nats::connect(self.nats.url())
                .await
                .expect("connect to NATS"),
        )
    }

    /// The state of stream `name`.
    async fn state(&self, name: &str) -> jetstream::stream::State {
        let mut stream = self
            .jetstream()
            .await
            .get_stream(name)
            .await
            .unwrap_or_else(|e| panic!("stream {name}: {e}"));
        stream
            .info()
            .await
            .unwrap_or_else(|e| panic!("info of stream {name}: {e}"))
            .state
            .clone()
    }

    /// Messages in the dead-letter stream.
    pub(crate) async fn dead_letters(&self) -> u64 {
        self.state(DLQ_STREAM).await.messages
    }

    /// Sequence of the last job JetStream accepted into `HELMQ_JOBS` (jobs ever published,
    /// duplicates dropped by `Nats-Msg-Id` not counted).
    pub(crate) async fn jobs_published(&self) -> u64 {
        self.state(JOBS_STREAM).await.last_sequence
    }

    /// Every status event of one Component of the case's namespace so far, oldest first.
    pub(crate) async fn status_events(&self, name: &str) -> Vec<StatusEvent> {
        self.status_events_in(&self.namespace, name).await
    }

    /// Every status event published for `namespace/name` so far, oldest first (also for
    /// orchestrator jobs, which name no Component).
    pub(crate) async fn status_events_in(&self, namespace: &str, name: &str) -> Vec<StatusEvent> {
        let subject = status_subject(namespace, name);
        self.messages(&[STATUS_STREAM])
            .await
            .into_iter()
            .filter(|message| message.subject.as_str() == subject)
            .map(|message| serde_json::from_slice(&message.payload).expect("a status event"))
            .collect()
    }

    /// Every message still stored in the jobs, status and dead-letter streams.
    pub(crate) async fn stored_messages(&self) -> Vec<StreamMessage> {
        self.messages(&[JOBS_STREAM, STATUS_STREAM, DLQ_STREAM])
            .await
    }

    /// Every message still stored in `streams`, stream by stream, oldest first.
    async fn messages(&self, streams: &[&str]) -> Vec<StreamMessage> {
        let js = self.jetstream().await;
        let mut messages = Vec::new();
        for name in streams {
            let mut stream = js.get_stream(*name).await.expect("stream");
            let state = stream.info().await.expect("stream info").state.clone();
            for seq in state.first_sequence..=state.last_sequence {
                if let Ok(message) = stream.get_raw_message(seq).await {
                    messages.push(message);
                }
            }
        }
        messages
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("nats", &self.nats.url())
            .finish_non_exhaustive()
    }
}
