//! The fault-injection suite (issue 13): one scenario per module, each injecting one fault
//! against real `nats-server` processes, the real worker binaries or pools and the real status
//! writer over the in-memory API server, then checking helmq's promises from what it recorded
//! (every Helm run's start and end per release, the status events, the dead letters and the
//! final Component statuses) with the pure checks of [`helmq_tests::faults`].
//!
//! Every scenario is `#[ignore]`d so `just test` stays fast: `just faults` runs them one at a
//! time, then renders `docs/RELIABILITY.md` from the rows they write to
//! `target/faults/rows/NN.json`. A scenario that cannot run here writes a row saying why and
//! prints `SKIP: reason`.

mod support;

mod api_faults;
mod cluster;
mod duplicates;
mod failover;
mod nats_restart;
mod partition;
mod stall;
mod worker_crash;
mod writer_down;
