//! The command line: clap types, logging set-up, and the one dispatch from a command to the
//! function that runs it (`commands`). Every check of a value lives in `Config::validate`:
//! command-line overrides are applied to the configuration first, then it is validated once.

mod commands;
mod password;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::Config;
use crate::proto::AdminAction;
pub use password::PasswordArgs;

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
    /// The account key file client commands sign with [config: client.account; default
    /// account.p8 in the user's config directory, created on first use where accounts are open]
    #[arg(long, global = true, env = "P2PSTORE_ACCOUNT", value_name = "FILE")]
    pub account: Option<PathBuf>,
    /// PEM certificate chain to serve HTTPS with (coordinator, node, devnet) [config: tls.cert]
    #[arg(long, global = true, env = "P2PSTORE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [config: tls.key]
    #[arg(long, global = true, env = "P2PSTORE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates to trust besides the system's roots [config: tls.ca_file]
    #[arg(long, global = true, env = "P2PSTORE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
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
        #[command(subcommand)]
        action: Option<CoordinatorAction>,
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
        /// Serve HTTPS with a private CA made in DATA_DIR/tls (unless --tls-cert names a
        /// certificate); clients then need --tls-ca DATA_DIR/tls/ca.pem
        #[arg(long)]
        tls: bool,
    },
    /// Encrypt, erasure-code and store a file; prints its file id
    ///
    /// An interrupted upload of the same file (same size and modification time, account and
    /// password) resumes where it stopped when run again; its state is kept in
    /// ~/.cache/p2pstore/uploads.
    Upload {
        /// The file, or `-` for standard input
        file: PathBuf,
        #[command(flatten)]
        password: PasswordArgs,
        /// Shards that rebuild a segment [config: node.shards_required]
        #[arg(short)]
        k: Option<u8>,
        /// Shards per segment [config: node.shards_total]
        #[arg(short)]
        n: Option<u8>,
        /// The name sealed into the file (default: the file's own; `stdin` for `-`)
        #[arg(long)]
        name: Option<String>,
        /// Throw away an interrupted upload of this file and start over
        #[arg(long)]
        restart: bool,
    },
    /// Fetch, verify and decrypt a file
    Download {
        file_id: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// Where to write it [default: its original name in the current directory]. `-` writes
        /// standard output, in order; unlike a file (written whole or not at all), a stream
        /// cannot be taken back: on an error it stops, with a nonzero exit, after the last
        /// segment that was verified
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
    /// Serve the S3 API on this machine (aws-cli, boto3, rclone, restic): objects are stored
    /// as p2pstore files of your account, their names encrypted with your password
    Gateway {
        /// Listen address [config: gateway.host]
        #[arg(long)]
        host: Option<String>,
        /// Listen port [config: gateway.port]
        #[arg(long)]
        port: Option<u16>,
        /// Where generated S3 credentials are kept [config: gateway.data_dir]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The S3 access key [config: gateway.access_key; unset with the secret key: generated]
        #[arg(long, env = "P2PSTORE_GATEWAY_ACCESS_KEY")]
        access_key: Option<String>,
        /// The S3 secret key (better from the environment) [config: gateway.secret_key]
        #[arg(long, env = "P2PSTORE_GATEWAY_SECRET_KEY", hide_env_values = true)]
        secret_key: Option<String>,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Your account: a key pair that signs your requests and owns your files
    #[command(subcommand)]
    Account(AccountCommand),
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
pub enum CoordinatorAction {
    /// Read every stored record of the coordinator in --data-dir and list those that cannot
    /// be read (run it while that coordinator is stopped: the database allows one process)
    Check,
    /// Admit, list or remove accounts, for the coordinator whose data directory (and key)
    /// is --data-dir: directly when it is stopped, through its API when it is running
    #[command(subcommand)]
    Account(OperatorAccount),
    /// Allow, list or disallow node ids (for [security] node_admission = "allowlist"), as
    /// `account` does for accounts
    #[command(subcommand)]
    Node(OperatorNode),
    /// Ask every node what it holds and rebuild what the database does not know (a
    /// coordinator that lost its database, or was restored from an old backup); runs against
    /// the running coordinator
    Recover,
    /// Write a backup of the running coordinator's database to FILE (mode 0600)
    Backup { file: PathBuf },
    /// Write a backup into the empty database of the stopped coordinator in --data-dir
    Restore { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum OperatorNode {
    /// Let a node id register (as `p2pstore peers` or the node's log prints it)
    Allow { id: String },
    /// Every node id allowed
    List {
        #[arg(long)]
        json: bool,
    },
    /// No longer let a node id register
    Rm { id: String },
}

#[derive(Subcommand, Debug)]
pub enum OperatorAccount {
    /// Admit an account (needed when [security] accounts = "invite"), or change its quota
    Add {
        /// The account id, as `p2pstore account new` prints it
        id: String,
        /// Its quota in GB of file sizes [default: security.default_quota_gb]
        #[arg(long)]
        quota_gb: Option<f64>,
    },
    /// Every account with its quota and usage
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an account; its files stay, and cannot be changed until it is added again
    Rm { id: String },
}

#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Create an account key and print its id
    New {
        /// Where to keep the key [default: the --account file, or account.p8 in the user's
        /// config directory]
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// This account's id, and its quota and usage at the coordinator
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeAction {
    /// Leave the network gracefully: the coordinator moves this node's shards elsewhere;
    /// waits until none is needed here any more (the node must keep running meanwhile)
    Exit,
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
    /// What a coordinator process sustains from strangers: registrations and heartbeats of
    /// many simulated peers, upload plans from many accounts, the largest plan allowed, and its
    /// memory while half-open connections are held
    Admission {
        /// Simulated peers that register and send heartbeats
        #[arg(long, default_value_t = 10_000)]
        peers: usize,
        /// Accounts that ask for upload plans
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
        /// Seconds each rate is measured for, at most
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Half-open connections held while the coordinator's memory is read
        #[arg(long, default_value_t = 1000)]
        half_open: usize,
        #[arg(long, default_value = "./data")]
        dir: PathBuf,
    },
    /// Audits it takes the reputation score to disqualify simulated nodes that lose chunks
    Reputation,
    /// Upload and download through a local devnet in this process
    Network {
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Where the nodes keep shards (a temporary directory inside it)
        #[arg(long, default_value = "./data")]
        dir: PathBuf,
        /// Every process serves HTTPS (a private CA made for the run)
        #[arg(long)]
        tls: bool,
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

/// The configuration with the command line's overrides applied, validated once.
fn effective_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    let before = config.clone();
    if let Some(url) = &cli.coordinator {
        config.client.coordinator = url.clone();
    }
    if cli.account.is_some() {
        config.client.account = cli.account.clone();
    }
    for (slot, flag) in [
        (&mut config.tls.cert, &cli.tls_cert),
        (&mut config.tls.key, &cli.tls_key),
        (&mut config.tls.ca_file, &cli.tls_ca),
    ] {
        if flag.is_some() {
            *slot = flag.clone();
        }
    }
    match &cli.command {
        Command::Coordinator { host, port, data_dir, .. } => {
            set(&mut config.coordinator.host, host);
            set(&mut config.coordinator.port, port);
            set(&mut config.coordinator.data_dir, data_dir);
        }
        Command::Gateway { host, port, data_dir, access_key, secret_key, .. } => {
            set(&mut config.gateway.host, host);
            set(&mut config.gateway.port, port);
            set(&mut config.gateway.data_dir, data_dir);
            if access_key.is_some() {
                config.gateway.access_key = access_key.clone();
            }
            if secret_key.is_some() {
                config.gateway.secret_key = secret_key.clone();
            }
        }
        Command::Node { port, data_dir, max_storage_gb, .. } => {
            set(&mut config.node.port, port);
            if data_dir.is_some() {
                config.node.data_dir = data_dir.clone();
            }
            set(&mut config.node.max_storage_gb, max_storage_gb);
        }
        _ => {}
    }
    if config != before {
        config.origin = format!("{} with command-line/environment overrides", config.origin);
    }
    config.validate()?;
    Ok(config)
}

fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *slot = v.clone();
    }
}

/// Runs `fut` on a runtime whose threads are named by `role`, so `top -H` and profiles tell
/// the roles apart.
fn on_runtime<T>(role: &str, fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(role)
        .build()
        .context("starting the async runtime")?
        .block_on(fut)
}

/// Parses the command line and runs it.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli);
    let config = effective_config(&cli)?;
    if let Some(ca) = &config.tls.ca_file {
        crate::net::tls::trust_ca_file(ca)?;
    }
    use commands as c;
    match cli.command {
        Command::Config => c::print_config(&config),
        Command::Coordinator { action: Some(CoordinatorAction::Check), .. } => c::check_coordinator(&config),
        Command::Coordinator { action: Some(CoordinatorAction::Account(a)), .. } => {
            let (action, json) = match a {
                OperatorAccount::Add { id, quota_gb } => {
                    (AdminAction::AddAccount { account: id, quota: quota_gb.map(crate::config::gb_to_bytes) }, false)
                }
                OperatorAccount::List { json } => (AdminAction::ListAccounts, json),
                OperatorAccount::Rm { id } => (AdminAction::RemoveAccount { account: id }, false),
            };
            on_runtime("client", c::operator(config, action, json))
        }
        Command::Coordinator { action: Some(CoordinatorAction::Recover), .. } => {
            on_runtime("client", c::operator(config, AdminAction::Recover, false))
        }
        Command::Coordinator { action: Some(CoordinatorAction::Backup { file }), .. } => {
            on_runtime("client", c::backup(config, file))
        }
        Command::Coordinator { action: Some(CoordinatorAction::Restore { file }), .. } => c::restore(&config, &file),
        Command::Coordinator { action: Some(CoordinatorAction::Node(n)), .. } => {
            let (action, json) = match n {
                OperatorNode::Allow { id } => (AdminAction::AllowNode { peer: id }, false),
                OperatorNode::List { json } => (AdminAction::ListNodes, json),
                OperatorNode::Rm { id } => (AdminAction::DisallowNode { peer: id }, false),
            };
            on_runtime("client", c::operator(config, action, json))
        }
        Command::Account(AccountCommand::New { out }) => c::account_new(&config, out),
        Command::Account(AccountCommand::Show { json }) => on_runtime("client", c::account_show(config, json)),
        Command::Coordinator { action: None, .. } => on_runtime("coordinator", c::coordinator(config)),
        Command::Node { action: Some(NodeAction::Exit), .. } => on_runtime("client", c::node_exit(config)),
        Command::Node { advertise, action: None, .. } => on_runtime("node", c::node(config, advertise)),
        Command::Devnet { nodes, port, data_dir, tls } => {
            on_runtime("devnet", c::devnet(config, nodes, port, data_dir, tls))
        }
        Command::Upload { file, password, k, n, name, restart } => {
            on_runtime("client", c::upload(config, file, password, (k, n), name, restart))
        }
        Command::Download { file_id, password, output, force } => {
            on_runtime("client", c::download(config, file_id, password, output, force))
        }
        Command::Info { file_id, json } => on_runtime("client", c::info(config, file_id, json)),
        Command::Ls { json } => on_runtime("client", c::ls(config, json)),
        Command::Peers { json } => on_runtime("client", c::peers(config, json)),
        Command::Rm { file_id, password, json } => on_runtime("client", c::rm(config, file_id, password, json)),
        Command::Gateway { password, .. } => on_runtime("gateway", c::gateway(config, password)),
        Command::Audits { peer, limit, json } => on_runtime("client", c::audits(config, peer, limit, json)),
        Command::Bench(b) => c::bench(config, b),
    }
}

/// Whether an error is only stdout's reader going away.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
