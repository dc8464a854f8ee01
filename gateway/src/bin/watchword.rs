//! The `watchword` binary: `serve [--config FILE]`, `print-config`,
//! `check-config FILE`. It only parses flags, sets up logging and calls the
//! library; it must never print a tenant key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use watchword_gateway::config::Config;

/// mimalloc: per-thread heaps that take frees from other threads without a
/// lock. glibc malloc serialised the gateway on its arena locks, because
/// audit lines and delivery messages are built on one thread and freed on
/// another.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Watchword: a one-time passcode engine behind protocol v1.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without --config, the embedded development profile:
    /// protocol on 127.0.0.1:7400, metrics on 127.0.0.1:9400, simulated
    /// carriers, tenant `demo` with key `demo-key` (role simulator).
    Serve {
        /// A TOML configuration file (see `watchword print-config`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override `server.listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Override `server.metrics_listen`.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Print the full default configuration as commented TOML.
    PrintConfig,
    /// Validate a configuration file; exits 1 listing every mistake.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::PrintConfig => {
            print!("{}", Config::commented_default());
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("{}: {}: {}", file.display(), e.field, e.reason);
                }
                eprintln!("{}: {} mistake(s)", file.display(), errors.len());
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            listen,
            metrics_listen,
        } => serve(config, listen, metrics_listen),
    }
}

fn serve(file: Option<PathBuf>, listen: Option<String>, metrics: Option<String>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let mut cfg = match &file {
        None => Config::development(),
        Some(f) => match Config::load(f) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors {
                    eprintln!("{}: {}: {}", f.display(), e.field, e.reason);
                }
                return ExitCode::FAILURE;
            }
        },
    };
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    if let Some(m) = metrics {
        cfg.server.metrics_listen = m;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let running = match watchword_gateway::app::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        running.shutdown();
        running.wait().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
