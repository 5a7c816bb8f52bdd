//! `just bench`: measures helmq on this machine and says how far it is from its targets
//! (issue 14). A program that measures and prints; nothing here is a timed test.
//!
//! One run starts its own `nats-server` (file storage; a fresh one per phase) and measures:
//! the raw JetStream baseline ([`phase::raw`]), the pipeline's throughput and dispatch latency
//! with Helm and Kubernetes in memory ([`phase::pipeline`]), scaling over worker processes
//! ([`phase::scaling`]), fairness across tenants ([`phase::fairness`]), the cost of `HelmCli`
//! per job ([`phase::helmcli`]) and the peak memory of the worker and producer processes
//! ([`phase::memory`]). [`report`] prints the table and
//! writes `summary.json`.
//!
//! Every error ends the run with its message (a bench has no caller that could recover), so
//! the phases return `anyhow` errors.
//!
//! Modules: [`jobs`] (generated work), [`probe`] (per-job timestamps), [`driver`] (Helm in
//! memory), [`store`] (the in-memory API server, timed), [`child`] (processes the bench starts,
//! and the `bench worker` / `bench producer` entry points), `helmq_tests::procfs` (peak RSS and CPU time),
//! [`stats`] (percentiles), [`env`](mod@env) (a server per phase, CPU accounting).
// No production function over 80 lines of code (clippy.toml); tests may be longer tables.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod child;
pub mod driver;
pub mod env;
pub mod jobs;
pub mod phase;
pub mod probe;
pub mod report;
pub mod run;
pub mod stats;
pub mod store;

use std::path::{Path, PathBuf};

use crate::child::Proc;

/// What a run works with.
#[derive(Debug, Clone)]
pub struct Context {
    /// The `nats-server` binary.
    pub nats_server: PathBuf,
    /// This binary (re-run as `bench worker` / `bench producer`).
    pub bench_bin: PathBuf,
    /// The real `helmq-worker` binary.
    pub worker_bin: PathBuf,
    /// The helm stand-in script.
    pub helm_stand_in: PathBuf,
    /// Where logs and the summary go.
    pub out_dir: PathBuf,
    /// Counts divided by ten and a 4 s latency run: to try the bench itself, not to measure.
    pub quick: bool,
    /// Worker pools in the in-process pipeline.
    pub pools: usize,
    /// Slots per pool in the in-process pipeline.
    pub slots: usize,
}

impl Context {
    /// `full` jobs, or a tenth of them in a quick run.
    pub fn count(&self, full: usize) -> usize {
        if self.quick { full / 10 } else { full }
    }

    /// The log file of `name` in the output directory.
    pub fn log(&self, name: &str) -> PathBuf {
        self.out_dir.join("logs").join(format!("{name}.log"))
    }

    /// Starts `program` with `args` as `label`, its output in [`Context::log`] of `label`.
    pub fn spawn(&self, label: &str, program: &Path, args: &[String]) -> anyhow::Result<Proc> {
        Proc::spawn(label, program, args, &[], &self.log(label))
    }
}
