//! The pool's parked deliveries: the [`Fair`] scheduler over pulled messages, shared by the
//! slots behind one mutex. A slot parks what it pulls and starts what [`Parking::next`] gives
//! (the delivery it just pulled, unless a limit holds it or an older one is ready); one task
//! keeps the parked messages alive with Progress acks ([`Parking::keep_alive`]), and at
//! shutdown [`Parking::give_back`] returns every parked message to the stream at once.
//!
//! With no limits nothing waits here: a pulled delivery starts on the slot that pulled it, as
//! before the scheduler existed.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::Message;
use futures::StreamExt as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::context::{Context, Delivery};
use crate::fair::{Arrival, Class, Fair, Limits, Ticket, tenant_of};
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::settle::{Settlement, progress, settle};

/// Parked messages given back at once at shutdown (each a round trip).
const GIVE_BACK_IN_FLIGHT: usize = 64;
/// Shortest period between two sweeps of Progress acks.
const MIN_SWEEP: Duration = Duration::from_millis(100);

/// A pulled delivery, parked.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) message: Message,
    pub(crate) delivery: Delivery,
    /// When it reached the worker.
    arrived: Instant,
}

/// A delivery a slot is to run; hand the ticket back with [`Parking::finish`].
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) ticket: Ticket,
    pub(crate) waiting: Waiting,
}

/// The scheduler's limits as the settings give them.
pub(crate) fn limits(settings: &Settings) -> Limits {
    Limits {
        tenant: settings.tenant_concurrency,
        checks: settings.check_limit(),
        parked: settings.max_parked,
    }
}

/// The shared scheduler, and who waits for it to change.
#[derive(Debug)]
pub(crate) struct Parking {
    fair: Mutex<Fair<Waiting>>,
    /// Told when a job ends or a parked one starts: a slot held at the cap looks again.
    changed: Notify,
    metrics: Metrics,
}

impl Parking {
    /// An empty scheduler with `limits`.
    pub(crate) fn new(limits: Limits, metrics: Metrics) -> Parking {
        Parking {
            fair: Mutex::new(Fair::new(limits)),
            changed: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Fair<Waiting>> {
        // Nothing panics while holding it; a poisoned lock still holds consistent counts.
        self.fair
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Parks a pulled delivery; hands the message back (to be given back to the stream) once
    /// the pool is shutting down.
    pub(crate) fn arrive(&self, message: Message, delivery: Delivery) -> Option<Message> {
        let arrival = Arrival {
            ticket: Ticket {
                tenant: tenant_of(&message.subject).to_owned(),
                class: Class::of(&message.payload),
            },
            sequence: delivery.sequence,
            item: Waiting {
                message,
                delivery,
                arrived: Instant::now(),
            },
        };
        let mut fair = self.lock();
        match fair.park(arrival) {
            Ok(wait) => {
                if let Some(wait) = wait {
                    self.metrics.parked_for(wait);
                }
                self.metrics.parked.set(gauge(fair.parked()));
                None
            }
            Err(waiting) => Some(waiting.message),
        }
    }

    /// The next delivery to run, if one may start.
    pub(crate) fn next(&self) -> Option<Start> {
        let (start, parked) = {
            let mut fair = self.lock();
            let start = fair.next();
            (start, fair.parked())
        };
        let (ticket, waiting) = start?;
        self.metrics.parked.set(gauge(parked));
        self.metrics
            .start_wait
            .observe(waiting.arrived.elapsed().as_secs_f64());
        if parked > 0 {
            self.changed.notify_waiters();
        }
        Some(Start { ticket, waiting })
    }

    /// A started job ended.
    pub(crate) fn finish(&self, ticket: Ticket) {
        let parked = {
            let mut fair = self.lock();
            fair.finish(ticket);
            fair.parked()
        };
        if parked > 0 {
            self.changed.notify_waiters();
        }
    }

    /// Whether a slot may pull another delivery (fewer than `--max-parked` parked).
    pub(crate) fn has_room(&self) -> bool {
        self.lock().has_room()
    }

    /// Waits until a parked delivery may start or a slot may pull again, or `shutdown`.
    pub(crate) async fn wait_for_turn(&self, shutdown: &CancellationToken) {
        let changed = self.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let fair = self.lock();
            if fair.has_room() || fair.ready() {
                return;
            }
        }
        tokio::select! {
            () = changed => {}
            () = shutdown.cancelled() => {}
        }
    }

    /// Sends a Progress ack for every parked message every `every`, so none is redelivered
    /// while it waits (Progress acks do not count toward `max_deliver`), until `shutdown`.
    pub(crate) async fn keep_alive(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(every.max(MIN_SWEEP));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let parked: Vec<Message> = self
                .lock()
                .items()
                .map(|waiting| waiting.message.clone())
                .collect();
            for message in &parked {
                if shutdown.is_cancelled() {
                    return;
                }
                if let Err(e) = progress(message).await {
                    debug!(error = %e, "cannot send a parked job's Progress ack");
                }
            }
        }
    }

    /// Shutdown: nothing more parks or starts; every parked message (never started) goes back
    /// to the stream at once, so no other worker waits for `ack_wait` to get it.
    pub(crate) async fn give_back(&self, ctx: &Context) {
        let parked = self.lock().close();
        self.metrics.parked.set(0);
        self.changed.notify_waiters();
        futures::stream::iter(parked)
            .for_each_concurrent(GIVE_BACK_IN_FLIGHT, |waiting| async move {
                settle(ctx, &waiting.message, Settlement::GIVE_BACK).await;
            })
            .await;
    }
}

fn gauge(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
