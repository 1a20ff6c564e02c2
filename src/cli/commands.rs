//! One function per command. Each takes the validated configuration and its own arguments,
//! prints what it must (data on stdout, progress and notes on stderr) and returns an error
//! that `main` prints once.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::{BenchCommand, PasswordArgs};
use crate::bench;
use crate::client::{Client, Source, UploadOptions, upload_state_dir};
use crate::config::Config;
use crate::coordinator;
use crate::core::codec::EncodeParams;
use crate::core::erasure::Shape;
use crate::core::manifest::FileId;
use crate::devnet::Devnet;
use crate::node::{self, NodeOptions};
use crate::proto::{AccountAdmission, AccountView, AdminAction, AdminReply, Deleted, PeerState, PeerStatus};
use crate::store::identity as keyfile;
use crate::sys::clock::Clock;

/// Writes to stdout; a closed pipe (`p2pstore ls | head`) ends the program quietly in main.
macro_rules! outln {
    ($($t:tt)*) => { writeln!(std::io::stdout(), $($t)*)? };
}
macro_rules! out {
    ($($t:tt)*) => { write!(std::io::stdout(), $($t)*)? };
}

pub(super) fn print_config(config: &Config) -> anyhow::Result<()> {
    out!("# from: {}\n{}", config.origin, toml::to_string(config).context("printing the configuration")?);
    Ok(())
}

pub(super) fn check_coordinator(config: &Config) -> anyhow::Result<()> {
    let report = coordinator::check(&config.coordinator.data_dir)?;
    for line in &report.lines {
        outln!("{line}");
    }
    if report.undecodable > 0 {
        bail!("{} stored records cannot be read (listed above)", report.undecodable);
    }
    Ok(())
}

/// Where the account key is: `[client] account` (or --account), else `account.p8` in the
/// user's config directory.
fn account_path(config: &Config) -> anyhow::Result<PathBuf> {
    if let Some(p) = &config.client.account {
        return Ok(p.clone());
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").context("no HOME: pass --account FILE")?).join(".config"),
    };
    Ok(base.join("p2pstore").join("account.p8"))
}

/// A client acting for the configured account. The default account file is created on
/// first use when the coordinator admits new accounts; a named one must exist.
async fn client(config: &Config) -> anyhow::Result<Client> {
    let path = account_path(config)?;
    let url = &config.client.coordinator;
    let account = if path.exists() || config.client.account.is_some() {
        keyfile::load_file(&path).with_context(|| "loading the account key (create one with `p2pstore account new`)")?
    } else {
        let probe = public_client(config);
        if probe.coordinator_info().await?.accounts == AccountAdmission::Invite {
            bail!(
                "no account key at {}: create one with `p2pstore account new` and ask the operator of {url} \
                 to admit it (`p2pstore coordinator account add ID`)",
                path.display()
            );
        }
        let a = keyfile::create_file(&path)?;
        eprintln!("created account {} in {}", a.peer_id(), path.display());
        a
    };
    Ok(Client::new(url, std::sync::Arc::new(account)))
}

/// A client for the network's public state only (peers, audits): it signs nothing.
fn public_client(config: &Config) -> Client {
    Client::with_fresh_account(&config.client.coordinator)
}

pub(super) fn account_new(config: &Config, out: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match out {
        Some(p) => p,
        None => account_path(config)?,
    };
    let a = keyfile::create_file(&path)?;
    eprintln!("account key written to {} (keep it: it owns your files)", path.display());
    outln!("{}", a.peer_id());
    Ok(())
}

fn print_accounts(accounts: &[AccountView]) -> anyhow::Result<()> {
    for a in accounts {
        outln!(
            "{}  quota {}  stored {} in {} files  pending {}  namespace {}",
            a.account_id,
            gb(a.quota),
            gb(a.stored),
            a.files,
            gb(a.pending),
            gb(a.names)
        );
    }
    Ok(())
}

pub(super) async fn account_show(config: Config, json: bool) -> anyhow::Result<()> {
    let view = client(&config).await?.account().await?;
    if json {
        return print_json(&view);
    }
    print_accounts(&[view])
}

/// An operator's command for the running coordinator whose data directory (and key) is
/// `[coordinator] data_dir`, signed with that key, sent to the port that coordinator said it
/// listens on (else the configured one).
async fn ask_running(config: &Config, action: AdminAction) -> anyhow::Result<AdminReply> {
    let dir = &config.coordinator.data_dir;
    let signed = coordinator::admin_request(dir, action, &Clock::system())?;
    let c = &config.coordinator;
    let port = std::fs::read_to_string(dir.join(coordinator::LISTENING))
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or(c.port);
    let host = if c.host == "0.0.0.0" || c.host == "::" { "127.0.0.1" } else { &c.host };
    let scheme = if config.tls.cert.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{host}:{port}/v2/admin");
    let reply = crate::net::client::Client::default().post_json(&url, &signed).await;
    reply
        .and_then(|r| r.json())
        .with_context(|| format!("the coordinator of {} did not answer at {url}", dir.display()))
}

/// An operator's command, on the database of a stopped coordinator or through the API of a
/// running one (signed with its key).
pub(super) async fn operator(config: Config, action: AdminAction, json: bool) -> anyhow::Result<()> {
    let dir = &config.coordinator.data_dir;
    let reply = match coordinator::admin_offline(dir, action.clone(), &config, &Clock::system()) {
        Ok(a) => a,
        // The database is held by the running coordinator (or the command needs it running).
        Err(coordinator::AdminError::Record(_) | coordinator::AdminError::NeedsRunning) => {
            ask_running(&config, action).await?
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        return print_json(&reply);
    }
    if let Some(r) = &reply.recovery {
        outln!(
            "asked {} peers holding {} shards: {} files recovered, {} placements filled in, {} files found deleted \
             since this database's backup",
            r.peers,
            r.shards,
            r.files_recovered,
            r.placements_filled,
            r.files_deleted
        );
    }
    for node in &reply.nodes {
        outln!("{node}  allowed");
    }
    print_accounts(&reply.accounts)
}

/// A backup of the running coordinator's database, written to `file` (mode 0600).
pub(super) async fn backup(config: Config, file: PathBuf) -> anyhow::Result<()> {
    let reply = ask_running(&config, AdminAction::Backup).await?;
    let mut text = String::new();
    for r in &reply.backup {
        text += &serde_json::to_string(r)?;
        text.push('\n');
    }
    crate::sys::fs::write_private(&file, text.as_bytes()).with_context(|| format!("writing {}", file.display()))?;
    eprintln!(
        "{} records written to {}; keep the coordinator's identity.p8 safe too",
        reply.backup.len(),
        file.display()
    );
    Ok(())
}

pub(super) fn restore(config: &Config, file: &Path) -> anyhow::Result<()> {
    let n = coordinator::restore(&config.coordinator.data_dir, file)?;
    eprintln!("{n} records restored into {}", config.coordinator.data_dir.display());
    Ok(())
}

async fn wait_for_ctrl_c() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}

pub(super) async fn coordinator(config: Config) -> anyhow::Result<()> {
    let c = &config.coordinator;
    let bind = SocketAddr::new(c.host.parse().context("coordinator.host")?, c.port);
    let h = coordinator::spawn(config.clone(), c.data_dir.clone(), bind, Clock::system()).await?;
    let scheme = if config.tls.cert.is_some() { "https" } else { "http" };
    eprintln!("coordinator listening on {scheme}://{}", h.addr);
    wait_for_ctrl_c().await?;
    h.shutdown().await;
    Ok(())
}

pub(super) async fn node(config: Config, advertise: Option<String>) -> anyhow::Result<()> {
    let port = config.node.port;
    let bind = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = config.node_data_dir(port);
    let mut opts = NodeOptions::from_config(&config, dir, bind, config.client.coordinator.clone(), Clock::system())?;
    opts.advertise = advertise;
    let h = node::spawn(opts).await?;
    eprintln!("node listening on {}", h.addr);
    wait_for_ctrl_c().await?;
    h.shutdown().await;
    Ok(())
}

pub(super) async fn node_exit(config: Config) -> anyhow::Result<()> {
    let dir = config.node_data_dir(config.node.port);
    let client = public_client(&config);
    let me = node::request_exit(&dir, &config.client.coordinator, &Clock::system()).await?;
    eprintln!("exit requested for peer {}; moving its {} shards", me.peer_id, me.placed);
    loop {
        let peers = client.peers().await?;
        let Some(p) = peers.iter().find(|p| p.peer_id == me.peer_id) else { bail!("the coordinator forgot this peer") };
        match p.status {
            PeerStatus::Exited => break,
            PeerStatus::Exiting => eprintln!("{} shards still to move", p.placed),
            other => bail!("the peer is {other:?}, not exiting"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("peer {} has exited: it may be stopped", me.peer_id);
    Ok(())
}

pub(super) async fn devnet(
    mut config: Config,
    nodes: usize,
    port: u16,
    data_dir: PathBuf,
    tls: bool,
) -> anyhow::Result<()> {
    if tls && config.tls.cert.is_none() {
        let ca = crate::net::tls::local_ca(&data_dir.join("tls")).context("making a private CA")?;
        crate::net::tls::trust_ca_file(&ca.ca)?;
        eprintln!("HTTPS with a private CA: clients pass --tls-ca {} (browsers: import it)", ca.ca.display());
        (config.tls.cert, config.tls.key) = (Some(ca.cert), Some(ca.key));
    }
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
    Ok(())
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

pub(super) async fn upload(
    config: Config,
    file: PathBuf,
    password: PasswordArgs,
    (k, n): (Option<u8>, Option<u8>),
    name: Option<String>,
    restart: bool,
) -> anyhow::Result<()> {
    let params = encode_params(&config, k, n)?;
    let stdin = file.as_os_str() == "-";
    if stdin && password.password.as_deref() == Some("") {
        anyhow::bail!("standard input carries the data: give the password with --password-file or P2PSTORE_PASSWORD");
    }
    let pw = password.get(true)?;
    let bar = progress();
    let say = |line: String| eprintln!("{line}");
    let opts = UploadOptions {
        progress: bar.clone(),
        name,
        state_dir: (!stdin).then(upload_state_dir).flatten(),
        restart,
        say: &say,
        ..UploadOptions::new(params)
    };
    let source = if stdin {
        Source::Stream { reader: Box::new(std::io::stdin()), name: "stdin".into(), size: None }
    } else {
        Source::File(file)
    };
    let id = client(&config).await?.upload_from(source, pw.as_bytes(), opts).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    outln!("{id}");
    Ok(())
}

pub(super) async fn gateway(config: Config, password: PasswordArgs) -> anyhow::Result<()> {
    let pw = password.get(false)?;
    let g = &config.gateway;
    let (credentials, fresh) = crate::gateway::credentials(g.access_key.clone(), g.secret_key.clone(), &g.data_dir)?;
    let shape = encode_params(&config, None, None)?.shape;
    let opts =
        crate::gateway::GatewayOptions { host: g.host.clone(), port: g.port, credentials: credentials.clone(), shape };
    let bound = crate::gateway::bind(client(&config).await?, pw.as_bytes(), opts).await?;
    let addr = bound.local_addr()?;
    if fresh {
        eprintln!(
            "generated S3 credentials (kept in {}; shown only now):\n  access key: {}\n  secret key: {}",
            g.data_dir.join("credentials.json").display(),
            credentials.access_key,
            credentials.secret_key
        );
    }
    eprintln!("S3 gateway listening on http://{addr} (region us-east-1, path-style)");
    bound.serve().await;
    Ok(())
}

pub(super) async fn download(
    config: Config,
    file_id: String,
    password: PasswordArgs,
    output: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<()> {
    let id = FileId::parse(&file_id)?;
    let pw = password.get(false)?;
    let bar = progress();
    let client = client(&config).await?;
    if output.as_deref() == Some(Path::new("-")) {
        let file = client.open(&id, pw.as_bytes()).await?;
        let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
        let (_, problems) = client.download_to(&file, 0..u64::MAX, out, bar.clone()).await?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        for p in &problems {
            eprintln!("warning: {p}");
        }
        return Ok(());
    }
    let report = client.download(&id, pw.as_bytes(), output.as_deref(), force, bar.clone()).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for p in &report.problems {
        eprintln!("warning: {p}");
    }
    eprintln!("wrote {}", report.path.display());
    Ok(())
}

pub(super) async fn info(config: Config, file_id: String, json: bool) -> anyhow::Result<()> {
    let view = client(&config).await?.info(&FileId::parse(&file_id)?).await?;
    if json {
        return print_json(&view);
    }
    let s = &view.summary;
    outln!("file     {}\nsize     {} bytes\nsegments {}\ncoding   {}-of-{}", s.file_id, s.size, s.segments, s.k, s.n);
    let t = view.totals.as_ref().context("the coordinator sent no health totals")?;
    outln!(
        "health   {} healthy, {} degraded, {} at risk, {} unreadable segments; fewest healthy shards: {}",
        t.healthy,
        t.degraded,
        t.at_risk,
        t.unreadable,
        t.min_healthy
    );
    if s.segments > view.placements.len() as u64 {
        outln!("(the first {} segments:)", view.placements.len());
    }
    for (i, (seg, h)) in view.placements.iter().zip(&view.health).enumerate() {
        let up = seg.iter().filter(|p| view.peers.get(*p).is_some_and(|v| v.state == PeerState::Online)).count();
        let queued = if h.repair_queued { ", repair queued" } else { "" };
        outln!("segment {i:>5}: {}/{} healthy, {up} on online peers{queued}", h.healthy, h.total);
    }
    Ok(())
}

pub(super) async fn ls(config: Config, json: bool) -> anyhow::Result<()> {
    let files = client(&config).await?.list().await?;
    if json {
        return print_json(&files);
    }
    for f in files {
        outln!("{}  {:>14} bytes  {}-of-{}", f.file_id, f.size, f.k, f.n);
    }
    Ok(())
}

fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

pub(super) async fn peers(config: Config, json: bool) -> anyhow::Result<()> {
    let peers = public_client(&config).peers().await?;
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
    Ok(())
}

pub(super) async fn rm(config: Config, file_id: String, password: PasswordArgs, json: bool) -> anyhow::Result<()> {
    let id = FileId::parse(&file_id)?;
    client(&config).await?.remove(&id, password.get(false)?.as_bytes()).await?;
    if json {
        return print_json(&Deleted { deleted: id.to_string() });
    }
    eprintln!("deleted {id}");
    Ok(())
}

pub(super) async fn audits(config: Config, peer: Option<String>, limit: usize, json: bool) -> anyhow::Result<()> {
    let audits = public_client(&config).audits(peer.as_deref(), limit).await?;
    if json {
        return print_json(&audits);
    }
    for a in audits {
        let outcome = format!("{:?}", a.outcome).to_lowercase();
        outln!("{}  {}  {:<7}  reputation {:.3}  {}", a.time, a.peer_id, outcome, a.reputation, a.detail);
    }
    Ok(())
}

/// A temporary directory for a benchmark's data inside `dir`, removed afterwards.
fn bench_dir(dir: &Path) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    Ok(tempfile::tempdir_in(dir)?)
}

pub(super) fn bench(config: Config, b: BenchCommand) -> anyhow::Result<()> {
    let params = encode_params(&config, None, None)?;
    let report = match b {
        BenchCommand::Codec { size_mib, memory_mib } => bench::codec_report(size_mib << 20, memory_mib << 20, params),
        BenchCommand::Network { size_mib, nodes, dir, tls } => {
            let tmp = bench_dir(&dir)?;
            super::on_runtime("bench", bench::network(size_mib << 20, nodes, tmp.path(), params, tls))?
        }
        BenchCommand::Repair { size_mib, nodes, stop, dir } => {
            let tmp = bench_dir(&dir)?;
            super::on_runtime("bench", bench::repair(nodes, stop, size_mib << 20, tmp.path()))?
        }
        BenchCommand::Audits { peers, segments, seconds, dir } => {
            let tmp = bench_dir(&dir)?;
            super::on_runtime("bench", bench::audits(peers, segments, seconds.max(2), tmp.path()))?
        }
        BenchCommand::Reputation => bench::reputation_report(config.reputation.disqualify_below),
        BenchCommand::Admission { peers, accounts, seconds, half_open, dir } => {
            let tmp = bench_dir(&dir)?;
            let run = bench::AdmissionRun { peers, accounts, secs: seconds.max(1), half_open };
            super::on_runtime("bench", bench::admission(run, tmp.path()))?
        }
    };
    out!("{report}");
    Ok(())
}
