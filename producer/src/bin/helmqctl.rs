//! `helmqctl`: operator CLI (see `helmq_producer::ctl`).

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = helmq_producer::ctl::Args::parse();
    let out = helmq_producer::ctl::run(args).await?;
    print!("{out}");
    Ok(())
}
