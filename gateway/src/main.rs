//! The `sluice` command: parses arguments and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Every request allocates (headers, hook results): mimalloc's per-thread free lists suit the
/// thread-per-core workers, where glibc's malloc spent ~2 µs a request on a three-plugin route.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Worker threads (default, or 0: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate the config file: exit 0, or non-zero with the errors.
    Check {
        /// The config file.
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Scaffold a plugin crate that builds and passes its tests as it is.
    New {
        /// The plugin's name: lower-case letters, digits and `-`.
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The sluice-sdk crate to depend on (default: the one this gateway was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
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
        Command::Plugin { command: PluginCommand::New { name, dir, sdk } } => {
            sluice::scaffold::new_plugin(&name, dir.as_deref(), sdk.as_deref()).map(|dir| {
                println!(
                    "created {}: `cargo test` there, then `cargo build --release --target wasm32-wasip2`",
                    dir.display()
                )
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}
