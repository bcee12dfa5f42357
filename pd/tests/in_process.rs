//! A PD served in-process on a loopback port, driven over real gRPC
//! (HTTP/2) and HTTP/1.1 on the same port.

use std::time::Duration;

use mnemo_pd::Config;
use mnemo_proto::eraftpb::ConfChangeType;
use mnemo_proto::metapb;
use mnemo_proto::pdpb::{self, pd_client::PdClient};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Bounds every wait on the server; nothing sleeps for a fixed time.
const DEADLINE: Duration = Duration::from_secs(20);

fn header(cluster_id: u64) -> Option<pdpb::RequestHeader> {
    Some(pdpb::RequestHeader { cluster_id, sender_id: 0 })
}

fn store(id: u64) -> metapb::Store {
    metapb::Store { id, address: format!("127.0.0.1:{}", 20160 + id), ..Default::default() }
}

fn peer(id: u64, store_id: u64) -> metapb::Peer {
    metapb::Peer { id, store_id, ..Default::default() }
}

async fn http_get(url: String) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || match ureq::get(&url).timeout(DEADLINE).call() {
        Ok(resp) => (resp.status(), resp.into_json().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap()),
        Err(e) => panic!("GET {url}: {e}"),
    })
    .await
    .unwrap()
}

async fn alloc_id(pd: &mut PdClient<Channel>, cluster_id: u64) -> u64 {
    pd.alloc_id(pdpb::AllocIdRequest { header: header(cluster_id) }).await.unwrap().into_inner().id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_over_grpc_then_read_regions_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_tests(dir.path());
    let server = mnemo_pd::start(config.clone()).await.unwrap();
    let url = server.client_url().to_owned();
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"), "{url}");
    let mut pd = PdClient::connect(url.clone()).await.unwrap();

    // GetMembers needs no cluster id and tells it, with a dialable URL.
    let members = pd.get_members(pdpb::GetMembersRequest::default()).await.unwrap().into_inner();
    let cluster_id = members.header.unwrap().cluster_id;
    assert_eq!(cluster_id, server.cluster_id());
    assert_eq!(members.leader.unwrap().client_urls, vec![url.clone()]);

    // Any other call with the wrong cluster id is refused as PD does.
    let err =
        pd.is_bootstrapped(pdpb::IsBootstrappedRequest { header: header(cluster_id + 1) }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().starts_with("mismatch cluster id"), "{}", err.message());

    // A node bootstraps the cluster with ids it allocated.
    let store_id = alloc_id(&mut pd, cluster_id).await;
    let region_id = alloc_id(&mut pd, cluster_id).await;
    let peer_id = alloc_id(&mut pd, cluster_id).await;
    let region = metapb::Region {
        id: region_id,
        region_epoch: Some(metapb::RegionEpoch { conf_ver: 1, version: 1 }),
        peers: vec![peer(peer_id, store_id)],
        ..Default::default()
    };
    let boot = pdpb::BootstrapRequest {
        header: header(cluster_id),
        store: Some(store(store_id)),
        region: Some(region.clone()),
    };
    let resp = pd.bootstrap(boot.clone()).await.unwrap().into_inner();
    assert_eq!(resp.header.as_ref().unwrap().error, None);
    // A second bootstrap loses, in the header.
    let resp = pd.bootstrap(boot).await.unwrap().into_inner();
    let err = resp.header.unwrap().error.unwrap();
    assert_eq!(err.r#type, pdpb::ErrorType::AlreadyBootstrapped as i32);

    // The region answers key lookups, with no leader until a heartbeat.
    let got = pd
        .get_region(pdpb::GetRegionRequest {
            header: header(cluster_id),
            region_key: b"k".to_vec(),
            need_buckets: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.region.unwrap().id, region_id);
    assert!(got.leader.is_none());

    // TSO over the bidi stream: count echoed, timestamps strictly increasing.
    let (tso_tx, tso_rx) = mpsc::channel(4);
    let mut tso = pd.tso(ReceiverStream::new(tso_rx)).await.unwrap().into_inner();
    let mut last = 0;
    for count in [1, 10, 3] {
        tso_tx
            .send(pdpb::TsoRequest { header: header(cluster_id), count, dc_location: String::new() })
            .await
            .unwrap();
        let resp = tokio::time::timeout(DEADLINE, tso.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(resp.count, count);
        let ts = resp.timestamp.unwrap();
        let composed = ((ts.physical as u64) << 18) | ts.logical as u64;
        assert!(composed > last);
        last = composed;
    }

    // Two more stores join and heartbeat; the region's leader heartbeats and
    // is told to add a learner on one of them.
    for id in [store_id + 100, store_id + 101] {
        let put = pdpb::PutStoreRequest { header: header(cluster_id), store: Some(store(id)) };
        assert_eq!(pd.put_store(put).await.unwrap().into_inner().header.unwrap().error, None);
    }
    for id in [store_id, store_id + 100, store_id + 101] {
        let stats =
            pdpb::StoreStats { store_id: id, capacity: 1 << 30, available: 1 << 29, ..Default::default() };
        let hb = pdpb::StoreHeartbeatRequest { header: header(cluster_id), stats: Some(stats) };
        assert_eq!(pd.store_heartbeat(hb).await.unwrap().into_inner().header.unwrap().error, None);
    }
    let (hb_tx, hb_rx) = mpsc::channel(4);
    let mut answers = pd.region_heartbeat(ReceiverStream::new(hb_rx)).await.unwrap().into_inner();
    let leader = peer(peer_id, store_id);
    hb_tx
        .send(pdpb::RegionHeartbeatRequest {
            header: header(cluster_id),
            region: Some(region.clone()),
            leader: Some(leader),
            ..Default::default()
        })
        .await
        .unwrap();
    let answer = tokio::time::timeout(DEADLINE, answers.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(answer.region_id, region_id);
    assert_eq!(answer.target_peer, Some(leader));
    let change = answer.change_peer.unwrap();
    assert_eq!(change.change_type, ConfChangeType::AddLearnerNode as i32);
    assert_ne!(change.peer.unwrap().store_id, store_id);

    // The HTTP API on the same port sees the region, its leader and the operator.
    let (status, regions) = http_get(format!("{url}/pd/api/v1/regions")).await;
    assert_eq!(status, 200);
    assert_eq!(regions["count"], 1);
    let r = &regions["regions"][0];
    assert_eq!(r["id"], region_id);
    assert_eq!(r["start_key"], "");
    assert_eq!(r["epoch"]["conf_ver"], 1);
    assert_eq!(r["peers"][0]["role_name"], "Voter");
    assert_eq!(r["leader"]["store_id"], store_id);
    let (_, stores) = http_get(format!("{url}/pd/api/v1/stores")).await;
    assert_eq!(stores["count"], 3);
    assert_eq!(stores["stores"][0]["store"]["state_name"], "Up");
    assert_eq!(stores["stores"][0]["status"]["leader_count"], 1);
    let (_, ops) = http_get(format!("{url}/pd/api/v1/operators")).await;
    assert_eq!(ops[0]["desc"], "add-replica");
    let (_, cluster) = http_get(format!("{url}/pd/api/v1/cluster")).await;
    assert_eq!(cluster["id"], cluster_id);
    let (status, _) = http_get(format!("{url}/pd/api/v1/region/id/999999")).await;
    assert_eq!(status, 404);

    // A restart on the same data dir keeps the cluster: id, bootstrap, region.
    drop((tso_tx, hb_tx, tso, answers, pd));
    server.shutdown().await;
    let server = mnemo_pd::start(config).await.unwrap();
    assert_eq!(server.cluster_id(), cluster_id);
    let mut pd = PdClient::connect(server.client_url().to_owned()).await.unwrap();
    let by_id = pdpb::GetRegionByIdRequest { header: header(cluster_id), region_id, need_buckets: false };
    let got = pd.get_region_by_id(by_id).await.unwrap().into_inner();
    assert_eq!(got.region.unwrap().id, region_id);
    assert!(alloc_id(&mut pd, cluster_id).await > peer_id + 100);
    server.shutdown().await;
}

async fn http_call(
    method: &'static str,
    url: String,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let req = ureq::request(method, &url).timeout(DEADLINE);
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(resp) => (resp.status(), resp.into_json().unwrap()),
            Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap()),
            Err(e) => panic!("{method} {url}: {e}"),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_operators_over_http_reach_the_leader() {
    // Balancing off, so that the only operators are the ones asked for.
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.schedule.leader_schedule_limit = 0;
    config.schedule.region_schedule_limit = 0;
    let server = mnemo_pd::start(config).await.unwrap();
    let url = server.client_url().to_owned();
    let api = |path: &str| format!("{url}/pd/api/v1{path}");
    let mut pd = PdClient::connect(url.clone()).await.unwrap();
    let cluster_id = server.cluster_id();

    // Stores 1-3 hold region 10 (peers 11-13), led from store 1.
    let peers: Vec<metapb::Peer> = (1..=3).map(|s| peer(10 + s, s)).collect();
    let region = metapb::Region {
        id: 10,
        region_epoch: Some(metapb::RegionEpoch { conf_ver: 3, version: 1 }),
        peers: peers.clone(),
        ..Default::default()
    };
    let first = metapb::Region {
        peers: vec![peers[0]],
        region_epoch: Some(metapb::RegionEpoch { conf_ver: 1, version: 1 }),
        ..region.clone()
    };
    let boot =
        pdpb::BootstrapRequest { header: header(cluster_id), store: Some(store(1)), region: Some(first) };
    assert_eq!(pd.bootstrap(boot).await.unwrap().into_inner().header.unwrap().error, None);
    for id in 1..=3 {
        pd.put_store(pdpb::PutStoreRequest { header: header(cluster_id), store: Some(store(id)) })
            .await
            .unwrap();
        let stats = pdpb::StoreStats { store_id: id, ..Default::default() };
        pd.store_heartbeat(pdpb::StoreHeartbeatRequest { header: header(cluster_id), stats: Some(stats) })
            .await
            .unwrap();
    }
    let (hb_tx, hb_rx) = mpsc::channel(4);
    let mut answers = pd.region_heartbeat(ReceiverStream::new(hb_rx)).await.unwrap().into_inner();
    let hb = pdpb::RegionHeartbeatRequest {
        header: header(cluster_id),
        region: Some(region.clone()),
        leader: Some(peers[0]),
        term: 5,
        ..Default::default()
    };
    hb_tx.send(hb).await.unwrap();
    let wait_region = || async {
        for _ in 0..200 {
            let (status, r) = http_get(api("/region/id/10")).await;
            if status == 200 && r["leader"]["store_id"] == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("region 10 never showed its leader");
    };
    wait_region().await;

    // Config: dotted or nested keys, answered with the new config; bad keys refused.
    let (status, c) =
        http_call("POST", api("/config"), Some(json!({"schedule.max-store-down-time": "5s"}))).await;
    assert_eq!((status, c["schedule"]["max-store-down-time"].clone()), (200, json!("5s")));
    let (_, c) = http_call(
        "POST",
        api("/config"),
        Some(json!({"replication": {"location-labels": ["zone", "host"]}})),
    )
    .await;
    assert_eq!(c["replication"]["location-labels"], json!(["zone", "host"]));
    let (_, s) = http_get(api("/config/schedule")).await;
    assert_eq!(s["max-store-down-time"], "5s");
    let (status, err) = http_call("POST", api("/config"), Some(json!({"log.level": "debug"}))).await;
    assert_eq!(status, 400, "{err}");

    // A leader transfer asked over HTTP is listed and pushed to the leader at once.
    let body = json!({"name": "transfer-leader", "region_id": 10, "to_store_id": 2});
    let (status, op) = http_call("POST", api("/operators"), Some(body)).await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(
        (op["kind"].clone(), op["desc"].clone(), op["current_step"].clone()),
        (json!("admin"), json!("transfer-leader"), json!(0))
    );
    let answer = tokio::time::timeout(DEADLINE, answers.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(answer.transfer_leader.unwrap().peer.unwrap().store_id, 2);
    assert_eq!(answer.region_epoch.unwrap().conf_ver, 3);
    let (_, ops) = http_get(api("/operators")).await;
    assert_eq!(ops[0]["region_id"], 10);
    assert!(ops[0]["age"].is_string());
    let (status, _) = http_call("DELETE", api("/operators/10"), None).await;
    assert_eq!(status, 200);
    let (status, _) = http_get(api("/operators/10")).await;
    assert_eq!(status, 404);

    // A split at key "k" (hex 6B) goes to the leader as USEKEY.
    let (status, split) = http_call("POST", api("/regions/split"), Some(json!({"split_keys": ["6B"]}))).await;
    assert_eq!((status, split["split_regions"].clone()), (200, json!([10])));
    let answer = tokio::time::timeout(DEADLINE, answers.message()).await.unwrap().unwrap().unwrap();
    let split = answer.split_region.unwrap();
    assert_eq!((split.policy, split.keys), (pdpb::CheckPolicy::Usekey as i32, vec![b"k".to_vec()]));

    // Nonsense operators are refused with the reason.
    let body = json!({"name": "add-peer", "region_id": 10, "store_id": 2});
    let (status, err) = http_call("POST", api("/operators"), Some(body)).await;
    assert_eq!(status, 400);
    assert!(err.as_str().unwrap().contains("already has a peer"), "{err}");
    let (status, _) =
        http_call("POST", api("/operators"), Some(json!({"name": "merge-region", "region_id": 10}))).await;
    assert_eq!(status, 400);

    // Store limits (PD's `store limit`): 15 per minute each way by default,
    // set per store and for all, persisted as config.
    let (status, limits) = http_call("GET", api("/stores/limit"), None).await;
    assert_eq!(status, 200);
    assert_eq!(limits["2"], json!({"add-peer": 15.0, "remove-peer": 15.0}), "{limits}");
    let (status, _) = http_call("POST", api("/store/2/limit"), Some(json!({"rate": 30}))).await;
    assert_eq!(status, 200);
    let body = json!({"rate": 5, "type": "add-peer"});
    assert_eq!(http_call("POST", api("/stores/limit"), Some(body)).await.0, 200);
    let (_, limits) = http_call("GET", api("/stores/limit"), None).await;
    assert_eq!(limits["2"], json!({"add-peer": 5.0, "remove-peer": 30.0}), "{limits}");
    assert_eq!(limits["3"], json!({"add-peer": 5.0, "remove-peer": 15.0}), "{limits}");
    let (_, config) = http_call("GET", api("/config"), None).await;
    assert_eq!(config["schedule"]["store-limit-add-peer"], json!(5.0), "{config}");
    assert_eq!(http_call("POST", api("/store/99/limit"), Some(json!({"rate": 1}))).await.0, 404);
    let bad_type = json!({"rate": 1, "type": "add-learner"});
    assert_eq!(http_call("POST", api("/store/2/limit"), Some(bad_type)).await.0, 400);
    assert_eq!(http_call("POST", api("/store/2/limit"), Some(json!({"rate": -1}))).await.0, 400);

    drop((hb_tx, answers, pd));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedulers_are_listed_added_and_removed_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = mnemo_pd::start(Config::for_tests(dir.path())).await.unwrap();
    let url = server.client_url().to_owned();
    let api = |path: &str| format!("{url}/pd/api/v1{path}");
    let defaults = json!(["balance-leader-scheduler", "balance-region-scheduler"]);

    // The balancers run by default.
    assert_eq!(http_get(api("/schedulers")).await, (200, defaults.clone()));

    // Adding shuffle-leader answers as PD does; it is listed from then on.
    let add = |name: &str| Some(json!({ "name": name }));
    let (status, answer) = http_call("POST", api("/schedulers"), add("shuffle-leader-scheduler")).await;
    assert_eq!((status, answer), (200, json!("The scheduler is created.")));
    let (_, active) = http_get(api("/schedulers")).await;
    assert_eq!(
        active,
        json!(["balance-leader-scheduler", "balance-region-scheduler", "shuffle-leader-scheduler"])
    );

    // A second add conflicts; an unknown or missing name is a bad request.
    let (status, err) = http_call("POST", api("/schedulers"), add("shuffle-leader-scheduler")).await;
    assert_eq!(status, 409, "{err}");
    let (status, err) = http_call("POST", api("/schedulers"), add("shuffle-everything-scheduler")).await;
    assert_eq!(status, 400);
    assert!(err.as_str().unwrap().contains("unknown scheduler"), "{err}");
    let (status, err) = http_call("POST", api("/schedulers"), Some(json!({}))).await;
    assert_eq!((status, err), (400, json!("missing scheduler name")));

    // Removing it: once, then 404.
    let (status, answer) = http_call("DELETE", api("/schedulers/shuffle-leader-scheduler"), None).await;
    assert_eq!((status, answer), (200, json!("The scheduler is removed.")));
    let (status, _) = http_call("DELETE", api("/schedulers/shuffle-leader-scheduler"), None).await;
    assert_eq!(status, 404);
    assert_eq!(http_get(api("/schedulers")).await, (200, defaults));
    server.shutdown().await;
}
