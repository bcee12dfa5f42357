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
//! Beside it: the backend — with raft, the peer listener (`peer-urls`),
//! where the other PD members' raft messages arrive (`crate::raft`); with
//! etcd, the session and watch tasks (`crate::etcd`); the leader task, which promotes
//! this member when the PD group makes it leader ([`Cluster::promote`]) and
//! publishes the members' URLs; and the patrol, which calls
//! [`Cluster::patrol`] every `schedule.patrol-region-interval` on the leader
//! and pushes the first steps of new operators onto the leaders' heartbeat
//! streams ([`streams`]), which the gRPC service and the HTTP operator API
//! share.

mod admin_api;
mod convert;
mod grpc;
mod http;
mod inspect_api;
pub use inspect_api::DEFAULT_TOP;
mod json;
mod proxy;
mod streams;
mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::{Duration, Instant};

use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mnemo_engine::{EngineRef, RocksEngine};
use mnemo_proto::pdpb::pd_server::PdServer;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;
use crate::config::{Backend, Config};
use crate::error::Result;
use crate::etcd::{self, EtcdHandle, EtcdSettings};
use crate::member::{member_id, Member};
use crate::meta::{SharedMeta, StateMachine};
use crate::raft::{self, PeerTransport, RaftHandle, RaftSettings};
use streams::HeartbeatStreams;

pub use json::hex_key;

/// A running PD member. Dropping it stops the server in the background; use
/// [`PdHandle::shutdown`] to wait for that.
pub struct PdHandle {
    addr: SocketAddr,
    cluster: Arc<Cluster>,
    backend: BackendHandle,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What keeps the metadata and elects the leader (`backend`).
enum BackendHandle {
    /// The members' own raft group.
    Raft {
        raft: RaftHandle,
        thread: std::thread::JoinHandle<()>,
        peer_rt: PeerRuntime,
        /// The peer listener's task (on `peer_rt`).
        peer_server: JoinHandle<()>,
    },
    /// An external etcd.
    Etcd(EtcdHandle),
}

impl BackendHandle {
    /// Stops it; returns once its threads and tasks are done.
    async fn shutdown(self) {
        match self {
            BackendHandle::Raft { raft, thread, peer_rt, peer_server } => {
                raft.stop();
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                // Dropped, not drained: other members keep their streams
                // open. The listener is closed when this returns (a restart
                // may bind it).
                peer_server.abort();
                let _ = peer_server.await;
                drop(peer_rt);
            }
            BackendHandle::Etcd(etcd) => etcd.stop().await,
        }
    }

    /// Asks it to stop without waiting (the server ended on its own).
    fn stopper(&self) -> Box<dyn FnOnce() + Send> {
        match self {
            BackendHandle::Raft { raft, .. } => {
                let raft = raft.clone();
                Box::new(move || raft.stop())
            }
            BackendHandle::Etcd(etcd) => {
                let etcd = etcd.clone();
                Box::new(move || etcd.signal_stop())
            }
        }
    }
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
        self.backend.shutdown().await;
        // Blocking work the leader task started (a promotion, publishing
        // members) may still hold the cluster for a moment; the engine
        // closes with the last holder.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.cluster) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(self.cluster);
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
    std::fs::create_dir_all(&config.data_dir)?;
    let tick = config.tick_interval.0;
    let election = config.election_interval.0;
    let (cluster, backend, transport, lone) = match config.backend {
        Backend::Raft => {
            let RaftStarted { member, sm, raft, handle, transport, lone } =
                start_raft(&config, &advertised).await?;
            let cluster =
                Cluster::with_replicator(config, member, sm, Box::new(raft.clone()), Arc::new(raft));
            (cluster, handle, Some(transport), lone)
        }
        Backend::Etcd => {
            let member = Member::new(&config, &advertised)?;
            let sm = Arc::new(Mutex::new(StateMachine::from_records(Vec::new())?));
            let settings = EtcdSettings {
                endpoints: config.etcd_endpoints(),
                prefix: config.etcd_prefix.clone(),
                tick,
                election,
            };
            let etcd = etcd::start(member.clone(), sm.clone(), settings).await?;
            let (replicator, leadership) = (Box::new(etcd.clone()), Arc::new(etcd.clone()));
            let cluster = Cluster::with_replicator(config, member, sm, replicator, leadership);
            (cluster, BackendHandle::Etcd(etcd), None, false)
        }
    };
    let cluster = Arc::new(cluster);
    info!(%addr, client_url = %cluster.member().client_url, member_id = cluster.member().member_id, "PD member started");
    let streams = Arc::new(HeartbeatStreams::default());
    let router = router(cluster.clone(), streams.clone());
    let (stop, stopped) = watch::channel(false);
    let tasks = tasks::Tasks::new();
    tasks.spawn(patrol_loop(cluster.clone(), streams));
    tasks.spawn(leader_loop(cluster.clone(), transport, tick));
    let task = tokio::spawn(accept_loop(listener, router, tasks, stopped, backend.stopper()));
    // A lone member elects itself at once: be ready to answer before
    // returning, as a single PD always was. A member of a larger group may
    // wait for its peers; callers poll.
    if lone {
        let deadline = Instant::now() + election * 10;
        while cluster.check_serving().is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(PdHandle { addr, cluster, backend, stop, task })
}

/// A started raft backend.
struct RaftStarted {
    /// This member as it advertises itself (the peer port the listener got).
    member: Member,
    sm: SharedMeta,
    raft: RaftHandle,
    handle: BackendHandle,
    transport: PeerTransport,
    /// The group has this member only.
    lone: bool,
}

/// Binds the peer listener, opens the metadata in `data-dir`, and starts
/// this member's raft group member.
async fn start_raft(config: &Config, advertised: &crate::config::HttpUrl) -> Result<RaftStarted> {
    // Raft traffic between members runs on a runtime of its own: request
    // handlers wait for proposals on the main runtime's threads, and the
    // messages that commit those proposals must flow meanwhile.
    let peer_rt = PeerRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pd-peer")
            .enable_all()
            .build()?,
    ));
    let peer_listener = std::net::TcpListener::bind(config.peer_listen_url()?.host_port())?;
    peer_listener.set_nonblocking(true)?;
    let peer_addr = peer_listener.local_addr()?;
    let mut member = Member::new(config, advertised)?;
    let mut peer_url = config.advertise_peer_url()?;
    if peer_url.port == 0 {
        peer_url.port = peer_addr.port();
        member.peer_url = peer_url.to_string();
    }
    let engine: EngineRef = Arc::new(RocksEngine::open(&config.data_dir.join("meta"))?);
    let sm = Arc::new(Mutex::new(StateMachine::open(engine.clone())?));

    // The group: the initial members on a first start; members that joined
    // later are in the metadata.
    let transport = PeerTransport::new(member.clone(), peer_rt.handle());
    let mut voters = Vec::new();
    if config.join.trim().is_empty() {
        for (name, url) in config.initial_members()? {
            let id = member_id(&name, &url.to_string());
            voters.push(id);
            transport.add_peer(id, &url.to_string());
        }
    } else if !raft::has_raft_state(&engine)? {
        // A new member: the cluster adds it, and the leader's snapshot
        // brings the configuration; it starts with none.
        for m in join_cluster(&config.join, &member).await? {
            transport.add_peer(m.member_id, &m.peer_url);
        }
    } else if sm.lock().state().members().is_empty() {
        // Joined, but restarted before the snapshot came: who the others
        // are is still only known to them.
        for m in list_members(&config.join).await {
            transport.add_peer(m.member_id, &m.peer_url);
        }
    }
    for m in sm.lock().state().members().values() {
        transport.add_peer(m.member_id, &m.peer_url);
    }
    let election = config.election_interval.0;
    let settings = RaftSettings {
        tick: config.tick_interval.0,
        election,
        log_keep: config.raft_log_keep_entries,
        propose_timeout: (election * 2).max(Duration::from_secs(3)),
    };
    let (raft, raft_tx, thread) =
        raft::start(member.clone(), &voters, engine, sm.clone(), transport.clone(), settings)?;
    transport.set_raft(raft_tx.clone());
    info!(%peer_addr, peer_url = %member.peer_url, "PD peer listener started");
    let peer_server = peer_rt.handle().spawn(async move {
        let listener = match TcpListener::from_std(peer_listener) {
            Ok(l) => l,
            Err(e) => return warn!(error = %e, "PD peer listener failed"),
        };
        // Ends when the backend shuts down (the task is aborted).
        if let Err(e) = raft::serve_peers(listener, raft_tx, std::future::pending()).await {
            warn!(error = %e, "PD peer listener failed");
        }
    });
    let lone = voters == [member.member_id];
    let handle = BackendHandle::Raft { raft: raft.clone(), thread, peer_rt, peer_server };
    Ok(RaftStarted { member, sm, raft, handle, transport, lone })
}

/// The peer runtime, shut down without waiting when dropped (dropping a
/// runtime the usual way blocks, which async code must not).
struct PeerRuntime(Option<tokio::runtime::Runtime>);

impl PeerRuntime {
    fn handle(&self) -> tokio::runtime::Handle {
        self.0.as_ref().expect("runtime until dropped").handle().clone()
    }
}

impl Drop for PeerRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Asks the PD cluster at `join` (client URLs) to add `me`; returns its
/// members. A cluster that already lists `me` under the same name and peer
/// URL but never heard from it (no client URL published: an earlier start
/// that failed right after the add) is joined as is; one that heard from it
/// is refused — this data dir is empty, and a member that lost its log must
/// not vote again under its old id (remove it first).
async fn join_cluster(join: &str, me: &Member) -> Result<Vec<Member>> {
    let urls: Vec<String> = join
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    let body = serde_json::json!({ "name": me.name, "peer_urls": [me.peer_url] });
    let (name, peer_url) = (me.name.clone(), me.peer_url.clone());
    let answer = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut last = String::new();
            for url in &urls {
                let url = if url.starts_with("http") { url.clone() } else { format!("http://{url}") };
                let members = format!("{url}/pd/api/v1/members");
                match ureq::post(&members).timeout(Duration::from_secs(10)).send_json(body.clone()) {
                    Ok(resp) => return resp.into_json::<serde_json::Value>().map_err(|e| e.to_string()),
                    Err(ureq::Error::Status(code, resp)) => {
                        last = format!("{members}: HTTP {code}: {}", resp.into_string().unwrap_or_default());
                        if last.contains("already exists") {
                            let listed: serde_json::Value = ureq::get(&members)
                                .timeout(Duration::from_secs(10))
                                .call()
                                .map_err(|e| e.to_string())?
                                .into_json()
                                .map_err(|e| e.to_string())?;
                            let never_heard = listed["members"].as_array().is_some_and(|ms| {
                                ms.iter().any(|m| {
                                    m["name"] == name.as_str()
                                        && m["peer_urls"][0] == peer_url.as_str()
                                        && m["client_urls"].as_array().is_none_or(Vec::is_empty)
                                })
                            });
                            if never_heard {
                                return Ok(listed);
                            }
                            return Err(format!(
                                "{last}: a member with this name or peer URL already ran; with an empty data dir \
                                 it must not rejoin under its old identity: `pd-ctl member delete {name}` first"
                            ));
                        }
                    }
                    Err(e) => last = format!("{members}: {e}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("cannot join the PD cluster at {urls:?}: {last}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await
    .map_err(|e| crate::error::Error::Config(e.to_string()))?
    .map_err(crate::error::Error::Config)?;
    let members = members_of(&answer);
    let listed_id = members.iter().find(|m| m.name == me.name).map(|m| m.member_id);
    if listed_id != Some(me.member_id) {
        return Err(crate::error::Error::Config(format!(
            "the PD cluster lists {} with id {listed_id:?}, this member's id is {}: check --peer-urls / \
             --advertise-peer-urls",
            me.name, me.member_id
        )));
    }
    info!(joined = %join, members = members.len(), "joined the PD cluster");
    Ok(members)
}

/// The members a `GET`/`POST /pd/api/v1/members` answer lists.
fn members_of(answer: &serde_json::Value) -> Vec<Member> {
    let listed = answer["members"].as_array().cloned().unwrap_or_default();
    listed
        .iter()
        .filter_map(|m| {
            Some(Member {
                name: m["name"].as_str()?.to_owned(),
                member_id: m["member_id"].as_u64()?,
                peer_url: m["peer_urls"][0].as_str()?.to_owned(),
                client_url: m["client_urls"][0].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// The members the cluster at `join` lists (best effort: none if it does
/// not answer).
async fn list_members(join: &str) -> Vec<Member> {
    let urls: Vec<String> = join.split(',').map(|u| u.trim().trim_end_matches('/').to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        urls.iter()
            .filter(|u| !u.is_empty())
            .find_map(|u| {
                let url = if u.starts_with("http") { u.clone() } else { format!("http://{u}") };
                let answer =
                    ureq::get(&format!("{url}/pd/api/v1/members")).timeout(Duration::from_secs(5)).call();
                answer.ok()?.into_json::<serde_json::Value>().ok().map(|a| members_of(&a))
            })
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default()
}

/// Promotes this member when the PD group makes it leader, and keeps the
/// published member list (names and URLs, as `GetMembers` reports them)
/// in line with the group.
async fn leader_loop(cluster: Arc<Cluster>, transport: Option<PeerTransport>, tick: Duration) {
    let mut last_publish = Instant::now() - Duration::from_secs(60);
    loop {
        tokio::time::sleep((tick / 4).clamp(Duration::from_millis(10), Duration::from_millis(50))).await;
        let status = cluster.leadership().status();
        // Members that joined while this one was away.
        if let Some(transport) = &transport {
            for m in cluster.members().values() {
                transport.add_peer(m.member_id, &m.peer_url);
            }
        }
        let Some(term) = status.serving_term(Instant::now()) else { continue };
        if !cluster.is_promoted(term) {
            let c = cluster.clone();
            match tokio::task::spawn_blocking(move || c.promote(term)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(term, error = %e, "cannot serve as PD leader yet"),
                Err(e) => warn!(error = %e, "PD promotion task failed"),
            }
        }
        if last_publish.elapsed() >= Duration::from_secs(1) {
            last_publish = Instant::now();
            let c = cluster.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || c.publish_members()).await {
                debug!(error = %e, "publishing PD members failed");
            }
        }
    }
}

/// gRPC and HTTP routes together; anything else is 404 (or gRPC
/// `UNIMPLEMENTED` for a gRPC request).
fn router(cluster: Arc<Cluster>, streams: Arc<HeartbeatStreams>) -> axum::Router {
    let pd = PdServer::new(grpc::PdService::new(cluster.clone(), streams.clone()));
    // Every running member is SERVING (service ""), leader or not, as PD's
    // members answer: clients use it to tell live members from dead ones.
    let (_, health) = tonic_health::server::health_reporter();
    let api = http::routes(cluster.clone())
        .merge(admin_api::routes(cluster.clone(), streams))
        .merge(inspect_api::routes(cluster.clone()))
        .layer(axum::middleware::from_fn_with_state(cluster, proxy::to_leader));
    tonic::service::Routes::new(pd).add_service(health).into_axum_router().merge(api).fallback(http::fallback)
}

/// Runs the patrol forever (until shutdown aborts it). The interval is read
/// each round, so a run-time change applies at once.
async fn patrol_loop(cluster: Arc<Cluster>, streams: Arc<HeartbeatStreams>) {
    loop {
        tokio::time::sleep(cluster.patrol_interval()).await;
        if cluster.check_serving().is_err() {
            continue;
        }
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
    stop_backend: Box<dyn FnOnce() + Send>,
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
    stop_backend();
}
