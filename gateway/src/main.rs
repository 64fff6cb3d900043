//! The `sluice` command: parses arguments and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A programmable API gateway.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: SIGTERM or ctrl-c drains requests in flight and exits.
    Run {
        /// The config file.
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate the config file: exit 0, or non-zero with the errors.
    Check {
        /// The config file.
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run { config, workers } => {
            let workers = workers
                .filter(|n| *n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            sluice::server::run(&config, workers)
        }
        Command::Check { config } => sluice::check(&config).map(|summary| println!("{summary}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}
