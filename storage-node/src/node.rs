//! Wiring a node together: engines, identity, bootstrap, store loop,
//! transport, PD worker, gRPC and status servers.
//!
//! Start-up order matters:
//! 1. open both engines and read the store ident (cluster id, store id);
//! 2. reach PD; a data dir from another cluster is refused;
//! 3. bootstrap the cluster if PD says nobody has (the first region, covering
//!    every key, with this store's peer as its only voter); several nodes may
//!    race here and exactly one wins — the losers erase what they prepared;
//! 4. register the store (`PutStore`), load every region peer, start serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mnemo_client::pd::PdClient;
use mnemo_proto::metapb;
use mnemo_proto::raft_serverpb::raft_transport_server::RaftTransportServer;
use mnemo_proto::raft_serverpb::StoreIdent;
use mnemo_proto::tikvpb::tikv_server::TikvServer;
use mnemo_proto::types::{Peer, PeerId, PeerRole, Region, RegionEpoch, RegionId, StoreId};
use prost::Message as _;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::config::NodeConfig;
use crate::engine::{Cf, EngineRef, Engines, RaftLogEngine, RocksEngine, WriteBatch};
use crate::keys;
use crate::metrics::Metrics;
use crate::pd_worker::PdWorker;
use crate::raftstore::split_check::SplitLimits;
use crate::raftstore::{LeaseClock, PeerConfig, PlantedBugs, Store, StoreConfig, StoreMsg};
use crate::service::KvService;
use crate::status::{self, StatusState};
use crate::transport::{GrpcTransport, RaftService, TransportConfig, TransportDelays, MAX_GRPC_MESSAGE};

/// Key of the region a node prepared to bootstrap the cluster with.
const PREPARE_BOOTSTRAP_KEY: &[u8] = b"\x01\x05";

/// A running node.
pub struct NodeHandle {
    /// This node's store id.
    pub store_id: StoreId,
    /// The gRPC address actually bound.
    pub addr: SocketAddr,
    /// The status server address actually bound.
    pub status_addr: SocketAddr,
    store_tx: crate::raftstore::StoreRouter,
    shutdown: tokio::sync::watch::Sender<bool>,
    store_thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeHandle {
    /// Stops serving and waits for the store loop to finish its round.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let _ = self.shutdown.send(true);
        let _ = self.store_tx.send(StoreMsg::Shutdown);
        if let Some(t) = self.store_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn open_engines(cfg: &NodeConfig) -> Result<(EngineRef, EngineRef), String> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", cfg.data_dir.display()))?;
    let (rocks_dir, log_dir) = (cfg.data_dir.join("raft"), cfg.data_dir.join("raft-engine"));
    // Unset: the store the data dir holds, raft-engine for a new one.
    let existing = match (log_dir.exists(), rocks_dir.exists()) {
        (false, true) => Some(false),
        (true, false) => Some(true),
        _ => None,
    };
    let raft_engine = match (cfg.raft_engine.enable, existing) {
        (Some(wanted), Some(held)) if wanted != held => {
            let held_dir = if held { &log_dir } else { &rocks_dir };
            return Err(format!(
                "{} holds this node's raft logs but raft-engine.enable = {wanted}: \
                 start it with the store it was created with (or leave raft-engine.enable unset)",
                held_dir.display()
            ));
        }
        (Some(wanted), _) => wanted,
        (None, held) => held.unwrap_or(true),
    };
    let kv = RocksEngine::open(&cfg.data_dir.join("db")).map_err(|e| e.to_string())?;
    let raft: EngineRef = if raft_engine {
        Arc::new(RaftLogEngine::open(&log_dir, keys::RaftLogKeys).map_err(|e| e.to_string())?)
    } else {
        Arc::new(RocksEngine::open(&rocks_dir).map_err(|e| e.to_string())?)
    };
    Ok((Arc::new(kv), raft))
}

async fn connect_pd(endpoints: &[String]) -> Result<PdClient, String> {
    // PD may start after us (make run starts everything at once): keep trying for a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match PdClient::connect(endpoints.to_vec()).await {
            Ok(pd) => return Ok(pd),
            Err(e) if Instant::now() < deadline => {
                tracing::info!("waiting for PD at {endpoints:?}: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(format!("cannot reach PD at {endpoints:?}: {e}")),
        }
    }
}

async fn store_identity(kv: &EngineRef, pd: &PdClient) -> Result<StoreId, String> {
    let e = |e: crate::engine::EngineError| e.to_string();
    if let Some(raw) = kv.get(Cf::Meta, keys::STORE_IDENT_KEY).map_err(e)? {
        let ident = StoreIdent::decode(raw.as_slice()).map_err(|e| format!("corrupt store ident: {e}"))?;
        if ident.cluster_id != pd.cluster_id() {
            return Err(format!(
                "data dir belongs to cluster {} but PD serves cluster {}: wrong --pd or --data-dir",
                ident.cluster_id,
                pd.cluster_id()
            ));
        }
        return Ok(StoreId(ident.store_id));
    }
    let id = pd.alloc_id().await.map_err(|e| e.to_string())?;
    let ident = StoreIdent { cluster_id: pd.cluster_id(), store_id: id };
    let mut wb = WriteBatch::new();
    wb.put(Cf::Meta, keys::STORE_IDENT_KEY, ident.encode_to_vec());
    kv.write(&wb, true).map_err(e)?;
    tracing::info!(store = id, "new store identity");
    Ok(StoreId(id))
}

fn clear_prepared(kv: &EngineRef, raft: &EngineRef, region: RegionId) -> Result<(), String> {
    let mut kv_wb = WriteBatch::new();
    kv_wb.delete(Cf::Meta, keys::region_state_key(region));
    kv_wb.delete(Cf::Meta, keys::apply_state_key(region));
    kv_wb.delete(Cf::Meta, PREPARE_BOOTSTRAP_KEY);
    let mut raft_wb = WriteBatch::new();
    raft_wb.delete(Cf::Default, keys::raft_state_key(region));
    raft.write(&raft_wb, true).map_err(|e| e.to_string())?;
    kv.write(&kv_wb, true).map_err(|e| e.to_string())
}

async fn bootstrap_cluster(
    kv: &EngineRef,
    raft: &EngineRef,
    pd: &PdClient,
    store: &metapb::Store,
) -> Result<(), String> {
    let prepared = kv
        .get(Cf::Meta, PREPARE_BOOTSTRAP_KEY)
        .map_err(|e| e.to_string())?
        .map(|b| RegionId(u64::from_be_bytes(b.as_slice().try_into().unwrap_or_default())));
    if pd.is_bootstrapped().await.map_err(|e| e.to_string())? {
        if let Some(region) = prepared {
            // We prepared but lost the race (or crashed before hearing back).
            if pd.get_region_by_id(region).await.is_ok() {
                kv.write(
                    &{
                        let mut wb = WriteBatch::new();
                        wb.delete(Cf::Meta, PREPARE_BOOTSTRAP_KEY);
                        wb
                    },
                    true,
                )
                .map_err(|e| e.to_string())?;
            } else {
                clear_prepared(kv, raft, region)?;
            }
        }
        return Ok(());
    }
    let region = match prepared {
        Some(id) => {
            let raw =
                kv.get(Cf::Meta, &keys::region_state_key(id)).map_err(|e| e.to_string())?.unwrap_or_default();
            let state = mnemo_proto::raft_serverpb::RegionLocalState::decode(raw.as_slice())
                .map_err(|e| format!("corrupt prepared region: {e}"))?;
            Region::from(&state.region.unwrap_or_default())
        }
        None => {
            let region_id = RegionId(pd.alloc_id().await.map_err(|e| e.to_string())?);
            let peer_id = PeerId(pd.alloc_id().await.map_err(|e| e.to_string())?);
            let region = Region {
                id: region_id,
                start_key: vec![],
                end_key: vec![],
                epoch: RegionEpoch { conf_ver: 1, version: 1 },
                peers: vec![Peer { id: peer_id, store_id: StoreId(store.id), role: PeerRole::Voter }],
            };
            let (mut kv_wb, mut raft_wb) = (WriteBatch::new(), WriteBatch::new());
            crate::raftstore::storage::write_initial_state(&region, &mut kv_wb, &mut raft_wb);
            kv_wb.put(Cf::Meta, PREPARE_BOOTSTRAP_KEY, region_id.0.to_be_bytes().to_vec());
            raft.write(&raft_wb, true).map_err(|e| e.to_string())?;
            kv.write(&kv_wb, true).map_err(|e| e.to_string())?;
            region
        }
    };
    if pd.bootstrap(store.clone(), (&region).into()).await.map_err(|e| e.to_string())? {
        tracing::info!(region = %region.id, "bootstrapped the cluster with the first region");
        let mut wb = WriteBatch::new();
        wb.delete(Cf::Meta, PREPARE_BOOTSTRAP_KEY);
        kv.write(&wb, true).map_err(|e| e.to_string())?;
    } else {
        tracing::info!("another node bootstrapped the cluster first; joining");
        clear_prepared(kv, raft, region.id)?;
    }
    Ok(())
}

/// Says loudly, at start-up, which test-only controls are on: a node running
/// with one of them may break linearizability on request.
fn warn_about_test_controls(cfg: &NodeConfig) {
    let t = &cfg.test_controls;
    if t.enable_test_controls {
        tracing::warn!(
            "!!! TEST-ONLY CONTROLS ENABLED (--enable-test-controls): POST /debug/lease-clock on the \
             status server can skew this node's leader-lease clock and so break linearizable reads. \
             NEVER RUN THIS IN PRODUCTION !!!"
        );
    }
    for p in &t.plant {
        tracing::warn!(
            "!!! PLANTED BUG {p:?} (--plant): this node breaks its guarantees on purpose, for the chaos \
             harness to catch. NEVER RUN THIS IN PRODUCTION !!!"
        );
    }
    if t.unsafe_stale_reads {
        tracing::warn!(
            "!!! UNSAFE STALE READS ENABLED (--unsafe-stale-reads): any replica answers gets that ask \
             for replica_read, with no leadership check; reads may be stale. \
             NEVER RUN THIS IN PRODUCTION !!!"
        );
    }
}

/// Starts a node and returns once it serves. The gRPC listener is bound
/// first, so `--addr 127.0.0.1:0` works (the bound port is advertised).
pub async fn start(mut cfg: NodeConfig) -> Result<NodeHandle, String> {
    cfg.validate()?;
    warn_about_test_controls(&cfg);
    let listener =
        TcpListener::bind(&cfg.addr).await.map_err(|e| format!("cannot bind {}: {e}", cfg.addr))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if cfg.advertise_addr.is_empty() {
        cfg.advertise_addr = addr.to_string();
    }
    let status_listener = TcpListener::bind(&cfg.status_addr)
        .await
        .map_err(|e| format!("cannot bind {}: {e}", cfg.status_addr))?;
    let status_addr = status_listener.local_addr().map_err(|e| e.to_string())?;

    let (kv, raft) = open_engines(&cfg)?;
    let pd = Arc::new(connect_pd(&cfg.pd_endpoints).await?);
    let store_id = store_identity(&kv, &pd).await?;
    let start_ts = keys::now_unix_ms() / 1000;
    let store_meta = metapb::Store {
        id: store_id.0,
        address: cfg.advertised().to_string(),
        state: metapb::StoreState::Up as i32,
        labels: cfg
            .labels
            .iter()
            .map(|(k, v)| metapb::StoreLabel { key: k.clone(), value: v.clone() })
            .collect(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        peer_address: cfg.advertised().to_string(),
        status_address: match cfg.advertise_status_addr.as_str() {
            "" => status_addr.to_string(),
            advertised => advertised.to_string(),
        },
        start_timestamp: start_ts as i64,
        deploy_path: cfg.data_dir.display().to_string(),
        node_state: metapb::NodeState::Serving as i32,
        ..Default::default()
    };
    bootstrap_cluster(&kv, &raft, &pd, &store_meta).await?;
    pd.put_store(store_meta).await.map_err(|e| format!("PutStore failed: {e}"))?;

    let lease_clock =
        if cfg.test_controls.enable_test_controls { LeaseClock::adjustable() } else { LeaseClock::real() };
    let metrics = Arc::new(Metrics::default());
    let r = &cfg.raftstore;
    let (store_tx, store_rx) = crate::raftstore::router::channel(r.notify_capacity);
    let (pd_tx, pd_rx) = tokio::sync::mpsc::unbounded_channel();
    let runtime = tokio::runtime::Handle::current();
    let transport_delays = Arc::new(TransportDelays::default());
    let transport_cfg = TransportConfig {
        keepalive_time: cfg.server.grpc_keepalive_time.0,
        keepalive_timeout: cfg.server.grpc_keepalive_timeout.0,
        queue_size: cfg.server.raft_client_queue_size,
        delays: transport_delays.clone(),
    };
    let transport =
        Arc::new(GrpcTransport::new(pd.clone(), store_tx.clone(), metrics.clone(), transport_cfg, runtime));
    let store_cfg = StoreConfig {
        peer: PeerConfig {
            election_tick: r.raft_election_timeout_ticks,
            heartbeat_tick: r.raft_heartbeat_ticks,
            lease: r.leader_lease(),
            raft_entry_max_size: r.raft_entry_max_size.0,
            max_uncommitted_size: r.raft_max_uncommitted_size.0,
            hibernate: r.hibernate_regions,
            plants: PlantedBugs::from_controls(&cfg.test_controls),
        },
        tick_interval: r.raft_base_tick_interval.0,
        pd_heartbeat_interval: r.pd_heartbeat_tick_interval.0,
        max_peer_down_duration: r.max_peer_down_duration.0,
        split: SplitLimits {
            split_size: cfg.coprocessor.region_split_size.0,
            split_keys: cfg.coprocessor.region_split_keys,
            max_size: cfg.coprocessor.max_size(),
            max_keys: cfg.coprocessor.max_keys(),
        },
        split_check_interval: cfg.coprocessor.split_region_check_tick_interval.0,
        raft_log_gc_interval: r.raft_log_gc_tick_interval.0,
        raft_log_gc_threshold: r.raft_log_gc_threshold,
        raft_log_gc_count_limit: r.raft_log_gc_count_limit,
        lease_clock: lease_clock.clone(),
        messages_per_tick: r.messages_per_tick,
        apply_pool_size: r.apply_pool_size,
    };
    let store = Store::load(
        store_id,
        store_cfg,
        Engines { kv: kv.clone(), raft: raft.clone() },
        (store_tx.clone(), store_rx),
        transport,
        pd_tx,
        metrics.clone(),
    )
    .map_err(|e| format!("cannot load regions: {e}"))?;
    let local_reader = store.local_reader();
    let store_thread = std::thread::Builder::new()
        .name("raftstore".into())
        .spawn(move || store.run())
        .map_err(|e| e.to_string())?;

    let flow = Arc::new(crate::flow::FlowStats::default());
    let worker = PdWorker {
        pd: pd.clone(),
        flow: flow.clone(),
        store_id,
        store_tx: store_tx.clone(),
        kv: kv.clone(),
        raft,
        data_dir: cfg.data_dir.clone(),
        capacity: r.capacity.0,
        metrics: metrics.clone(),
        store_heartbeat_interval: r.pd_store_heartbeat_tick_interval.0,
        start_time: start_ts as u32,
    };
    tokio::spawn(worker.run(pd_rx));

    let (shutdown, mut shutdown_rx) = tokio::sync::watch::channel(false);
    metrics.watch_engine(kv.clone());
    let kv_service = KvService::new(store_id, store_tx.clone(), kv, cfg.server.clone(), metrics.clone())
        .with_unsafe_stale_reads(cfg.test_controls.unsafe_stale_reads)
        .with_local_reader(local_reader)
        .with_flow(flow)
        .with_pending_write_threshold(cfg.storage.scheduler_pending_write_threshold.0);
    let raft_service = RaftService::new(store_tx.clone(), metrics.clone());
    let mut grpc_shutdown = shutdown_rx.clone();
    // Without TCP_NODELAY small responses wait for delayed ACKs (~40 ms tails).
    let incoming = TcpIncoming::from_listener(listener, true, None).map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let res = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
                TikvServer::new(kv_service)
                    .max_decoding_message_size(MAX_GRPC_MESSAGE)
                    .max_encoding_message_size(MAX_GRPC_MESSAGE),
            )
            .add_service(
                RaftTransportServer::new(raft_service)
                    .max_decoding_message_size(MAX_GRPC_MESSAGE)
                    .max_encoding_message_size(MAX_GRPC_MESSAGE),
            )
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!("gRPC server failed: {e}");
        }
    });
    let status_state = Arc::new(StatusState {
        store_id,
        config: cfg.clone(),
        metrics,
        started: Instant::now(),
        lease_clock,
        transport_delays,
        router: store_tx.clone(),
    });
    tokio::spawn(async move {
        let _ = axum::serve(status_listener, status::router(status_state))
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.wait_for(|s| *s).await;
            })
            .await;
    });
    tracing::info!(store = %store_id, %addr, %status_addr, "node serving");
    Ok(NodeHandle { store_id, addr, status_addr, store_tx, shutdown, store_thread: Some(store_thread) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_keeps_the_raft_log_store_it_was_created_with() {
        for created_with_raft_engine in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = NodeConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
            let (held, other) =
                if created_with_raft_engine { ("raft-engine", "raft") } else { ("raft", "raft-engine") };
            cfg.raft_engine.enable = Some(created_with_raft_engine);
            drop(open_engines(&cfg).unwrap());
            assert!(dir.path().join(held).exists());
            drop(open_engines(&cfg).expect("reopened with the same store"));
            // Unset: whatever the data dir holds.
            cfg.raft_engine.enable = None;
            drop(open_engines(&cfg).expect("unset takes the store the data dir holds"));
            cfg.raft_engine.enable = Some(!created_with_raft_engine);
            let err = open_engines(&cfg).err().expect("the other store is refused");
            assert!(err.contains("raft-engine.enable"), "{err}");
            assert!(!dir.path().join(other).exists(), "nothing created for the other store");
        }
        // A new data dir, unset: raft-engine.
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        drop(open_engines(&cfg).unwrap());
        assert!(dir.path().join("raft-engine").exists() && !dir.path().join("raft").exists());
    }
}
