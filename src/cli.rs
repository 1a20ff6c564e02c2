//! The command line: clap types, logging set-up, and dispatch to the roles.

use std::path::{Path, PathBuf};

use std::io::{IsTerminal, Write};

/// Writes to stdout; a closed pipe (`p2pstore ls | head`) ends the program quietly in main.
macro_rules! outln {
    ($($t:tt)*) => { writeln!(std::io::stdout(), $($t)*)? };
}
macro_rules! out {
    ($($t:tt)*) => { write!(std::io::stdout(), $($t)*)? };
}

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;

use std::net::SocketAddr;
use std::time::Duration;

use crate::bench;
use crate::client::Client;
use crate::codec::EncodeParams;
use crate::config::Config;
use crate::coordinator;
use crate::devnet::Devnet;
use crate::erasure::Shape;
use crate::manifest::FileId;
use crate::node::{self, NodeOptions};
use crate::proto::{PeerState, PeerStatus};

#[derive(Parser, Debug)]
#[command(name = "p2pstore", version, about = "Encrypted, erasure-coded peer-to-peer storage")]
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
    /// Log lines as text or as JSON objects (one per line)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Coordinator URL for client commands [config: client.coordinator]
    #[arg(long, global = true, env = "P2PSTORE_COORDINATOR", value_name = "URL")]
    pub coordinator: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the coordinator: tracks peers, plans placements, keeps manifests
    Coordinator {
        /// Listen address [config: coordinator.host]
        #[arg(long)]
        host: Option<String>,
        /// Listen port [config: coordinator.port]
        #[arg(long)]
        port: Option<u16>,
        /// State directory [config: coordinator.data_dir]
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run a storage node
    Node {
        /// Listen port [config: node.port]
        #[arg(long)]
        port: Option<u16>,
        /// URL clients use to reach this node [default: http://127.0.0.1:PORT]
        #[arg(long, value_name = "URL")]
        advertise: Option<String>,
        /// Shard directory [config: node.data_dir; default ./data/node-PORT]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Space this node offers, in GB [config: node.max_storage_gb]
        #[arg(long)]
        max_storage_gb: Option<f64>,
        #[command(subcommand)]
        action: Option<NodeAction>,
    },
    /// Recent audits, of all peers or of one
    Audits {
        #[arg(long, value_name = "PEER_ID")]
        peer: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// A coordinator and N nodes in one process: a whole local network
    Devnet {
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Coordinator port
        #[arg(long, default_value_t = 8000)]
        port: u16,
        #[arg(long, default_value = "./data/devnet")]
        data_dir: PathBuf,
    },
    /// Encrypt, erasure-code and store a file; prints its file id
    Upload {
        file: PathBuf,
        #[command(flatten)]
        password: PasswordArgs,
        /// Shards that rebuild a segment [config: node.shards_required]
        #[arg(short)]
        k: Option<u8>,
        /// Shards per segment [config: node.shards_total]
        #[arg(short)]
        n: Option<u8>,
    },
    /// Fetch, verify and decrypt a file
    Download {
        file_id: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// Where to write it [default: its original name in the current directory]
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Replace an existing file
        #[arg(long)]
        force: bool,
    },
    /// Size, segments, k/n and per-segment shards on online peers
    Info {
        file_id: String,
        #[arg(long)]
        json: bool,
    },
    /// List stored files
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// List peers and their state
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Delete a file (needs its password)
    Rm {
        file_id: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration (file, environment and defaults merged) as TOML
    Config,
    /// Measure this machine
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum NodeAction {
    /// Leave the network gracefully: the coordinator moves this node's shards elsewhere;
    /// waits until none is needed here any more (the node must keep running meanwhile)
    Exit,
}

#[derive(clap::Args, Debug)]
pub struct PasswordArgs {
    /// The password; given without a value it is asked for without echo
    /// (also: P2PSTORE_PASSWORD, --password-file)
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub password: Option<String>,
    /// Read the password from the first line of this file
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

impl PasswordArgs {
    fn get(&self, confirm: bool) -> anyhow::Result<String> {
        let pw = match (&self.password, &self.password_file) {
            (Some(p), _) if !p.is_empty() => p.clone(),
            (_, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading the password file {}", f.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
            (prompt, None) => match std::env::var("P2PSTORE_PASSWORD") {
                Ok(p) if prompt.is_none() => p,
                _ if prompt.is_some() || std::io::stdin().is_terminal() => {
                    let p =
                        rpassword::prompt_password("Password: ").context("reading the password from the terminal")?;
                    if confirm && rpassword::prompt_password("Password again: ")? != p {
                        bail!("the two passwords differ");
                    }
                    p
                }
                _ => bail!("no password given: use --password (asks), --password-file FILE or P2PSTORE_PASSWORD"),
            },
        };
        if pw.is_empty() {
            bail!("the password is empty");
        }
        Ok(pw)
    }
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
    /// Repair throughput: stop nodes holding a file and time its rebuild
    Repair {
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        #[arg(long, default_value_t = 30)]
        nodes: usize,
        #[arg(long, default_value_t = 6)]
        stop: usize,
        #[arg(long, default_value = "./data")]
        dir: PathBuf,
    },
    /// Audits per second one coordinator sustains against many simulated peers
    Audits {
        #[arg(long, default_value_t = 1000)]
        peers: usize,
        /// Segments (20 stored shards each) of the audited file
        #[arg(long, default_value_t = 500)]
        segments: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value = "./data")]
        dir: PathBuf,
    },
    /// Upload and download through a local devnet in this process
    Network {
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Where the nodes keep shards (a temporary directory inside it)
        #[arg(long, default_value = "./data")]
        dir: PathBuf,
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
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Text => fmt.try_init(),
        LogFormat::Json => fmt.json().try_init(),
    };
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
        Command::Bench(BenchCommand::Codec { .. }) | Command::Config => {}
        other => {
            // Threads named by role, so `top -H` and profiles tell the roles apart.
            let role = match &other {
                Command::Coordinator { .. } => "coordinator",
                Command::Node { .. } => "node",
                Command::Devnet { .. } => "devnet",
                Command::Bench(_) => "bench",
                _ => "client",
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name(role)
                .build()
                .context("starting the async runtime")?;
            return rt.block_on(run_network(other, config));
        }
    }
    match cli.command {
        Command::Config => {
            out!("# from: {}\n{}", config.origin, toml::to_string(&config).context("printing the configuration")?);
            Ok(())
        }
        Command::Bench(BenchCommand::Codec { size_mib, memory_mib }) => {
            let params = encode_params(&config, None, None)?;
            out!("{}", bench::codec_report(size_mib << 20, memory_mib << 20, params));
            Ok(())
        }
        _ => unreachable!("network commands were dispatched above"),
    }
}

/// A progress bar on stderr when it is a terminal; the client sets its length.
fn progress() -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            .expect("valid template"),
    );
    Some(bar)
}

/// A temporary directory for a benchmark's data inside `dir`, removed afterwards.
fn bench_dir(dir: &Path) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    Ok(tempfile::tempdir_in(dir)?)
}

/// Coding parameters from the configuration, with `-k`/`-n` overrides.
fn encode_params(config: &Config, k: Option<u8>, n: Option<u8>) -> anyhow::Result<EncodeParams> {
    Ok(EncodeParams {
        shape: Shape::new(k.unwrap_or(config.node.shards_required as u8), n.unwrap_or(config.node.shards_total as u8))?,
        segment_size: config.client.segment_size,
        iterations: config.client.kdf_iterations,
    })
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Whether an error is only stdout's reader going away.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

async fn wait_for_ctrl_c() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}

async fn run_network(command: Command, config: Config) -> anyhow::Result<()> {
    let client = Client::new(&config.client.coordinator);
    match command {
        Command::Coordinator { host, port, data_dir } => {
            let host = host.unwrap_or(config.coordinator.host.clone());
            let port = port.unwrap_or(config.coordinator.port);
            let bind = format!("{host}:{port}").parse().with_context(|| format!("`{host}` is not an IP address"))?;
            let dir = data_dir.unwrap_or(config.coordinator.data_dir.clone());
            let h = coordinator::spawn(config, dir, bind).await?;
            eprintln!("coordinator listening on http://{}", h.addr);
            wait_for_ctrl_c().await?;
            h.shutdown().await;
        }
        Command::Node { port, data_dir, action: Some(NodeAction::Exit), .. } => {
            let dir = data_dir.unwrap_or_else(|| config.node_data_dir(port.unwrap_or(config.node.port)));
            let me = node::request_exit(&dir, &config.client.coordinator).await.map_err(anyhow::Error::msg)?;
            eprintln!("exit requested for peer {}; moving its {} shards", me.peer_id, me.placed);
            loop {
                let peers = client.peers().await?;
                let Some(p) = peers.iter().find(|p| p.peer_id == me.peer_id) else {
                    bail!("the coordinator forgot this peer")
                };
                match p.status {
                    PeerStatus::Exited => break,
                    PeerStatus::Exiting => eprintln!("{} shards still to move", p.placed),
                    other => bail!("the peer is {other:?}, not exiting"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            eprintln!("peer {} has exited: it may be stopped", me.peer_id);
        }
        Command::Audits { peer, limit, json } => {
            let audits = client.audits(peer.as_deref(), limit).await?;
            if json {
                return print_json(&audits);
            }
            for a in audits {
                let outcome = format!("{:?}", a.outcome).to_lowercase();
                outln!("{}  {}  {:<7}  reputation {:.3}  {}", a.time, a.peer_id, outcome, a.reputation, a.detail);
            }
        }
        Command::Node { port, advertise, data_dir, max_storage_gb, action: None } => {
            let port = port.unwrap_or(config.node.port);
            if port == 0 {
                bail!("--port must not be 0");
            }
            let gb = max_storage_gb.unwrap_or(config.node.max_storage_gb);
            if !(gb > 0.0 && gb.is_finite()) {
                bail!("--max-storage-gb must be a positive number");
            }
            let h = node::spawn(NodeOptions {
                data_dir: data_dir.unwrap_or_else(|| config.node_data_dir(port)),
                bind: SocketAddr::from(([127, 0, 0, 1], port)),
                advertise,
                coordinator: config.client.coordinator.clone(),
                capacity: (gb * 1e9) as u64,
                heartbeat_interval: Duration::from_secs(config.node.heartbeat_interval),
            })
            .await?;
            eprintln!("node listening on http://{}", h.addr);
            wait_for_ctrl_c().await?;
            h.shutdown().await;
        }
        Command::Devnet { nodes, port, data_dir } => {
            let net = Devnet::start(config, &data_dir, port, nodes).await?;
            outln!("{}", net.url());
            eprintln!(
                "devnet: coordinator {} with {nodes} nodes, data in {}. Try:\n  \
                 p2pstore upload FILE --password\n  p2pstore download FILE_ID --password\nCtrl-C stops it.",
                net.url(),
                data_dir.display()
            );
            wait_for_ctrl_c().await?;
            net.shutdown().await;
        }
        Command::Upload { file, password, k, n } => {
            let params = encode_params(&config, k, n)?;
            let pw = password.get(true)?;
            let bar = progress();
            let id = client.upload(&file, pw.as_bytes(), params, bar.clone()).await?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            outln!("{id}");
        }
        Command::Download { file_id, password, output, force } => {
            let id = FileId::parse(&file_id)?;
            let pw = password.get(false)?;
            let bar = progress();
            let report = client.download(&id, pw.as_bytes(), output.as_deref(), force, bar.clone()).await?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            for p in &report.problems {
                eprintln!("warning: {p}");
            }
            eprintln!("wrote {}", report.path.display());
        }
        Command::Info { file_id, json } => {
            let view = client.info(&FileId::parse(&file_id)?).await?;
            if json {
                return print_json(&view);
            }
            let s = &view.summary;
            outln!(
                "file     {}\nsize     {} bytes\nsegments {}\ncoding   {}-of-{}",
                s.file_id,
                s.size,
                s.segments,
                s.k,
                s.n
            );
            for (i, (seg, h)) in view.placements.iter().zip(&view.health).enumerate() {
                let up =
                    seg.iter().filter(|p| view.peers.get(*p).is_some_and(|v| v.state == PeerState::Online)).count();
                let queued = if h.repair_queued { ", repair queued" } else { "" };
                outln!("segment {i:>5}: {}/{} healthy, {up} on online peers{queued}", h.healthy, h.total);
            }
        }
        Command::Ls { json } => {
            let files = client.list().await?;
            if json {
                return print_json(&files);
            }
            for f in files {
                outln!("{}  {:>14} bytes  {}-of-{}", f.file_id, f.size, f.k, f.n);
            }
        }
        Command::Peers { json } => {
            let peers = client.peers().await?;
            if json {
                return print_json(&peers);
            }
            for p in peers {
                let state = format!("{:?}/{:?}", p.state, p.status).to_lowercase();
                outln!(
                    "{}  {:<20}  rep {:.2}  online {:.2}  {:<24}  {} of {} used, {} shards",
                    p.peer_id,
                    state,
                    p.reputation,
                    p.online_score,
                    p.address,
                    gb(p.used),
                    gb(p.capacity),
                    p.shards
                );
            }
        }
        Command::Rm { file_id, password, json } => {
            let id = FileId::parse(&file_id)?;
            client.remove(&id, password.get(false)?.as_bytes()).await?;
            if json {
                return print_json(&serde_json::json!({ "deleted": id.to_string() }));
            }
            eprintln!("deleted {id}");
        }
        Command::Bench(BenchCommand::Network { size_mib, nodes, dir }) => {
            let tmp = bench_dir(&dir)?;
            let params = encode_params(&config, None, None)?;
            out!("{}", bench::network(size_mib << 20, nodes, tmp.path(), params).await?);
        }
        Command::Bench(BenchCommand::Repair { size_mib, nodes, stop, dir }) => {
            let tmp = bench_dir(&dir)?;
            out!("{}", bench::repair(nodes, stop, size_mib << 20, tmp.path()).await?);
        }
        Command::Bench(BenchCommand::Audits { peers, segments, seconds, dir }) => {
            let tmp = bench_dir(&dir)?;
            out!("{}", bench::audits(peers, segments, seconds.max(2), tmp.path()).await?);
        }
        Command::Config | Command::Bench(_) => unreachable!("handled without a runtime"),
    }
    Ok(())
}
