//! Bad input gets a clear error and changes nothing; misaddressed requests
//! get exactly the region error the client needs to recover.

use std::time::Duration;

use mnemo_chaos::cluster::{Cluster, ClusterConfig};
use mnemo_client::pd::PdClient;
use mnemo_client::{Error, RawClient};
use mnemo_proto::kvrpcpb::{Context, RawGetRequest};
use mnemo_proto::pdpb::{pd_client::PdClient as PdGrpc, GetRegionRequest, RequestHeader};
use mnemo_proto::tikvpb::tikv_client::TikvClient;
use mnemo_proto::types::{Peer, Region};

async fn raw_get(
    addr: &str,
    region: &Region,
    peer: Peer,
    key: &[u8],
) -> mnemo_proto::kvrpcpb::RawGetResponse {
    let mut c = TikvClient::connect(format!("http://{addr}")).await.unwrap();
    let ctx = Context {
        region_id: region.id.0,
        region_epoch: Some(region.epoch.into()),
        peer: Some(peer.into()),
        ..Default::default()
    };
    c.raw_get(RawGetRequest { context: Some(ctx), key: key.to_vec(), cf: String::new() })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_changes_nothing() {
    let cluster = Cluster::start(ClusterConfig::default());
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap();

    // Oversized key, oversized value, empty key: InvalidArgument naming the limit.
    let big_key = vec![b'k'; 8 * 1024 + 1];
    let err = client.put(big_key.clone(), b"v".to_vec()).await.unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("8192")), "{err:?}");
    let big_value = vec![0u8; 8 * 1024 * 1024 + 1];
    let err = client.put(b"k".to_vec(), big_value).await.unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("8388608")), "{err:?}");
    let err = client.put(Vec::new(), b"v".to_vec()).await.unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("empty")), "{err:?}");
    // Nothing was written.
    assert!(client.scan(b"".to_vec(), b"".to_vec(), 10).await.unwrap().is_empty());

    // A PD request with the wrong cluster id is refused.
    let mut pd = PdGrpc::connect(format!("http://{}", cluster.pd_endpoint())).await.unwrap();
    let req = GetRegionRequest {
        header: Some(RequestHeader { cluster_id: 42, sender_id: 0 }),
        region_key: b"k".to_vec(),
        need_buckets: false,
    };
    let status = pd.get_region(req).await.unwrap_err();
    assert!(status.message().contains("mismatch cluster id"), "{status:?}");

    // Misaddressed node requests.
    client.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
    let pd = PdClient::connect(vec![cluster.pd_endpoint()]).await.unwrap();
    let (region, leader) = pd.get_region(b"k").await.unwrap();
    let leader = leader.expect("leader known");
    let leader_addr = pd.get_store(leader.store_id).await.unwrap();
    let follower = *region.peers.iter().find(|p| p.id != leader.id).unwrap();
    let follower_addr = pd.get_store(follower.store_id).await.unwrap();

    // To a follower: NotLeader with the leader as hint.
    let resp = raw_get(&follower_addr, &region, follower, b"k").await;
    let not_leader = resp.region_error.and_then(|e| e.not_leader).expect("NotLeader");
    assert_eq!(not_leader.leader.map(|p| p.id), Some(leader.id.0));

    // With a stale epoch: EpochNotMatch carrying the current region.
    let mut stale = region.clone();
    stale.epoch.version -= 1;
    let resp = raw_get(&leader_addr, &stale, leader, b"k").await;
    let enm = resp.region_error.and_then(|e| e.epoch_not_match).expect("EpochNotMatch");
    assert_eq!(enm.current_regions.first().map(|r| r.id), Some(region.id.0));

    // For a region the node does not have: RegionNotFound.
    let mut unknown = region.clone();
    unknown.id.0 += 1_000_000;
    let resp = raw_get(&leader_addr, &unknown, leader, b"k").await;
    assert!(resp.region_error.and_then(|e| e.region_not_found).is_some());

    // The correct request still works.
    let resp = raw_get(&leader_addr, &region, leader, b"k").await;
    assert!(resp.region_error.is_none());
    assert_eq!(resp.value, b"v");
}
