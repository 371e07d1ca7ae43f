//! A test's NATS: one nats-server, or a cluster of them with every stream
//! replicated on three nodes.

use crate::deploy::DeployNats;
use natter_localinfra::{Fsync, NatsCluster, NatsOptions, NatsServer};
use std::path::Path;

pub enum TestNats {
    Single(Box<NatsServer>),
    Cluster(NatsCluster),
    /// One server with `deploy/nats/accounts.conf`: each service connects as
    /// its own user, with only the permissions production gives it.
    Deploy(Box<DeployNats>),
}

impl TestNats {
    /// One server (`nodes` ≤ 1) or a cluster of `nodes`, under `dir`.
    pub fn start(dir: &Path, nodes: usize) -> natter_localinfra::Result<Self> {
        if nodes > 1 {
            return NatsCluster::start(dir, nodes, Fsync::Interval).map(Self::Cluster);
        }
        NatsServer::start(NatsOptions {
            data_dir: dir.to_path_buf(),
            port: None,
            fsync: Fsync::Interval,
            cluster: None,
        })
        .map(|server| Self::Single(Box::new(server)))
    }

    /// The server of `deploy/` with its accounts and permissions.
    pub fn start_deploy() -> anyhow::Result<Self> {
        DeployNats::start().map(|server| Self::Deploy(Box::new(server)))
    }

    /// `NATS_URL` for the services: every node's URL, comma-separated.
    pub fn url(&self) -> String {
        match self {
            Self::Single(server) => server.url(),
            Self::Cluster(cluster) => cluster.urls(),
            Self::Deploy(server) => server.url(),
        }
    }

    /// `NATS_URL` for the service that connects as `user` (`gateway` or
    /// `persister`): with its credentials on the deploy server.
    pub fn url_for(&self, user: &str) -> String {
        match self {
            Self::Deploy(server) => server.url_as(user),
            _ => self.url(),
        }
    }

    /// One node's URL, for a client of the test's own (it learns the rest).
    pub fn first_url(&self) -> String {
        match self {
            Self::Single(server) => server.url(),
            Self::Cluster(cluster) => cluster.nodes()[0].url(),
            // The test's own client has the gateway's rights there.
            Self::Deploy(server) => server.url_as("gateway"),
        }
    }

    /// How many servers there are.
    pub fn len(&self) -> usize {
        match self {
            Self::Single(_) | Self::Deploy(_) => 1,
            Self::Cluster(cluster) => cluster.nodes().len(),
        }
    }

    /// Never: there is always at least one server.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Server `i` (0 for a single server), to kill, pause or restart.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        match self {
            Self::Single(server) => server,
            Self::Cluster(cluster) => cluster.node_mut(i),
            Self::Deploy(_) => panic!("the permissions server is not one to kill or pause"),
        }
    }

    /// Server `i`.
    pub fn node(&self, i: usize) -> &NatsServer {
        match self {
            Self::Single(server) => server,
            Self::Cluster(cluster) => &cluster.nodes()[i],
            Self::Deploy(_) => panic!("the permissions server is not one to kill or pause"),
        }
    }
}
