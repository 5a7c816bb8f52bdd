//! `helmq-worker`: pulls jobs from JetStream and runs Helm.

use clap::Parser;
use tokio_util::sync::CancellationToken;

use helmq_worker::{Args, HelmCli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    helmq_telemetry::init_tracing(&args.log);
    let driver = HelmCli::new(args.helm())?;
    let shutdown = CancellationToken::new();
    helmq_telemetry::cancel_on_signals(shutdown.clone());
    helmq_worker::run(args, driver, shutdown).await?;
    Ok(())
}
