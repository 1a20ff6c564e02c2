//! The command line: clap types, logging set-up, and dispatch to the roles.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::bench;
use crate::codec::EncodeParams;
use crate::config::Config;
use crate::erasure::Shape;

#[derive(Parser, Debug)]
#[command(
    name = "p2pstore",
    version,
    about = "Encrypted, erasure-coded peer-to-peer storage"
)]
pub struct Cli {
    /// Configuration file [default: ./config.toml when present, else built-in defaults]
    #[arg(long, global = true, env = "P2PSTORE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors in the log
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Coordinator URL for client commands [config: client.coordinator]
    #[arg(long, global = true, env = "P2PSTORE_COORDINATOR", value_name = "URL")]
    pub coordinator: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the effective configuration (file, environment and defaults merged) as TOML
    Config,
    /// Measure this machine
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Each codec stage alone, the encode and decode pipelines, and encoding's peak memory
    Codec {
        /// Bytes to push through each stage, in MiB
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// File size for the peak-memory run, in MiB
        #[arg(long, default_value_t = 2048)]
        memory_mib: u64,
    },
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Parses the command line and runs it.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli);
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(url) = &cli.coordinator {
        config.client.coordinator = url.clone();
        config.origin = format!("{} with command-line/environment overrides", config.origin);
    }
    config.validate()?;
    match cli.command {
        Command::Config => {
            print!(
                "# from: {}\n{}",
                config.origin,
                toml::to_string(&config).context("printing the configuration")?
            );
            Ok(())
        }
        Command::Bench(BenchCommand::Codec {
            size_mib,
            memory_mib,
        }) => {
            let params = EncodeParams {
                shape: Shape::new(
                    config.node.shards_required as u8,
                    config.node.shards_total as u8,
                )?,
                segment_size: config.client.segment_size,
                iterations: config.client.kdf_iterations,
            };
            print!(
                "{}",
                bench::codec_report(size_mib << 20, memory_mib << 20, params)
            );
            Ok(())
        }
    }
}
