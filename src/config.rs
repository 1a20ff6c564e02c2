//! Configuration: `config.toml` with serde defaults and validation. Precedence, highest
//! first: command-line flag, environment variable (both resolved by clap in `cli`), config
//! file, built-in default. Anything unknown, mistyped or impossible is refused at start with
//! the key and the file named.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::codec::DEFAULT_SEGMENT_SIZE;
use crate::core::crypto::{DEFAULT_ITERATIONS, MAX_ITERATIONS, MIN_ITERATIONS};
use crate::core::manifest::{MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};
pub use crate::core::placement::Spread;
pub use crate::proto::{AccountAdmission, NodeAdmission};

/// Where the configuration came from, for error messages.
pub const BUILT_IN: &str = "built-in defaults";

/// Errors in the configuration, always naming the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {origin}: `{key}` {message}")]
    Invalid { origin: String, key: &'static str, message: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub coordinator: CoordinatorConfig,
    pub node: NodeConfig,
    pub security: SecurityConfig,
    pub client: ClientConfig,
    pub gateway: GatewayConfig,
    pub audit: AuditConfig,
    pub reputation: ReputationConfig,
    pub repair: RepairConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub placement: PlacementConfig,
    /// Where this configuration was read from (not a key).
    #[serde(skip)]
    pub origin: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Address to listen on. Loopback by default: exposing a coordinator is a choice.
    pub host: String,
    pub port: u16,
    pub max_peers: u32,
    /// Seconds without a heartbeat before a peer counts as offline.
    pub heartbeat_timeout: u64,
    pub data_dir: PathBuf,
    /// Seconds an upload may take between plan and commit; its shards are collected after.
    pub upload_expiry: u64,
    /// Seconds between garbage-collection rounds (live-shard lists sent to nodes).
    pub gc_interval: u64,
    /// Whether peers may advertise loopback, private, link-local or other non-public
    /// addresses (the coordinator dials them). Unset: allowed when the coordinator listens on
    /// a loopback address (a network on one machine), refused otherwise.
    pub allow_private_addresses: Option<bool>,
    /// Days a peer may be offline before it no longer counts towards `max_peers` (and is
    /// forgotten once it holds nothing; a disqualified one is remembered as such).
    pub forget_after: u64,
}

/// What one client, one address or one connection may cost a server, decided before the
/// work is done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections a server keeps open at once; more wait in the kernel's backlog.
    pub connections: usize,
    /// Connections one IP address may hold open on a server; more are closed at once.
    pub connections_per_address: usize,
    /// Seconds a connection may take to send a request's headers, or stay idle between
    /// requests.
    pub header_timeout: u64,
    /// Upload plans (CLI and browser) an account, or an address, may ask for per minute.
    pub plans_per_minute: u32,
    /// New peers one address may register per minute.
    pub registrations_per_minute: u32,
    /// New accounts one address may register per hour (`[security] accounts = "open"`).
    pub accounts_per_hour: u32,
    /// Uploads an account may have planned and not yet committed.
    pub pending_uploads: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            connections: 4096,
            connections_per_address: 256,
            header_timeout: 10,
            plans_per_minute: 600,
            registrations_per_minute: 30,
            accounts_per_hour: 60,
            pending_uploads: 32,
        }
    }
}

/// Where shards go (`core::placement`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// `subnet`: at most one shard of a segment per IPv4 /24 or IPv6 /64; `host`: per IP
    /// address; `none`: per peer. Loopback addresses are one domain per port in every mode.
    pub spread: Spread,
    /// Share of a segment's shards that may go to peers still being vetted (at least one),
    /// while enough vetted peers exist.
    pub vetting_share: f64,
    /// GB a peer is believed to have before it has proven more: a vetted peer earns twice what
    /// it holds on top; declared space beyond that is a limit, never a weight.
    pub new_peer_credit_gb: f64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig { spread: Spread::Subnet, vetting_share: 0.25, new_peer_credit_gb: 1.0 }
    }
}

/// HTTPS: a server (coordinator, node) serves TLS when given a certificate and key; every
/// client verifies servers against the system's roots plus `ca_file`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain this process serves with (coordinator or node).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA certificates to trust besides the system's roots (a private CA, self-signed).
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Seconds between audits of a peer (a quarter of it while the peer is being vetted).
    pub interval: u64,
    /// Seconds a peer has to answer an audit.
    pub timeout: u64,
    /// Audits a new peer must pass before it is vetted.
    pub vetting_audits: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationConfig {
    /// Below this audit score (proven bad data) a peer is disqualified for good and its
    /// shards repaired. Chosen by simulation: see `core::reputation` and the README.
    pub disqualify_below: f64,
    /// Below this score of answers that prove nothing either way (errors, garbled replies),
    /// a peer is suspended: no new data, its shards repaired after the grace period; it is
    /// lifted when the score recovers.
    pub suspend_below: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepairConfig {
    /// A segment is repaired when its healthy shards are at most k + threshold (12 of 20 for
    /// 8-of-20): four more losses still leave it readable, time enough to rebuild.
    pub threshold: u32,
    /// Seconds a peer may be offline before its shards count as lost.
    pub grace_period: u64,
    /// Seconds between health checks of every segment.
    pub check_interval: u64,
    /// Segments repaired at once.
    pub concurrency: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { interval: 300, timeout: 10, vetting_audits: 10 }
    }
}

impl Default for ReputationConfig {
    fn default() -> Self {
        ReputationConfig { disqualify_below: 0.96, suspend_below: 0.6 }
    }
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig { threshold: 4, grace_period: 300, check_interval: 60, concurrency: 2 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Unset: `./data/node-<port>`, so several nodes on one machine never clash.
    pub data_dir: Option<PathBuf>,
    pub port: u16,
    pub max_storage_gb: f64,
    /// n: shards per segment.
    pub shards_total: u32,
    /// k: shards that rebuild a segment.
    pub shards_required: u32,
    /// Deprecated: the seed's name for `[audit] interval`, still accepted with a warning.
    pub audit_interval: Option<u64>,
    /// Seconds between a node's heartbeats.
    pub heartbeat_interval: u64,
    /// Days a deleted shard stays in the node's trash, restorable, before it is removed.
    pub trash_retention: u64,
    /// Seconds a node takes to re-read and re-hash every shard it holds once (scrubbing, at
    /// most 50 MB/s); what it finds missing or corrupt it reports, and the coordinator
    /// repairs.
    pub scrub_interval: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// `open`: any account registers on its first signed request, with `default_quota_gb`;
    /// `invite`: only accounts an operator added (`p2pstore coordinator account add`).
    pub accounts: AccountAdmission,
    /// Quota of an account that registered itself, in GB of file sizes (plaintext).
    pub default_quota_gb: f64,
    /// `open`: any node that proves its key and address may register; `allowlist`: only node
    /// ids an operator allowed (`p2pstore coordinator node allow ID`).
    pub node_admission: NodeAdmission,
    /// Bits of proof-of-work a new node's key must carry (each bit doubles the cost of an
    /// identity; 16 takes a fraction of a second).
    pub node_pow_bits: u32,
    pub min_reputation: f64,
    /// The largest file a plan may be for, in MB (2^20 bytes); 0 means the protocol's own
    /// bound (an upload has at most 16,777,216 segments).
    pub max_upload_size_mb: u64,
    /// p2pstore always encrypts; kept for the seed's config files, and `false` is refused.
    pub require_encryption: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    pub coordinator: String,
    /// The account key file clients sign with; unset: `account.p8` in the user's config
    /// directory (`$XDG_CONFIG_HOME/p2pstore` or `~/.config/p2pstore`), made on first use.
    pub account: Option<PathBuf>,
    /// Bytes of a sealed segment.
    pub segment_size: u32,
    pub kdf_iterations: u32,
}

/// `p2pstore gateway`: the S3 gateway a user runs on their own machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub host: String,
    pub port: u16,
    /// The S3 access key clients sign with (also `P2PSTORE_GATEWAY_ACCESS_KEY`); unset with
    /// `secret_key`: a pair generated at first start and kept in `data_dir`.
    pub access_key: Option<String>,
    /// Its secret key (also `P2PSTORE_GATEWAY_SECRET_KEY`).
    pub secret_key: Option<String>,
    /// Where the gateway keeps its generated credentials.
    pub data_dir: PathBuf,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            host: "127.0.0.1".into(),
            port: 9000,
            access_key: None,
            secret_key: None,
            data_dir: PathBuf::from("./data/gateway"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            coordinator: CoordinatorConfig::default(),
            node: NodeConfig::default(),
            security: SecurityConfig::default(),
            client: ClientConfig::default(),
            gateway: GatewayConfig::default(),
            audit: AuditConfig::default(),
            reputation: ReputationConfig::default(),
            repair: RepairConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            placement: PlacementConfig::default(),
            origin: BUILT_IN.into(),
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            max_peers: 1000,
            heartbeat_timeout: 60,
            data_dir: "./data/coordinator".into(),
            upload_expiry: 3600,
            gc_interval: 600,
            allow_private_addresses: None,
            forget_after: 30,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: None,
            port: 9000,
            max_storage_gb: 10.0,
            shards_total: 20,
            shards_required: 8,
            audit_interval: None,
            heartbeat_interval: 10,
            trash_retention: 7,
            scrub_interval: 7 * 86_400,
        }
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            accounts: AccountAdmission::Open,
            default_quota_gb: 100.0,
            node_admission: NodeAdmission::Open,
            node_pow_bits: 16,
            min_reputation: 0.98,
            max_upload_size_mb: 65_536,
            require_encryption: true,
        }
    }
}

impl LimitsConfig {
    /// What a server's connections may hold, from these limits.
    pub fn connections(&self) -> (usize, usize, std::time::Duration) {
        (self.connections, self.connections_per_address, std::time::Duration::from_secs(self.header_timeout))
    }
}

impl CoordinatorConfig {
    /// Whether peers may advertise non-public addresses (see `allow_private_addresses`).
    pub fn private_addresses_allowed(&self) -> bool {
        self.allow_private_addresses
            .unwrap_or_else(|| self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
    }
}

impl SecurityConfig {
    /// `max_upload_size_mb` in bytes (no limit of its own when 0).
    pub fn max_upload_size(&self) -> u64 {
        match self.max_upload_size_mb {
            0 => u64::MAX,
            mb => mb.saturating_mul(1 << 20),
        }
    }

    /// `default_quota_gb` in bytes.
    pub fn default_quota(&self) -> u64 {
        gb_to_bytes(self.default_quota_gb)
    }
}

/// GB (10^9 bytes) to bytes, saturating.
pub fn gb_to_bytes(gb: f64) -> u64 {
    (gb * 1e9) as u64
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            coordinator: "http://127.0.0.1:8000".into(),
            account: None,
            segment_size: DEFAULT_SEGMENT_SIZE,
            kdf_iterations: DEFAULT_ITERATIONS,
        }
    }
}

impl Config {
    /// Loads `explicit` (which must exist), else `./config.toml` when present, else the
    /// built-in defaults; then validates.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let default_path = Path::new("config.toml");
        let path = match explicit {
            Some(p) => p,
            None if default_path.is_file() => default_path,
            None => return Ok(Config::default()),
        };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut c = Config::parse(&text, path)?;
        c.origin = path.display().to_string();
        if let Some(v) = c.node.audit_interval.take() {
            tracing::warn!("{}: [node] audit_interval is deprecated; use [audit] interval", c.origin);
            if c.audit.interval == AuditConfig::default().interval {
                c.audit.interval = v;
            }
        }
        c.validate()?;
        Ok(c)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string().trim_end().to_string() })
    }

    /// Refuses impossible values; call again after applying command-line overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_roles()?;
        self.check_upkeep()?;
        self.check_client()
    }

    fn invalid(&self, key: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { origin: format!("({})", self.origin), key, message: message.into() }
    }

    /// Coding shape, addresses and capacity.
    fn check_roles(&self) -> Result<(), ConfigError> {
        let (n, k) = (self.node.shards_total, self.node.shards_required);
        if n > 255 {
            return Err(self.invalid("node.shards_total", format!("is {n}; at most 255 shards per segment")));
        }
        if k == 0 {
            return Err(self.invalid("node.shards_required", "must be at least 1"));
        }
        if k >= n {
            return Err(
                self.invalid("node.shards_required", format!("({k}) must be less than node.shards_total ({n})"))
            );
        }
        if self.coordinator.host.parse::<std::net::IpAddr>().is_err() {
            return Err(self.invalid("coordinator.host", format!("`{}` is not an IP address", self.coordinator.host)));
        }
        if self.coordinator.port == 0 {
            return Err(self.invalid("coordinator.port", "must not be 0: clients need a fixed port to reach it"));
        }
        if self.node.port == 0 {
            return Err(self.invalid("node.port", "must not be 0"));
        }
        let gb = self.node.max_storage_gb;
        if !(gb > 0.0 && gb.is_finite()) {
            return Err(self.invalid("node.max_storage_gb", format!("must be a positive number, got {gb}")));
        }
        Ok(())
    }

    /// Intervals, audits, reputation and repair.
    fn check_upkeep(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("coordinator.heartbeat_timeout", self.coordinator.heartbeat_timeout),
            ("node.heartbeat_interval", self.node.heartbeat_interval),
            ("audit.interval", self.audit.interval),
            ("audit.timeout", self.audit.timeout),
            ("repair.check_interval", self.repair.check_interval),
            ("coordinator.upload_expiry", self.coordinator.upload_expiry),
            ("coordinator.gc_interval", self.coordinator.gc_interval),
            ("node.scrub_interval", self.node.scrub_interval),
        ] {
            if v == 0 {
                return Err(self.invalid(key, "must be at least 1 second"));
            }
        }
        if self.repair.concurrency == 0 {
            return Err(self.invalid("repair.concurrency", "must be at least 1"));
        }
        let (dq, min) = (self.reputation.disqualify_below, self.security.min_reputation);
        if !(0.0..1.0).contains(&dq) || dq > min {
            let message = format!("must be between 0 and security.min_reputation ({min}), got {dq}");
            return Err(self.invalid("reputation.disqualify_below", message));
        }
        if !(0.0..=1.0).contains(&min) {
            return Err(self.invalid("security.min_reputation", format!("must be between 0 and 1, got {min}")));
        }
        let susp = self.reputation.suspend_below;
        if !(0.0..1.0).contains(&susp) {
            return Err(self.invalid("reputation.suspend_below", format!("must be between 0 and 1, got {susp}")));
        }
        let share = self.placement.vetting_share;
        if !(0.0..=1.0).contains(&share) {
            return Err(self.invalid("placement.vetting_share", format!("must be between 0 and 1, got {share}")));
        }
        let credit = self.placement.new_peer_credit_gb;
        if !(credit > 0.0 && credit.is_finite()) {
            return Err(
                self.invalid("placement.new_peer_credit_gb", format!("must be a positive number, got {credit}"))
            );
        }
        for (key, v) in [
            ("limits.connections", self.limits.connections as u64),
            ("limits.connections_per_address", self.limits.connections_per_address as u64),
            ("limits.header_timeout", self.limits.header_timeout),
            ("limits.plans_per_minute", self.limits.plans_per_minute as u64),
            ("limits.registrations_per_minute", self.limits.registrations_per_minute as u64),
            ("limits.accounts_per_hour", self.limits.accounts_per_hour as u64),
            ("limits.pending_uploads", self.limits.pending_uploads as u64),
        ] {
            if v == 0 {
                return Err(self.invalid(key, "must be at least 1"));
            }
        }
        if self.security.node_pow_bits > 40 {
            let bits = self.security.node_pow_bits;
            return Err(
                self.invalid("security.node_pow_bits", format!("at most 40 (2^40 hashes per identity), got {bits}"))
            );
        }
        let q = self.security.default_quota_gb;
        if !(q >= 0.0 && q.is_finite()) {
            return Err(self.invalid("security.default_quota_gb", format!("must be 0 or more GB, got {q}")));
        }
        Ok(())
    }

    /// What clients encode with and where they connect.
    fn check_client(&self) -> Result<(), ConfigError> {
        if !self.security.require_encryption {
            let message = "cannot be false: p2pstore always encrypts on the client";
            return Err(self.invalid("security.require_encryption", message));
        }
        let size = self.client.segment_size;
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size) {
            let message = format!("must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes, got {size}");
            return Err(self.invalid("client.segment_size", message));
        }
        let it = self.client.kdf_iterations;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&it) {
            let message = format!("must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}, got {it}");
            return Err(self.invalid("client.kdf_iterations", message));
        }
        let url = &self.client.coordinator;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(self.invalid("client.coordinator", format!("must be an http:// URL, got `{url}`")));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(self.invalid("tls.cert", "and tls.key go together: give both (HTTPS) or neither (HTTP)"));
        }
        Ok(())
    }

    /// The node data directory for a port when none is configured.
    pub fn node_data_dir(&self, port: u16) -> PathBuf {
        self.node.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("./data/node-{port}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("my.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(Some(&p))
    }

    fn err(text: &str) -> String {
        load_str(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(load_str("").unwrap().node.shards_total, 20);
    }

    #[test]
    fn the_shipped_config_loads() {
        let c = Config::load(Some(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")))).unwrap();
        assert_eq!(c.coordinator.port, 8000);
        assert_eq!(c.limits, LimitsConfig::default(), "config.toml shows the defaults");
    }

    #[test]
    fn refusals_name_the_key_and_file() {
        let cases = [
            ("[node]\nshards_totl = 3\n", "shards_totl"),
            ("[nod]\n", "nod"),
            ("[node]\nport = \"x\"\n", "port"),
            ("[node]\nshards_required = 20\n", "node.shards_required"),
            ("[node]\nshards_required = 0\n", "node.shards_required"),
            ("[node]\nshards_total = 300\nshards_required = 8\n", "node.shards_total"),
            ("[coordinator]\nport = 0\n", "coordinator.port"),
            ("[node]\nport = 0\n", "node.port"),
            ("[node]\nport = 70000\n", "port"),
            ("[security]\nmin_reputation = 2.0\n", "security.min_reputation"),
            ("[security]\nrequire_encryption = false\n", "security.require_encryption"),
            ("[client]\nkdf_iterations = 1000\n", "client.kdf_iterations"),
            ("[audit]\ninterval = 0\n", "audit.interval"),
            ("[reputation]\ndisqualify_below = 0.99\n", "reputation.disqualify_below"),
            ("[repair]\nconcurrency = 0\n", "repair.concurrency"),
            ("[node]\nmax_storage_gb = -1\n", "node.max_storage_gb"),
        ];
        for (text, key) in cases {
            let e = err(text);
            assert!(e.contains(key), "{text:?} gave {e}");
            assert!(e.contains("my.toml"), "{text:?} gave {e}");
        }
    }

    #[test]
    fn old_audit_interval_name_still_works() {
        let c = load_str("[node]\naudit_interval = 42\n").unwrap();
        assert_eq!(c.audit.interval, 42);
        assert_eq!(c.node.audit_interval, None);
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/p2pstore.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/p2pstore.toml"));
    }
}
