//! Serving PD: gRPC (`pdpb.PD`, HTTP/2) and the JSON API (`/pd/api/v1`,
//! HTTP/1.1 or 2) on one listener.
//!
//! The tonic service and the axum routes form one axum router; each accepted
//! connection is served by hyper's auto builder, which detects the HTTP
//! version from the first bytes. Every connection and every HTTP/2 stream
//! task is spawned through [`tasks::Tasks`], so [`PdHandle::shutdown`] can
//! end them all and return only once the metadata engine is released — a
//! test can restart PD on the same data dir right away.
//!
//! One more task, the patrol, calls [`Cluster::patrol`] every
//! `schedule.patrol-region-interval` and pushes the first steps of new
//! operators onto the leaders' heartbeat streams ([`streams`]), which the
//! gRPC service and the HTTP operator API share.

mod admin_api;
mod convert;
mod grpc;
mod http;
mod json;
mod streams;
mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mnemo_node::engine::RocksEngine;
use mnemo_proto::pdpb::pd_server::PdServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::Result;
use crate::member::Member;
use streams::HeartbeatStreams;

pub use json::hex_key;

/// A running PD member. Dropping it stops the server in the background; use
/// [`PdHandle::shutdown`] to wait for that.
pub struct PdHandle {
    addr: SocketAddr,
    cluster: Arc<Cluster>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl PdHandle {
    /// The address the listener is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The advertised client URL (`http://host:port`), as `GetMembers` reports it.
    pub fn client_url(&self) -> &str {
        &self.cluster.member().client_url
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster.cluster_id()
    }

    /// The cluster, for in-process inspection. Holding a clone past
    /// [`PdHandle::shutdown`] keeps the data dir locked.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Stops accepting, drops every connection and stream, and returns once
    /// the metadata engine is closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            warn!(error = %e, "PD server task failed");
        }
        info!(addr = %self.addr, "PD stopped");
    }

    /// Serves until the accept loop ends, i.e. forever unless the task
    /// panics (the binary's main waits here). Dropping a handle instead stops
    /// the server in the background.
    pub async fn wait(self) {
        let PdHandle { task, stop, .. } = self;
        if let Err(e) = task.await {
            warn!(error = %e, "PD server task failed");
        }
        drop(stop);
    }
}

/// Binds the host:port of `client-urls` and starts serving.
pub async fn start(config: Config) -> Result<PdHandle> {
    config.validate()?;
    let listener = TcpListener::bind(config.listen_url()?.host_port()).await?;
    start_with_listener(config, listener).await
}

/// Starts serving on an already bound listener (tests bind `127.0.0.1:0`).
/// An advertised port of 0 is replaced by the listener's port.
pub async fn start_with_listener(config: Config, listener: TcpListener) -> Result<PdHandle> {
    config.validate()?;
    let addr = listener.local_addr()?;
    let mut advertised = config.advertise_client_url()?;
    if advertised.port == 0 {
        advertised.port = addr.port();
    }
    let member = Member::new(&config, &advertised)?;
    std::fs::create_dir_all(&config.data_dir)?;
    let engine = RocksEngine::open(&config.data_dir.join("meta"))?;
    let cluster = Arc::new(Cluster::open(config, member, Arc::new(engine))?);
    info!(%addr, client_url = %cluster.member().client_url, cluster_id = cluster.cluster_id(), "PD serving");
    let streams = Arc::new(HeartbeatStreams::default());
    let router = router(cluster.clone(), streams.clone());
    let (stop, stopped) = watch::channel(false);
    let tasks = tasks::Tasks::new();
    tasks.spawn(patrol_loop(cluster.clone(), streams));
    let task = tokio::spawn(accept_loop(listener, router, tasks, stopped));
    Ok(PdHandle { addr, cluster, stop, task })
}

/// gRPC and HTTP routes together; anything else is 404 (or gRPC
/// `UNIMPLEMENTED` for a gRPC request).
fn router(cluster: Arc<Cluster>, streams: Arc<HeartbeatStreams>) -> axum::Router {
    let pd = PdServer::new(grpc::PdService::new(cluster.clone(), streams.clone()));
    tonic::service::Routes::new(pd)
        .into_axum_router()
        .merge(http::routes(cluster.clone()))
        .merge(admin_api::routes(cluster, streams))
        .fallback(http::fallback)
}

/// Runs the patrol forever (until shutdown aborts it). The interval is read
/// each round, so a run-time change applies at once.
async fn patrol_loop(cluster: Arc<Cluster>, streams: Arc<HeartbeatStreams>) {
    loop {
        tokio::time::sleep(cluster.patrol_interval()).await;
        match cluster.patrol() {
            Ok(orders) => streams.push(cluster.cluster_id(), &orders),
            Err(e) => warn!(error = %e, "patrol failed"),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    tasks: tasks::Tasks,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little
                    // instead of spinning on the error.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let exec = tasks.clone();
        tasks.spawn(async move {
            let builder = auto::Builder::new(exec);
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = builder.serve_connection_with_upgrades(io, service).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(router);
    tasks.shutdown().await;
}
