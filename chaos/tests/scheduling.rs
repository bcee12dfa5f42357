//! PD spreads, heals and drains regions across real nodes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use mnemo_chaos::cluster::{wait_for, Cluster, ClusterConfig};
use mnemo_client::RawClient;
use serde_json::{json, Value};

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

/// Loads batches of keys until PD knows `regions` regions; returns the key count.
async fn load_until_regions(cluster: &Cluster, client: &RawClient, regions: usize) -> u32 {
    let mut loaded = 0u32;
    let deadline = Instant::now() + Duration::from_secs(120);
    while cluster.regions().len() < regions {
        assert!(Instant::now() < deadline, "only {} regions after {loaded} keys", cluster.regions().len());
        let batch: Vec<_> = (loaded..loaded + 200).map(|i| (key(i), key(i))).collect();
        client.batch_put(batch).await.unwrap();
        loaded += 200;
    }
    loaded
}

async fn assert_all_keys(client: &RawClient, loaded: u32) {
    let keys: Vec<_> = (0..loaded).map(key).collect();
    for chunk in keys.chunks(1000) {
        let got = client.batch_get(chunk.to_vec()).await.unwrap();
        if got.len() != chunk.len() {
            let found: HashSet<&Vec<u8>> = got.iter().map(|(k, _)| k).collect();
            let missing: Vec<String> = chunk
                .iter()
                .filter(|k| !found.contains(k))
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            panic!("{} keys lost, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
        }
    }
}

fn peers_of(region: &Value) -> Vec<(u64, String)> {
    region["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["store_id"].as_u64().unwrap_or(0),
                        p["role_name"].as_str().unwrap_or("Voter").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True if every region has exactly `n` voters, on distinct stores outside `excluded`, and a leader.
fn all_healthy(regions: &[Value], n: usize, excluded: &HashSet<u64>) -> bool {
    !regions.is_empty()
        && regions.iter().all(|r| {
            let peers = peers_of(r);
            let stores: HashSet<u64> = peers.iter().map(|(s, _)| *s).collect();
            peers.len() == n
                && stores.len() == n
                && peers.iter().all(|(s, role)| role == "Voter" && !excluded.contains(s))
                && r["leader"]["store_id"].as_u64().is_some_and(|s| !excluded.contains(&s))
        })
}

fn within(counts: &[f64], tolerance: f64) -> bool {
    let mean = counts.iter().sum::<f64>() / counts.len() as f64;
    counts.iter().all(|c| (c - mean).abs() <= tolerance * mean)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_share_regions_and_leaders_evenly() {
    let cluster = Cluster::start(ClusterConfig::small_regions(5));
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap();
    let loaded = load_until_regions(&cluster, &client, 64).await;

    // Once the load ends, each store's region and leader counts settle within ±20% of the mean.
    let started = Instant::now();
    let stores = wait_for("balanced regions and leaders", Duration::from_secs(180), || {
        let stores = cluster.stores();
        let regions: Vec<f64> =
            stores.iter().map(|s| s["status"]["region_count"].as_f64().unwrap_or(0.0)).collect();
        let leaders: Vec<f64> =
            stores.iter().map(|s| s["status"]["leader_count"].as_f64().unwrap_or(0.0)).collect();
        (stores.len() == 5 && within(&regions, 0.2) && within(&leaders, 0.2)).then_some(stores)
    });
    let summary: Vec<_> = stores
        .iter()
        .map(|s| {
            (
                s["store"]["id"].clone(),
                s["status"]["region_count"].clone(),
                s["status"]["leader_count"].clone(),
            )
        })
        .collect();
    eprintln!("balanced {:?} after load ended: (store, regions, leaders) {summary:?}", started.elapsed());
    cluster.wait_replicated(3, Duration::from_secs(60));
    assert_all_keys(&client, loaded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_node_is_replaced_and_nothing_is_lost() {
    let mut cluster = Cluster::start(ClusterConfig {
        pd_toml: "[schedule]\nmax-store-down-time = \"3s\"\n".into(),
        ..ClusterConfig::small_regions(4)
    });
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap();
    let loaded = load_until_regions(&cluster, &client, 16).await;
    cluster.wait_replicated(3, Duration::from_secs(60));

    // Kill one node for good.
    let victim = 1;
    let victim_store = cluster.store_id_of(victim).expect("victim store id");
    let killed = Instant::now();
    cluster.kill_node(victim);

    // Every region returns to 3 healthy replicas on the remaining nodes.
    let excluded: HashSet<u64> = [victim_store].into();
    wait_for("every region healed off the dead store", Duration::from_secs(120), || {
        all_healthy(&cluster.regions(), 3, &excluded).then_some(())
    });
    eprintln!("healed {} regions {:?} after kill -9", cluster.regions().len(), killed.elapsed());
    Cluster::check_tiling(&cluster.regions()).unwrap();
    assert_all_keys(&client, loaded).await;
}

/// A node cut off from its peers but not from PD stays Up, yet its
/// regions' leaders report its peers down (`down_peers`), and PD replaces
/// them on the other nodes; after the heal, its stale peers learn they were
/// removed and are destroyed. Needs network namespaces (root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cut_off_from_its_peers_is_reported_down_and_replaced() {
    if !mnemo_chaos::net::available() {
        eprintln!("skipped: needs root, ip and iptables for network namespaces");
        return;
    }
    let mut cfg = ClusterConfig::small_regions(4);
    cfg.netns = true;
    // Leaders report peers silent for 2 s down; PD replaces a peer once it
    // was silent for 8 s (the store heartbeats every second, so it stays Up
    // through a slow moment of the machine).
    cfg.node_toml =
        cfg.node_toml.replacen("[raftstore]\n", "[raftstore]\nmax-peer-down-duration = \"2s\"\n", 1);
    cfg.pd_toml = "[schedule]\nmax-store-down-time = \"8s\"\n".into();
    let cluster = Cluster::start(cfg);
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = RawClient::new(cluster.pd_endpoints()).await.unwrap();
    let loaded = load_until_regions(&cluster, &client, 8).await;
    cluster.wait_replicated(3, Duration::from_secs(60));

    // The victim's store looks like the emptiest target to the balancer,
    // which would keep adding learners there that can never catch up.
    cluster.pd_delete("/pd/api/v1/schedulers/balance-region-scheduler").unwrap();
    // The victim: the node holding the most peers (the balancer spreads the
    // regions over the fourth node only gradually).
    let mut held: HashMap<u64, usize> = HashMap::new();
    for r in cluster.regions() {
        for (store, _) in peers_of(&r) {
            *held.entry(store).or_default() += 1;
        }
    }
    let (victim_store, victim_peers) = held.into_iter().max_by_key(|(_, n)| *n).expect("regions have peers");
    let victim = (0..cluster.node_count()).find(|&i| cluster.store_id_of(i) == Some(victim_store)).unwrap();
    eprintln!("cutting off node {} (store {victim_store}, {victim_peers} peers)", victim + 1);
    let others: Vec<usize> = (0..cluster.node_count()).filter(|&i| i != victim).collect();
    let mut grudge = vec![Vec::new(); cluster.node_count()];
    grudge[victim] = others.clone();
    for &o in &others {
        grudge[o] = vec![victim];
    }
    cluster.partition(&grudge).unwrap();
    let cut = Instant::now();

    // Every region heals onto the other three nodes while the victim's
    // store, which still heartbeats PD, stays Up: the repair came from
    // the leaders' down-peer reports, not from the store going down.
    let excluded: HashSet<u64> = [victim_store].into();
    let mut saw_down_peer = false;
    wait_for("every region healed off the cut-off node", Duration::from_secs(120), || {
        let regions = cluster.regions();
        saw_down_peer |= regions.iter().any(|r| {
            r["down_peers"]
                .as_array()
                .is_some_and(|d| d.iter().any(|p| p["peer"]["store_id"] == victim_store))
        });
        let state = cluster.pd_get(&format!("/pd/api/v1/store/{victim_store}"))?;
        let up = state["store"]["state_name"].as_str().unwrap_or("");
        assert_eq!(up, "Up", "the cut-off node's store must stay Up: {state}");
        all_healthy(&regions, 3, &excluded).then_some(())
    });
    assert!(saw_down_peer, "no leader reported the cut-off node's peers down");
    eprintln!("healed {} regions off the cut-off node in {:?}", cluster.regions().len(), cut.elapsed());

    // Writes went on on the majority side.
    client.put(b"after-cut".to_vec(), b"v".to_vec()).await.unwrap();

    // Healed, its stale peers hear they were removed and are destroyed.
    cluster.heal_network().unwrap();
    wait_for("the stale peers on the healed node to be destroyed", Duration::from_secs(90), || {
        (cluster.node_metric(victim, "mnemo_region_count") == Some(0.0)).then_some(())
    });
    Cluster::check_tiling(&cluster.regions()).unwrap();
    assert_all_keys(&client, loaded).await;
    assert_eq!(client.get(b"after-cut".to_vec()).await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommissioned_node_ends_tombstone_holding_nothing() {
    let cluster = Cluster::start(ClusterConfig::small_regions(4));
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap();
    let loaded = load_until_regions(&cluster, &client, 16).await;
    cluster.wait_replicated(3, Duration::from_secs(60));

    // Take store of node 0 offline through PD's HTTP API.
    let store = cluster.store_id_of(0).expect("store id");
    cluster.pd_delete(&format!("/pd/api/v1/store/{store}")).unwrap();

    // It drains and ends Tombstone with 0 regions; nothing is lost.
    wait_for("store to become Tombstone", Duration::from_secs(120), || {
        let s = cluster.pd_get(&format!("/pd/api/v1/store/{store}"))?;
        (s["store"]["state_name"].as_str() == Some("Tombstone")).then_some(())
    });
    let excluded: HashSet<u64> = [store].into();
    wait_for("regions healthy without the drained store", Duration::from_secs(60), || {
        all_healthy(&cluster.regions(), 3, &excluded).then_some(())
    });
    assert_all_keys(&client, loaded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_spread_one_per_zone() {
    // Six nodes in three zones, two per zone, each its own host.
    let labels = (0..6).map(|i| format!("zone=z{},host=h{i}", i % 3)).collect();
    let cluster = Cluster::start(ClusterConfig {
        node_labels: labels,
        pd_toml: "[replication]\nlocation-labels = [\"zone\", \"host\"]\n".into(),
        ..ClusterConfig::small_regions(6)
    });
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap();
    load_until_regions(&cluster, &client, 12).await;

    // Map store id → zone, then wait until every region has one replica per zone.
    let zone_of: HashMap<u64, String> = cluster
        .stores()
        .iter()
        .filter_map(|s| {
            let zone = s["store"]["labels"].as_array()?.iter().find(|l| l["key"] == "zone")?["value"]
                .as_str()?
                .to_string();
            Some((s["store"]["id"].as_u64()?, zone))
        })
        .collect();
    assert_eq!(zone_of.len(), 6);
    wait_for("one replica per zone in every region", Duration::from_secs(120), || {
        let regions = cluster.regions();
        let ok = all_healthy(&regions, 3, &HashSet::new())
            && regions.iter().all(|r| {
                let zones: HashSet<&String> =
                    peers_of(r).iter().filter_map(|(s, _)| zone_of.get(s)).collect();
                zones.len() == 3
            });
        ok.then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_split_through_pd_operator() {
    let cluster = Cluster::start(ClusterConfig::default());
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = RawClient::new(vec![cluster.pd_endpoint()]).await.unwrap();
    let batch: Vec<_> = (0..100).map(|i| (key(i), key(i))).collect();
    client.batch_put(batch).await.unwrap();

    // Ask PD to split the only region (the node picks the middle key).
    let region = cluster.regions()[0]["id"].as_u64().unwrap();
    cluster.pd_post("/pd/api/v1/operators", json!({"name": "split-region", "region_id": region})).unwrap();
    let regions = wait_for("two regions", Duration::from_secs(30), || {
        let rs = cluster.regions();
        (rs.len() == 2).then_some(rs)
    });
    Cluster::check_tiling(&regions).unwrap();
    assert_all_keys(&client, 100).await;
}
