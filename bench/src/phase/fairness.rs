//! Fairness across tenants (issue 24), in-process worker pools with Helm in memory: (a) tenant
//! B's one job behind tenant A's 500 queued ones, with `--tenant-concurrency` and without;
//! (b) 100 tenants each with a burst of 20: when each tenant's first job starts; (c) what the
//! scheduler costs per job: the pipeline's jobs/s and dispatch latency over 100 tenants with a
//! limit and without.

use std::sync::Arc;
use std::time::{Duration, Instant};

use helmq_queue::JetStreamStatus;
use helmq_worker::{Settings, SpawnedPool};
use serde_json::json;

use crate::Context;
use crate::driver::BenchDriver;
use crate::env::{Env, publish_all};
use crate::jobs;
use crate::phase::pipeline::{Shape, measure_latency, measure_throughput, spread_row};
use crate::probe::{Mark, Probe};
use crate::report::Report;
use crate::stats::{Spread, ms, round3, spread};

/// Each apply's run time.
pub const APPLY_TIME: Duration = Duration::from_millis(200);
/// Tenant A's queued jobs in (a).
pub const BURST: usize = 500;
/// Slots of the one worker pool of (a).
pub const BURST_SLOTS: usize = 16;
/// `--tenant-concurrency` of (a).
pub const BURST_LIMIT: usize = 4;
/// The bound stated for (a): tenant B's job starts within it with the limit set.
pub const BOUND: Duration = Duration::from_millis(500);
/// Tenants of (b) and (c).
pub const TENANTS: usize = 100;
/// Jobs per tenant in (b).
pub const PER_TENANT: usize = 20;
/// Worker pools and slots per pool of (b).
pub const POOLS: usize = 2;
/// Slots per pool of (b).
pub const SLOTS: usize = 32;
/// `--tenant-concurrency` of (b) and (c).
pub const LIMIT: usize = 2;
/// Longest wait for a job to start before a run fails.
const STALL: Duration = Duration::from_secs(120);

/// Runs (a), (b) and (c).
pub async fn run(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    burst(ctx, report).await?;
    many_tenants(ctx, report).await?;
    cost(ctx, report).await
}

/// In-process pools of `slots` slots, `--tenant-concurrency limit`, each apply taking
/// [`APPLY_TIME`] and marked in `probe`.
async fn pools(
    env: &Env,
    probe: &Arc<Probe>,
    count: usize,
    slots: usize,
    limit: usize,
) -> anyhow::Result<Vec<SpawnedPool>> {
    let mut pools = Vec::with_capacity(count);
    for pool in 0..count {
        let mut settings = Settings::new(format!("bench-fair-{pool}"));
        settings.concurrency = slots;
        settings.tenant_concurrency = limit;
        let driver = BenchDriver::new(APPLY_TIME).with_probe(probe.clone());
        pools.push(SpawnedPool::spawn(
            env.connect().await?,
            driver,
            settings,
            JetStreamStatus::new,
        ));
    }
    Ok(pools)
}

/// Waits until every job of `indices` has reached the driver.
async fn wait_started(
    probe: &Probe,
    indices: impl Iterator<Item = usize> + Clone,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STALL;
    while indices
        .clone()
        .any(|i| probe.at(i, Mark::DriverCalled).is_none())
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "jobs did not start within {STALL:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// One run of (a): how long tenant B's job waited, and how many of A's started before it.
#[derive(Debug, Clone, Copy)]
struct Behind {
    wait: Duration,
    a_started_first: usize,
}

/// Tenant A's [`BURST`] jobs then tenant B's one, on a pool of [`BURST_SLOTS`] with
/// `--tenant-concurrency limit`. `cold`: all are queued before the pool starts, and B's wait
/// counts from the pool's start; else the pool is up, and it counts from B's publish, once A's
/// 500 are queued.
async fn behind(ctx: &Context, limit: usize, cold: bool) -> anyhow::Result<Behind> {
    let env = Env::start(ctx, true).await?;
    let probe = Arc::new(Probe::new(BURST + 1));
    let a: Vec<_> = (0..BURST)
        .map(|i| jobs::apply_in(&jobs::tenant(0), i, jobs::uuid(1, i)))
        .collect();
    let b = jobs::apply_in(&jobs::tenant(1), BURST, jobs::uuid(1, BURST));
    let (pools, from) = if cold {
        publish_all(&env.js, a, Some(&probe)).await?;
        publish_all(&env.js, vec![b], Some(&probe)).await?;
        let from = probe.elapsed();
        (pools(&env, &probe, 1, BURST_SLOTS, limit).await?, from)
    } else {
        let pools = pools(&env, &probe, 1, BURST_SLOTS, limit).await?;
        env.wait_idle_slots(BURST_SLOTS, Duration::from_secs(30))
            .await?;
        publish_all(&env.js, a, Some(&probe)).await?;
        publish_all(&env.js, vec![b], Some(&probe)).await?;
        let from = probe.at(BURST, Mark::Published).unwrap_or_default();
        (pools, from)
    };
    wait_started(&probe, BURST..=BURST).await?;
    let started = probe.at(BURST, Mark::DriverCalled).unwrap_or_default();
    let a_started_first = (0..BURST)
        .filter(|i| {
            probe
                .at(*i, Mark::DriverCalled)
                .is_some_and(|t| t < started)
        })
        .count();
    for pool in pools {
        pool.stop().await;
    }
    Ok(Behind {
        wait: started.saturating_sub(from),
        a_started_first,
    })
}

/// (a): tenant B's job behind tenant A's 500, with the limit and without, the pool up or not.
async fn burst(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let mut runs = serde_json::Map::new();
    let mut waits = Vec::new();
    for cold in [false, true] {
        for limit in [BURST_LIMIT, 0] {
            let run = behind(ctx, limit, cold).await?;
            let key = format!(
                "{}_{}",
                if cold {
                    "queued_before_start"
                } else {
                    "worker_up"
                },
                if limit > 0 { "limit" } else { "no_limit" }
            );
            runs.insert(
                key,
                json!({"b_wait_ms": ms(run.wait), "a_jobs_started_before_b": run.a_started_first}),
            );
            waits.push(run);
        }
    }
    report.set("fairness_burst_jobs", BURST);
    report.set("fairness_burst_slots", BURST_SLOTS);
    report.set("fairness_burst_tenant_concurrency", BURST_LIMIT);
    report.set("fairness_apply_ms", APPLY_TIME.as_millis() as u64);
    report.set("fairness_bound_ms", ms(BOUND));
    report.set("fairness_burst", serde_json::Value::Object(runs));
    let [up_limit, up_none, cold_limit, cold_none] = waits[..] else {
        anyhow::bail!("four runs expected");
    };
    for (what, limited, none) in [
        ("publish->start, worker up", up_limit, up_none),
        ("all queued, worker start->start", cold_limit, cold_none),
    ] {
        report.row(
            &format!(
                "fairness: B's 1 job behind A's {BURST} x {} ms, {BURST_SLOTS} slots, {what}: --tenant-concurrency {BURST_LIMIT} / none (ms; A's started first {} / {})",
                APPLY_TIME.as_millis(),
                limited.a_started_first,
                none.a_started_first
            ),
            format!("{:.1} / {:.1}", ms(limited.wait), ms(none.wait)),
            &format!("<= {} with", BOUND.as_millis()),
            Some(limited.wait <= BOUND),
        );
    }
    Ok(())
}

/// Jobs per tenant in (b): [`PER_TENANT`], 2 in a quick run.
fn per_tenant(ctx: &Context) -> usize {
    if ctx.quick { 2 } else { PER_TENANT }
}

/// (b) with `--tenant-concurrency limit`: per tenant, from its first publish to its first
/// job's start.
async fn first_starts(ctx: &Context, limit: usize) -> anyhow::Result<Spread> {
    let env = Env::start(ctx, true).await?;
    let per_tenant = per_tenant(ctx);
    let count = TENANTS * per_tenant;
    let probe = Arc::new(Probe::new(count));
    let pools = pools(&env, &probe, POOLS, SLOTS, limit).await?;
    env.wait_idle_slots(POOLS * SLOTS, Duration::from_secs(30))
        .await?;
    // Tenant after tenant: tenant k's jobs are k*per_tenant .. (k+1)*per_tenant.
    let batch = (0..count)
        .map(|i| jobs::apply_in(&jobs::tenant(i / per_tenant), i, jobs::uuid(2, i)))
        .collect();
    publish_all(&env.js, batch, Some(&probe)).await?;
    let deadline = Instant::now() + STALL;
    let mut latencies = Vec::with_capacity(TENANTS);
    for tenant in 0..TENANTS {
        let jobs = tenant * per_tenant..(tenant + 1) * per_tenant;
        let first_start = loop {
            if let Some(at) = jobs
                .clone()
                .filter_map(|i| probe.at(i, Mark::DriverCalled))
                .min()
            {
                break at;
            }
            anyhow::ensure!(Instant::now() < deadline, "tenant {tenant} never started");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let first_publish = jobs
            .filter_map(|i| probe.at(i, Mark::Published))
            .min()
            .unwrap_or_default();
        latencies.push(first_start.saturating_sub(first_publish));
    }
    for pool in pools {
        pool.stop().await;
    }
    spread(latencies).ok_or_else(|| anyhow::anyhow!("no tenant was timed"))
}

/// (b): 100 tenants' bursts published one after another, with the limit and without.
async fn many_tenants(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let show = |s: &Spread| {
        json!({
            "p50_ms": ms(s.p50), "p90_ms": ms(s.p90), "p99_ms": ms(s.p99), "max_ms": ms(s.max),
        })
    };
    let limited = first_starts(ctx, LIMIT).await?;
    let unlimited = first_starts(ctx, 0).await?;
    report.set(
        "fairness_tenants",
        json!({
            "tenants": TENANTS,
            "jobs_per_tenant": per_tenant(ctx),
            "pools": POOLS,
            "slots_per_pool": SLOTS,
            "tenant_concurrency": LIMIT,
            "first_start_limit": show(&limited),
            "first_start_no_limit": show(&unlimited),
        }),
    );
    for (what, s) in [
        (format!("--tenant-concurrency {LIMIT}"), &limited),
        ("no limit".into(), &unlimited),
    ] {
        report.row(
            &format!(
                "fairness: {TENANTS} tenants x {} jobs one tenant after another, {POOLS} x {SLOTS} slots, {what}: first start per tenant p50/p90/p99/max (ms)",
                per_tenant(ctx)
            ),
            spread_row(s),
            "",
            None,
        );
    }
    Ok(())
}

/// (c): the pipeline (Helm returns at once) over 100 tenants, limit on and off: jobs/s and
/// dispatch latency at 500 jobs/s.
async fn cost(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let count = ctx.count(20_000);
    let seconds = if ctx.quick { 4 } else { 10 };
    let mut figures = serde_json::Map::new();
    let mut rows = Vec::new();
    for limit in [LIMIT, 0] {
        let shape = Shape {
            tenants: TENANTS,
            tenant_limit: limit,
        };
        let throughput = measure_throughput(ctx, count, shape).await?;
        let latency = measure_latency(ctx, 500, seconds, shape).await?;
        let key = if limit > 0 { "limit" } else { "no_limit" };
        figures.insert(
            key.into(),
            json!({
                "jobs_per_s": round3(throughput.per_s),
                "dispatch_p50_ms": ms(latency.dispatch.p50),
                "dispatch_p99_ms": ms(latency.dispatch.p99),
                "dispatch_max_ms": ms(latency.dispatch.max),
            }),
        );
        rows.push((throughput.per_s, latency.dispatch));
    }
    report.set("fairness_cost", serde_json::Value::Object(figures));
    let [(on_per_s, on), (off_per_s, off)] = rows[..] else {
        anyhow::bail!("two runs expected");
    };
    report.row(
        &format!(
            "fairness cost: pipeline over {TENANTS} tenants, {count} jobs, --tenant-concurrency {LIMIT} / none (jobs/s)"
        ),
        format!("{on_per_s:.0} / {off_per_s:.0}"),
        "",
        None,
    );
    report.row(
        &format!(
            "fairness cost: dispatch p99 at 500/s over {TENANTS} tenants, --tenant-concurrency {LIMIT} / none (ms; p50 {:.2} / {:.2})",
            ms(on.p50),
            ms(off.p50)
        ),
        format!("{:.2} / {:.2}", ms(on.p99), ms(off.p99)),
        "p99 <= 10",
        Some(on.p99 <= Duration::from_millis(10)),
    );
    Ok(())
}
