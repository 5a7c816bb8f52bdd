//! Renders `docs/RELIABILITY.md` from the fault suite's rows (`target/faults/rows/NN.json`):
//! `just faults` runs it after the suite.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// Render docs/RELIABILITY.md from the fault suite's rows.
#[derive(Debug, Parser)]
struct Args {
    /// Directory of the rows.
    #[arg(long, env = "HELMQ_FAULTS_ROWS", default_value_os_t = helmq_tests::faults::rows_dir())]
    rows: PathBuf,
    /// The document to write.
    #[arg(long, env = "HELMQ_FAULTS_DOC", default_value_os_t = helmq_tests::workspace_root().join("docs/RELIABILITY.md"))]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rows = helmq_tests::faults::read_rows(&args.rows)?;
    let doc = helmq_tests::faults::render(
        &rows,
        &helmq_tests::faults::machine(),
        &jiff::Timestamp::now()
            .strftime("%Y-%m-%d %H:%M UTC")
            .to_string(),
    );
    std::fs::write(&args.out, doc)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "{} written from {} rows in {}",
        args.out.display(),
        rows.len(),
        args.rows.display()
    );
    Ok(())
}
