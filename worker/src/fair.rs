//! Fair scheduling of one worker's deliveries across tenants, as pure decisions: which parked
//! delivery a free slot starts next. No NATS here: `parking` holds a [`Fair`] of messages and
//! the pool's slots ask it.
//!
//! A delivery arrives with its tenant (the namespace token of its subject), its [`Class`] and
//! its stream sequence, and is parked in its tenant's queue of its class (FIFO by sequence).
//! [`Fair::next`] starts the next one: [`Class::Urgent`] (applies, deletes) always before
//! [`Class::Background`] (drift checks), round robin across the tenants of a class, and never
//! past a limit: at most [`Limits::tenant`] running jobs of one tenant, at most
//! [`Limits::checks`] running Background jobs (0: no limit). A delivery whose tenant or class is
//! at its limit stays parked while slots pull past it, up to [`Limits::parked`] parked
//! deliveries ([`Fair::has_room`]).

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::Deserialize;

/// How soon a delivery should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// An apply or a delete: what a user or an orchestrator is waiting for.
    Urgent,
    /// A drift check: runs when no Urgent job can.
    Background,
}

/// The one field of a job's payload the scheduler reads; every other field is ignored.
#[derive(Deserialize)]
struct Peek {
    #[serde(default, rename = "driftCheck")]
    drift_check: bool,
}

impl Class {
    /// The class of a job's payload: Background for a drift check (`"driftCheck": true`),
    /// else Urgent; a payload that does not parse is Urgent, so admission dead-letters it at
    /// once as for any other bad input.
    pub(crate) fn of(payload: &[u8]) -> Class {
        match serde_json::from_slice::<Peek>(payload) {
            Ok(Peek { drift_check: true }) => Class::Background,
            _ => Class::Urgent,
        }
    }

    fn index(self) -> usize {
        match self {
            Class::Urgent => 0,
            Class::Background => 1,
        }
    }
}

/// The tenant of a job's subject `helmq.jobs.<namespace>.<name>`: its encoded namespace token
/// (one token per namespace, so no decoding is needed); the whole subject when it has another
/// shape (admission refuses such a job).
pub(crate) fn tenant_of(subject: &str) -> &str {
    let mut tokens = subject.split('.');
    match (tokens.next(), tokens.next(), tokens.next()) {
        (Some(_), Some(_), Some(namespace)) => namespace,
        _ => subject,
    }
}

/// What the scheduler may not go past. `0` is no limit for the running counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Running jobs of one tenant (`--tenant-concurrency`).
    pub(crate) tenant: usize,
    /// Running Background jobs (`--check-concurrency`).
    pub(crate) checks: usize,
    /// Parked deliveries at which slots stop pulling (`--max-parked`).
    pub(crate) parked: usize,
}

/// `running` is below `limit` (0: no limit).
fn below(running: usize, limit: usize) -> bool {
    limit == 0 || running < limit
}

/// Why a delivery could not start when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Its tenant has `--tenant-concurrency` jobs running here.
    TenantLimit,
    /// `--check-concurrency` Background jobs run here.
    CheckLimit,
}

impl Wait {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Wait::TenantLimit => "tenant-limit",
            Wait::CheckLimit => "check-limit",
        }
    }
}

/// A job's tenant ([`tenant_of`]) and class ([`Class::of`]): its queue while parked, its place
/// in the running counts once started (hand it back to [`Fair::finish`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) tenant: String,
    pub(crate) class: Class,
}

/// A delivery handed to the scheduler: whose and how urgent, its stream sequence (the order
/// within its tenant's queue) and what the caller keeps with it (the message).
#[derive(Debug)]
pub(crate) struct Arrival<T> {
    pub(crate) ticket: Ticket,
    pub(crate) sequence: u64,
    pub(crate) item: T,
}

/// Parked deliveries per class and tenant, and what runs.
#[derive(Debug)]
pub(crate) struct Fair<T> {
    limits: Limits,
    /// Per class: tenant → stream sequence → item.
    queues: [BTreeMap<String, BTreeMap<u64, T>>; 2],
    /// Per class: the tenant started last (round robin goes on after it).
    last: [Option<String>; 2],
    /// Running jobs per tenant (both classes); tenants with none are absent.
    running: BTreeMap<String, usize>,
    /// Running Background jobs.
    checks: usize,
    parked: usize,
    closed: bool,
}

impl<T> Fair<T> {
    /// An empty scheduler with `limits`.
    pub(crate) fn new(limits: Limits) -> Fair<T> {
        Fair {
            limits,
            queues: [BTreeMap::new(), BTreeMap::new()],
            last: [None, None],
            running: BTreeMap::new(),
            checks: 0,
            parked: 0,
            closed: false,
        }
    }

    /// Parked deliveries.
    pub(crate) fn parked(&self) -> usize {
        self.parked
    }

    /// Whether a slot may pull another delivery: fewer than [`Limits::parked`] are parked and
    /// the scheduler is not closed.
    pub(crate) fn has_room(&self) -> bool {
        !self.closed && self.parked < self.limits.parked.max(1)
    }

    /// Why a job of `tenant` and `class` cannot start now; `None` when it can.
    fn wait(&self, tenant: &str, class: Class) -> Option<Wait> {
        let running = self.running.get(tenant).copied().unwrap_or(0);
        if !below(running, self.limits.tenant) {
            Some(Wait::TenantLimit)
        } else if class == Class::Background && !below(self.checks, self.limits.checks) {
            Some(Wait::CheckLimit)
        } else {
            None
        }
    }

    /// Parks a delivery; says why it cannot start now (`None`: it can, when its turn comes).
    /// Once [`closed`](Self::close), hands the item back: the caller gives it back to the
    /// stream.
    pub(crate) fn park(&mut self, arrival: Arrival<T>) -> Result<Option<Wait>, T> {
        if self.closed {
            return Err(arrival.item);
        }
        let Ticket { tenant, class } = arrival.ticket;
        let wait = self.wait(&tenant, class);
        let queue = self.queues[class.index()].entry(tenant).or_default();
        if queue.insert(arrival.sequence, arrival.item).is_none() {
            self.parked += 1;
        }
        Ok(wait)
    }

    /// The next tenant of `class`, round robin after the one started last, whose job may start.
    fn pick(&self, class: Class) -> Option<String> {
        let queues = &self.queues[class.index()];
        let (after, upto) = match &self.last[class.index()] {
            Some(last) => (
                queues.range::<str, _>((Bound::Excluded(last.as_str()), Bound::Unbounded)),
                queues.range::<str, _>((Bound::Unbounded, Bound::Included(last.as_str()))),
            ),
            None => (
                queues.range::<str, _>(..),
                queues.range::<str, _>((Bound::Unbounded, Bound::Excluded(""))),
            ),
        };
        after
            .chain(upto)
            .find(|(tenant, _)| self.wait(tenant, class).is_none())
            .map(|(tenant, _)| tenant.clone())
    }

    /// Whether a parked delivery may start now.
    pub(crate) fn ready(&self) -> bool {
        !self.closed
            && (self.pick(Class::Urgent).is_some() || self.pick(Class::Background).is_some())
    }

    /// Starts the next job: Urgent before Background, round robin across tenants, the oldest
    /// of the tenant first, within the limits; counts it as running. `None` when nothing parked
    /// may start (or the scheduler is closed).
    pub(crate) fn next(&mut self) -> Option<(Ticket, T)> {
        if self.closed {
            return None;
        }
        let (class, tenant) = [Class::Urgent, Class::Background]
            .into_iter()
            .find_map(|class| Some((class, self.pick(class)?)))?;
        let queues = &mut self.queues[class.index()];
        let queue = queues.get_mut(&tenant)?;
        let (_, item) = queue.pop_first()?;
        if queue.is_empty() {
            queues.remove(&tenant);
        }
        self.parked -= 1;
        *self.running.entry(tenant.clone()).or_default() += 1;
        if class == Class::Background {
            self.checks += 1;
        }
        self.last[class.index()] = Some(tenant.clone());
        Some((Ticket { tenant, class }, item))
    }

    /// A started job ended: its tenant and class may start another.
    pub(crate) fn finish(&mut self, ticket: Ticket) {
        if let Some(running) = self.running.get_mut(&ticket.tenant) {
            *running -= 1;
            if *running == 0 {
                self.running.remove(&ticket.tenant);
            }
        }
        if ticket.class == Class::Background {
            self.checks = self.checks.saturating_sub(1);
        }
    }

    /// Every parked item (for their Progress acks).
    pub(crate) fn items(&self) -> impl Iterator<Item = &T> {
        self.queues
            .iter()
            .flat_map(BTreeMap::values)
            .flat_map(BTreeMap::values)
    }

    /// Closes the scheduler (shutdown): nothing more starts or parks; returns every parked
    /// item, to be given back.
    pub(crate) fn close(&mut self) -> Vec<T> {
        self.closed = true;
        self.parked = 0;
        self.queues
            .iter_mut()
            .flat_map(std::mem::take)
            .flat_map(|(_, queue)| queue.into_values())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items are `"<tenant><sequence>"`, a `!` suffix for Background.
    fn arrival(tenant: &str, sequence: u64, class: Class) -> Arrival<String> {
        let mark = if class == Class::Background { "!" } else { "" };
        Arrival {
            ticket: Ticket {
                tenant: tenant.into(),
                class,
            },
            sequence,
            item: format!("{tenant}{sequence}{mark}"),
        }
    }

    fn fair(tenant: usize, checks: usize, parked: usize) -> Fair<String> {
        Fair::new(Limits {
            tenant,
            checks,
            parked,
        })
    }

    /// Parks `(tenant, sequence, class)` in order and returns the wait of each.
    fn park_all(fair: &mut Fair<String>, jobs: &[(&str, u64, Class)]) -> Vec<Option<Wait>> {
        jobs.iter()
            .map(|(tenant, sequence, class)| fair.park(arrival(tenant, *sequence, *class)).unwrap())
            .collect()
    }

    /// Starts jobs until none may start; returns their items, and keeps their tickets.
    fn start_all(fair: &mut Fair<String>, tickets: &mut Vec<Ticket>) -> Vec<String> {
        std::iter::from_fn(|| fair.next())
            .map(|(ticket, item)| {
                tickets.push(ticket);
                item
            })
            .collect()
    }

    use Class::{Background as B, Urgent as U};

    #[test]
    fn tenants_take_turns_and_each_runs_its_jobs_in_stream_order() {
        let mut fair = fair(0, 0, 100);
        park_all(
            &mut fair,
            &[
                ("a", 1, U),
                ("a", 2, U),
                ("a", 3, U),
                ("b", 5, U),
                ("c", 7, U),
                ("b", 4, U),
            ],
        );
        let mut tickets = Vec::new();
        assert_eq!(
            start_all(&mut fair, &mut tickets),
            ["a1", "b4", "c7", "a2", "b5", "a3"]
        );
        assert_eq!(fair.parked(), 0);
    }

    #[test]
    fn urgent_jobs_start_before_background_ones_whatever_their_order() {
        let mut fair = fair(0, 0, 100);
        park_all(
            &mut fair,
            &[("a", 1, B), ("b", 2, B), ("a", 3, U), ("c", 4, U)],
        );
        let mut tickets = Vec::new();
        assert_eq!(
            start_all(&mut fair, &mut tickets),
            ["a3", "c4", "a1!", "b2!"]
        );
    }

    /// Parks `jobs`, then starts what may start: the waits of the parked, the items started.
    fn step(
        fair: &mut Fair<String>,
        tickets: &mut Vec<Ticket>,
        jobs: &[(&str, u64, Class)],
    ) -> (Vec<Option<Wait>>, Vec<String>) {
        let waits = park_all(fair, jobs);
        (waits, start_all(fair, tickets))
    }

    #[test]
    fn a_tenant_at_its_limit_waits_while_others_start() {
        let mut fair = fair(2, 0, 100);
        let mut tickets = Vec::new();
        let (waits, started) = step(&mut fair, &mut tickets, &[("a", 1, U), ("a", 2, U)]);
        assert_eq!(
            (waits, started),
            (vec![None, None], vec!["a1".into(), "a2".into()])
        );
        // a has 2 running: its next jobs are parked with the reason; b's is not held back.
        let (waits, started) = step(
            &mut fair,
            &mut tickets,
            &[("a", 3, U), ("a", 4, U), ("b", 5, U)],
        );
        assert_eq!(
            waits,
            [Some(Wait::TenantLimit), Some(Wait::TenantLimit), None]
        );
        assert_eq!((started, fair.parked()), (vec!["b5".to_owned()], 2));
        // One of a's ends: exactly one more of a's starts, the oldest.
        for next in ["a3", "a4"] {
            fair.finish(tickets.remove(0));
            assert_eq!(start_all(&mut fair, &mut tickets), [next]);
        }
        assert_eq!(fair.parked(), 0);
    }

    #[test]
    fn background_jobs_are_held_to_the_check_limit_and_the_tenant_limit() {
        let mut fair = fair(2, 1, 100);
        let mut tickets = Vec::new();
        let (waits, started) = step(&mut fair, &mut tickets, &[("a", 1, B), ("b", 2, B)]);
        assert_eq!((waits, started), (vec![None, None], vec!["a1!".into()]));
        // Urgent jobs are not held by the check limit.
        let (waits, started) = step(&mut fair, &mut tickets, &[("c", 3, B), ("c", 4, U)]);
        assert_eq!(
            (waits, started),
            (vec![Some(Wait::CheckLimit), None], vec!["c4".into()])
        );
        // The check ends: the next check in turn (after a: b) starts.
        fair.finish(tickets.remove(0));
        assert_eq!(start_all(&mut fair, &mut tickets), ["b2!"]);
        // A tenant's checks count toward its tenant limit too.
        let mut fair = fair_with_running("a", 2);
        let wait = fair.park(arrival("a", 9, B)).unwrap();
        assert_eq!(wait, Some(Wait::TenantLimit));
    }

    /// A scheduler (tenant limit 2, no check limit) with `count` jobs of `tenant` running.
    fn fair_with_running(tenant: &str, count: u64) -> Fair<String> {
        let mut fair = fair(2, 0, 100);
        for sequence in 0..count {
            fair.park(arrival(tenant, sequence, U)).unwrap();
            fair.next().unwrap();
        }
        fair
    }

    #[test]
    fn no_limits_start_every_job_at_once_in_arrival_order_per_tenant() {
        let mut fair = fair(0, 0, 1000);
        let mut tickets = Vec::new();
        for sequence in 0..50 {
            let tenant = if sequence % 10 == 0 { "b" } else { "a" };
            assert_eq!(fair.park(arrival(tenant, sequence, U)).unwrap(), None);
            let (ticket, item) = fair.next().unwrap();
            assert_eq!(item, format!("{tenant}{sequence}"));
            tickets.push(ticket);
        }
        assert_eq!(fair.parked(), 0);
        for ticket in tickets {
            fair.finish(ticket);
        }
        assert!(fair.running.is_empty() && fair.checks == 0);
    }

    #[test]
    fn slots_stop_pulling_at_the_parked_cap() {
        let mut fair = fair(1, 0, 3);
        fair.park(arrival("a", 0, U)).unwrap();
        let (ticket, _) = fair.next().unwrap();
        for sequence in 1..=2 {
            fair.park(arrival("a", sequence, U)).unwrap();
            assert!(fair.has_room(), "{sequence} parked");
        }
        fair.park(arrival("a", 3, U)).unwrap();
        assert!(!fair.has_room() && !fair.ready());
        fair.finish(ticket);
        assert!(fair.ready());
        assert_eq!(fair.next().map(|(_, item)| item).as_deref(), Some("a1"));
        assert!(fair.has_room());
    }

    #[test]
    fn closing_hands_back_every_parked_item_and_refuses_more() {
        let mut fair = fair(1, 0, 100);
        park_all(&mut fair, &[("a", 1, U), ("a", 2, U), ("b", 3, B)]);
        let (_running, _) = fair.next().unwrap();
        let mut items: Vec<String> = fair.items().cloned().collect();
        items.sort();
        assert_eq!(items, ["a2", "b3!"]);
        let mut back = fair.close();
        back.sort();
        assert_eq!(back, ["a2", "b3!"]);
        assert_eq!(fair.parked(), 0);
        assert!(!fair.has_room());
        assert!(fair.next().is_none());
        assert_eq!(fair.park(arrival("c", 4, U)), Err("c4".to_owned()));
    }

    #[test]
    fn a_redelivery_goes_back_to_its_place_in_its_tenants_queue() {
        let mut fair = fair(1, 0, 100);
        let (running, _) = {
            fair.park(arrival("a", 1, U)).unwrap();
            fair.next().unwrap()
        };
        park_all(&mut fair, &[("a", 5, U), ("a", 3, U)]);
        fair.finish(running);
        assert_eq!(fair.next().map(|(_, item)| item).as_deref(), Some("a3"));
    }

    #[test]
    fn payloads_and_subjects_give_the_class_and_the_tenant() {
        let cases: [(&[u8], Class); 5] = [
            (br#"{"action":"apply","driftCheck":true}"#, B),
            (br#"{"action":"apply","driftCheck":false}"#, U),
            (br#"{"action":"delete"}"#, U),
            (b"not json", U),
            (br#"{"driftCheck":"yes"}"#, U),
        ];
        for (payload, class) in cases {
            assert_eq!(
                Class::of(payload),
                class,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        assert_eq!(tenant_of("helmq.jobs.team-a.web"), "team-a");
        assert_eq!(tenant_of("helmq.jobs._2Eodd.web"), "_2Eodd");
        assert_eq!(tenant_of("odd"), "odd");
        assert_eq!(Wait::TenantLimit.as_str(), "tenant-limit");
        assert_eq!(Wait::CheckLimit.as_str(), "check-limit");
    }
}
