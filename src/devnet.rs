//! A whole network in one process: a coordinator and N nodes, each with its own data
//! directory under one root. `p2pstore devnet`, the test harness and the network benchmark
//! all stand on it; nodes and the coordinator can be stopped and restarted on their ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::coordinator;
use crate::net::server::{ServerError, ServerHandle};
use crate::node::{self, NodeOptions};
use crate::sys::clock::Clock;

pub struct Devnet {
    pub dir: PathBuf,
    pub config: Config,
    /// The clock every server of this network reads (the system's, or a test's manual one).
    pub clock: Clock,
    coordinator_addr: SocketAddr,
    coordinator: Option<ServerHandle>,
    node_addrs: Vec<SocketAddr>,
    nodes: Vec<Option<ServerHandle>>,
}

impl Devnet {
    /// Starts the coordinator on `host:port` (0: any free port) and `nodes` nodes on free
    /// ports; returns when every node has registered.
    pub async fn start(config: Config, dir: &Path, port: u16, nodes: usize) -> Result<Devnet, ServerError> {
        Devnet::start_with_clock(config, dir, port, nodes, Clock::system()).await
    }

    /// As [`Devnet::start`], with every server reading time from `clock`.
    pub async fn start_with_clock(
        config: Config,
        dir: &Path,
        port: u16,
        nodes: usize,
        clock: Clock,
    ) -> Result<Devnet, ServerError> {
        let mut config = config;
        // Every node registers from this machine's one address, at once.
        let burst = (2 * nodes as u32).saturating_add(10);
        config.limits.registrations_per_minute = config.limits.registrations_per_minute.max(burst);
        let host = config.coordinator.host.parse().unwrap_or([127, 0, 0, 1].into());
        let bind = SocketAddr::new(host, port);
        let c = coordinator::spawn(config.clone(), dir.join("coordinator"), bind, clock.clone()).await?;
        let mut net = Devnet {
            dir: dir.to_owned(),
            config,
            clock,
            coordinator_addr: c.addr,
            coordinator: Some(c),
            node_addrs: Vec::new(),
            nodes: Vec::new(),
        };
        for i in 0..nodes {
            let h = net.spawn_node(i, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            net.node_addrs.push(h.addr);
            net.nodes.push(Some(h));
        }
        Ok(net)
    }

    pub fn url(&self) -> String {
        let scheme = if self.config.tls.cert.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.coordinator_addr)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i:02}"))
    }

    async fn spawn_node(&self, i: usize, bind: SocketAddr) -> Result<ServerHandle, ServerError> {
        let opts = NodeOptions::from_config(&self.config, self.node_dir(i), bind, self.url(), self.clock.clone())?;
        node::spawn(opts).await
    }

    /// Stops node `i`: its port closes and open connections drop.
    pub async fn stop_node(&mut self, i: usize) {
        if let Some(h) = self.nodes[i].take() {
            h.shutdown().await;
        }
    }

    /// Starts node `i` again on its old port with its old data.
    pub async fn start_node(&mut self, i: usize) -> Result<(), ServerError> {
        if self.nodes[i].is_none() {
            self.nodes[i] = Some(self.spawn_node(i, self.node_addrs[i]).await?);
        }
        Ok(())
    }

    pub async fn stop_coordinator(&mut self) {
        if let Some(h) = self.coordinator.take() {
            h.shutdown().await;
        }
    }

    pub async fn start_coordinator(&mut self) -> Result<(), ServerError> {
        if self.coordinator.is_none() {
            let dir = self.dir.join("coordinator");
            let c = coordinator::spawn(self.config.clone(), dir, self.coordinator_addr, self.clock.clone()).await?;
            self.coordinator = Some(c);
        }
        Ok(())
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i).await;
        }
        self.stop_coordinator().await;
    }
}
