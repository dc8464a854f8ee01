//! The `watchword-loadgen` binary: parses flags and calls the library. It must
//! never hold logic of its own (everything lives in `watchword_loadgen`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = watchword_loadgen::cli::Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(watchword_loadgen::cli::execute(cli))
}
