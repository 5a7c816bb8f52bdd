//! `helmqctl`: operator CLI (see `helmq_producer::ctl`).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = helmq_producer::ctl::Args::parse();
    let mut stdout = std::io::stdout();
    match helmq_producer::ctl::run(args, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("helmqctl: {e}");
            ExitCode::FAILURE
        }
    }
}
