//! `helmq-bench`: `just bench` runs `helmq-bench run`; `helmq-bench worker` and `producer` are the
//! processes it starts itself (the real entry points with Helm or Kubernetes in memory).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use helmq_bench::Context;
use helmq_bench::child::{ProducerArgs, WorkerArgs};

/// Measures helmq next to raw JetStream on this machine (issue 14).
#[derive(Debug, Parser)]
#[command(name = "helmq-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs every phase, prints the table and writes <out>/summary.json.
    Run(RunArgs),
    /// A worker with Helm in memory (started by `run`).
    #[command(hide = true)]
    Worker(Box<WorkerArgs>),
    /// A producer over the in-memory API server (started by `run`).
    #[command(hide = true)]
    Producer(Box<ProducerArgs>),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The nats-server binary (default: HELMQ_NATS_SERVER, else .tools/nats-newest).
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// The helmq-worker binary (default: next to this one).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Output directory (summary.json, logs/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A tenth of the work and a 4 s latency run: to try the bench, not for figures.
    #[arg(long)]
    quick: bool,
    /// Worker pools in the in-process pipeline.
    #[arg(long, default_value_t = 2)]
    pools: usize,
    /// Slots per pool in the in-process pipeline.
    #[arg(long, default_value_t = 64)]
    slots: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Worker(args) => helmq_bench::child::worker(*args).await,
        Command::Producer(args) => helmq_bench::child::producer(*args).await,
        Command::Run(args) => {
            let root = helmq_tests::workspace_root();
            let exe = std::env::current_exe()?;
            let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
            let ctx = Context {
                nats_server: args
                    .nats_server
                    .or_else(helmq_tests::default_binary)
                    .ok_or_else(|| anyhow::anyhow!("no nats-server: run `just setup`"))?,
                worker_bin: args.worker_bin.unwrap_or_else(|| dir.join("helmq-worker")),
                bench_bin: exe,
                helm_stand_in: root.join("bench/helm-stand-in"),
                out_dir: args.out.unwrap_or_else(|| root.join("target/bench")),
                quick: args.quick,
                pools: args.pools,
                slots: args.slots,
            };
            anyhow::ensure!(
                ctx.worker_bin.is_file(),
                "{} not found: build it first (cargo build --release -p helmq-worker)",
                ctx.worker_bin.display()
            );
            let report = helmq_bench::run::run(&ctx).await?;
            print!("{}", report.table());
            println!("summary: {}", ctx.out_dir.join("summary.json").display());
            Ok(())
        }
    }
}
