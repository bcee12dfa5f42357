//! Every RawKV operation through the real client against a real 3-node
//! cluster (separate processes on loopback).

use std::time::Duration;

use mnemo_chaos::cluster::{Cluster, ClusterConfig};
use mnemo_client::RawClient;

fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_raw_operation_works_on_a_replicated_region() {
    // A cluster of three nodes whose first region reaches three replicas.
    let cluster = Cluster::start(ClusterConfig::default());
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap();

    // Point writes and reads.
    client.put(b"hello".to_vec(), b"world".to_vec()).await.unwrap();
    assert_eq!(client.get(b"hello".to_vec()).await.unwrap(), Some(b"world".to_vec()));
    assert_eq!(client.get(b"absent".to_vec()).await.unwrap(), None);
    client.delete(b"hello".to_vec()).await.unwrap();
    assert_eq!(client.get(b"hello".to_vec()).await.unwrap(), None);

    // Batches come back in request order, found keys only.
    client
        .batch_put(vec![kv("a", "1"), kv("b", "2"), kv("c", "3"), kv("d", "4"), kv("e", "5")])
        .await
        .unwrap();
    let got = client.batch_get(vec![b"c".to_vec(), b"zz".to_vec(), b"a".to_vec()]).await.unwrap();
    assert_eq!(got, vec![kv("c", "3"), kv("a", "1")]);

    // Scans forward and reverse, bounded and limited.
    let fwd = client.scan(b"b".to_vec(), b"e".to_vec(), 10).await.unwrap();
    assert_eq!(fwd, vec![kv("b", "2"), kv("c", "3"), kv("d", "4")]);
    let limited = client.scan(b"".to_vec(), b"".to_vec(), 2).await.unwrap();
    assert_eq!(limited, vec![kv("a", "1"), kv("b", "2")]);
    let rev = client.scan_reverse(b"b".to_vec(), b"e".to_vec(), 10).await.unwrap();
    assert_eq!(rev, vec![kv("d", "4"), kv("c", "3"), kv("b", "2")]);
    let batch = client
        .batch_scan(vec![(b"a".to_vec(), b"b".to_vec()), (b"d".to_vec(), b"".to_vec())], 1)
        .await
        .unwrap();
    assert_eq!(batch, vec![kv("a", "1"), kv("d", "4")]);

    // Deletes: batch and range.
    client.batch_delete(vec![b"a".to_vec(), b"b".to_vec()]).await.unwrap();
    client.delete_range(b"d".to_vec(), b"".to_vec()).await.unwrap();
    let rest = client.scan(b"".to_vec(), b"".to_vec(), 10).await.unwrap();
    assert_eq!(rest, vec![kv("c", "3")]);

    // Compare-and-swap: absent → v1, then v1 → v2; a wrong expectation fails
    // and reports the current value.
    let (prev, ok) = client.compare_and_swap(b"cas".to_vec(), None, b"v1".to_vec()).await.unwrap();
    assert!(ok && prev.is_none());
    let (prev, ok) =
        client.compare_and_swap(b"cas".to_vec(), Some(b"nope".to_vec()), b"v2".to_vec()).await.unwrap();
    assert!(!ok);
    assert_eq!(prev, Some(b"v1".to_vec()));
    let (_, ok) =
        client.compare_and_swap(b"cas".to_vec(), Some(b"v1".to_vec()), b"v2".to_vec()).await.unwrap();
    assert!(ok);
    assert_eq!(client.get(b"cas".to_vec()).await.unwrap(), Some(b"v2".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_keys_report_remaining_time_and_expire() {
    let cluster = Cluster::start(ClusterConfig { nodes: 1, ..Default::default() });
    cluster.wait_replicated(1, Duration::from_secs(30));
    let client = RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap();

    client.put_with_ttl(b"short".to_vec(), b"v".to_vec(), 1).await.unwrap();
    client.put(b"forever".to_vec(), b"v".to_vec()).await.unwrap();
    let ttl = client.get_key_ttl(b"short".to_vec()).await.unwrap();
    assert!(matches!(ttl, Some(1)), "remaining ttl {ttl:?}");
    assert_eq!(client.get_key_ttl(b"forever".to_vec()).await.unwrap(), Some(0));
    assert_eq!(client.get_key_ttl(b"never-written".to_vec()).await.unwrap(), None);

    // Poll until the key expires; it must vanish from get, scan and ttl.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.get(b"short".to_vec()).await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "key with 1 s TTL still visible after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.get_key_ttl(b"short".to_vec()).await.unwrap(), None);
    let all = client.scan(b"".to_vec(), b"".to_vec(), 10).await.unwrap();
    assert_eq!(all, vec![kv("forever", "v")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_races_have_exactly_one_winner_per_round() {
    let cluster = Cluster::start(ClusterConfig::default());
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = std::sync::Arc::new(RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap());
    client.put(b"race".to_vec(), b"0".to_vec()).await.unwrap();

    // Each round, 8 tasks try to move the register from round to round+1.
    for round in 0..20u32 {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                let expect = round.to_string().into_bytes();
                let new = (round + 1).to_string().into_bytes();
                c.compare_and_swap(b"race".to_vec(), Some(expect), new).await.unwrap().1
            }));
        }
        let mut winners = 0;
        for t in tasks {
            winners += t.await.unwrap() as u32;
        }
        assert_eq!(winners, 1, "round {round}: {winners} winners");
    }
    assert_eq!(client.get(b"race".to_vec()).await.unwrap(), Some(b"20".to_vec()));
}
