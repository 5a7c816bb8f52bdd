//! The phases of a run, each on a fresh server.

pub mod fairness;
pub mod helmcli;
pub mod memory;
pub mod pipeline;
pub mod raw;
pub mod round_trips;
pub mod scaling;

use std::time::Duration;

use crate::Context;
use crate::child::Proc;

/// Flags every worker process of the bench gets: the server, no fixed ports, the bench's
/// allowlist, warnings only (to `<out>/logs/<label>.log`).
fn worker_flags(url: &str, label: &str, slots: usize) -> Vec<String> {
    [
        "--nats-url",
        url,
        "--listen",
        "127.0.0.1:0",
        "--worker-id",
        label,
        "--concurrency",
        &slots.to_string(),
        "--allowed-sources",
        crate::jobs::REPOSITORY,
        "--allowed-namespaces",
        crate::jobs::RELEASE_NAMESPACE,
        "--log",
        "warn",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `bench worker`: the worker's code with Helm in memory, each apply taking `apply_time`.
fn bench_worker(
    ctx: &Context,
    url: &str,
    label: &str,
    slots: usize,
    apply_time: Duration,
) -> anyhow::Result<Proc> {
    let mut args = vec!["worker".to_owned()];
    args.extend(worker_flags(url, label, slots));
    if !apply_time.is_zero() {
        args.extend([
            "--apply-time".to_owned(),
            format!("{}ms", apply_time.as_millis()),
        ]);
    }
    ctx.spawn(label, &ctx.bench_bin, &args)
}
