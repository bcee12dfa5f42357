//! Every `pd-ctl` command against a live cluster (3 PD members, 4 nodes),
//! with its output parsed: JSON answers by their fields, `-o table` by its
//! columns, errors by their one line on stderr and exit status 1.

use std::collections::HashSet;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mnemo_chaos::cluster::{bin_dir, wait_for, Cluster, ClusterConfig};
use mnemo_client::RawClient;
use serde_json::Value;

/// Runs `pd-ctl -u <pd> ARGS` (with `-u` only when `pd` is given).
fn run(pd: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin_dir().join("pd-ctl"));
    if let Some(pd) = pd {
        cmd.args(["-u", pd]);
    }
    cmd.args(args).output().expect("run pd-ctl (make build first)")
}

/// A command that must succeed; its stdout.
fn ok(pd: &str, args: &[&str]) -> String {
    let out = run(Some(pd), args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pd-ctl {args:?} failed: {stderr}\n{stdout}");
    stdout.into_owned()
}

/// A command that must succeed, its stdout parsed as JSON.
fn json(pd: &str, args: &[&str]) -> Value {
    let text = ok(pd, args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("pd-ctl {args:?}: not JSON ({e}): {text}"))
}

/// A command's JSON answer, or `None` if it failed (e.g. a key between
/// the two halves of a split PD has not fully heard of yet).
fn try_json(pd: &str, args: &[&str]) -> Option<Value> {
    let out = run(Some(pd), args);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// A command that must fail: exit status 1 and exactly one line on stderr,
/// which is returned.
fn fails(pd: Option<&str>, args: &[&str]) -> String {
    let out = run(pd, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "pd-ctl {args:?} should fail: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line on stderr: {stderr:?}");
    stderr.trim_end().to_owned()
}

/// `-o table` output: the header's cells and each row's cells.
fn table(pd: &str, args: &[&str]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut all = vec!["-o", "table"];
    all.extend_from_slice(args);
    let text = ok(pd, &all);
    let mut lines = text.lines().map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
    let header = lines.next().unwrap_or_default();
    (header, lines.collect())
}

fn column(header: &[String], name: &str) -> usize {
    header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

fn ids(list: &Value, field: &str) -> Vec<u64> {
    list[field].as_array().unwrap_or_else(|| panic!("no {field} in {list}")).iter().map(id_of).collect()
}

fn id_of(v: &Value) -> u64 {
    v["id"].as_u64().or_else(|| v["store"]["id"].as_u64()).unwrap_or_else(|| panic!("no id in {v}"))
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

#[test]
fn offline_commands_and_an_unreachable_pd() {
    // tso decodes locally: 1,700,000,000,000 ms and logical 7.
    let ts = (1_700_000_000_000u64 << 18) | 7;
    let v: Value = serde_json::from_slice(&run(None, &["tso", &ts.to_string()]).stdout).unwrap();
    assert_eq!((v["physical_ms"].as_u64(), v["logic"].as_u64()), (Some(1_700_000_000_000), Some(7)));
    assert_eq!(v["system"], "2023-11-14T22:13:20.000Z");
    let t = String::from_utf8(run(None, &["-o", "table", "tso", &ts.to_string()]).stdout).unwrap();
    assert!(t.contains("system:  2023-11-14T22:13:20.000Z") && t.contains("logic:   7"), "{t}");

    let bash = String::from_utf8(run(None, &["completion", "bash"]).stdout).unwrap();
    assert!(
        bash.contains("complete -F") && bash.contains("pd-ctl") && bash.contains("remove-tombstone"),
        "{bash}"
    );
    let zsh = String::from_utf8(run(None, &["completion", "zsh"]).stdout).unwrap();
    assert!(zsh.starts_with("#compdef pd-ctl"), "{}", &zsh[..zsh.len().min(200)]);

    // Nobody listens on port 1.
    let err = fails(Some("127.0.0.1:1"), &["store"]);
    assert!(err.starts_with("pd-ctl: cannot reach PD at http://127.0.0.1:1"), "{err}");
    let err = fails(Some("127.0.0.1:1"), &["store", "label", "1", "zone"]);
    assert!(err.contains("not key=value"), "{err}");
    // Arguments clap refuses: one line too, exit status 1.
    let err = fails(None, &["store", "weight", "4", "heavy", "1"]);
    assert!(err.starts_with("pd-ctl: invalid value 'heavy'"), "{err}");
    let err = fails(None, &["no-such-command"]);
    assert!(err.contains("unrecognized subcommand"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_live_cluster() {
    let mut config = ClusterConfig::small_regions(4);
    config.pd_members = 3;
    let mut cluster = Cluster::start(config);
    cluster.wait_replicated(3, Duration::from_secs(60));
    let pd = &cluster.pd_endpoint();
    let client = RawClient::new(cluster.pd_endpoints()).await.unwrap();
    // Enough keys for several regions.
    for chunk in (0..600).collect::<Vec<u32>>().chunks(100) {
        client.batch_put(chunk.iter().map(|i| (key(*i), key(*i))).collect::<Vec<_>>()).await.unwrap();
    }
    // Balancing off, so the regions hold still while they are inspected.
    for name in ["balance-region-scheduler", "balance-leader-scheduler"] {
        assert!(ok(pd, &["scheduler", "remove", name]).contains("The scheduler is removed."));
    }
    let settled = || {
        wait_for("every region with 3 voters and no operator", Duration::from_secs(60), || {
            let ops = json(pd, &["operator", "show"]);
            let regions = json(pd, &["region"]);
            let three_voters = |r: &Value| {
                let peers = r["peers"].as_array().unwrap();
                peers.len() == 3 && peers.iter().all(|p| p["role_name"] == "Voter")
            };
            (ops.as_array().unwrap().is_empty()
                && regions["count"].as_u64() >= Some(4)
                && regions["regions"].as_array().unwrap().iter().all(three_voters))
            .then_some(())
        })
    };
    settled();

    // --- store ---------------------------------------------------------
    let stores = json(pd, &["store"]);
    assert_eq!(stores["count"], 4);
    let store_ids = ids(&stores, "stores");
    assert!(stores["stores"].as_array().unwrap().iter().all(|s| s["store"]["state_name"] == "Up"));
    let (header, rows) = table(pd, &["store"]);
    assert_eq!(&header[..3], ["ID", "ADDRESS", "STATE"]);
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r[column(&header, "STATE")] == "Up"));
    let (s1, s3, s4) = (store_ids[0], store_ids[2], store_ids[3]);
    assert_eq!(id_of(&json(pd, &["store", &s1.to_string()])), s1);

    let answer = ok(pd, &["store", "label", &s1.to_string(), "zone=z1", "rack=r1"]);
    assert!(answer.contains("The store's label is updated."), "{answer}");
    ok(pd, &["store", "label", &s1.to_string(), "rack="]);
    let labels = json(pd, &["store", &s1.to_string()])["store"]["labels"].clone();
    assert_eq!(labels, serde_json::json!([{"key": "zone", "value": "z1"}]));

    ok(pd, &["store", "weight", &s1.to_string(), "2", "1.5"]);
    let status = json(pd, &["store", &s1.to_string()])["status"].clone();
    assert_eq!((status["leader_weight"].as_f64(), status["region_weight"].as_f64()), (Some(2.0), Some(1.5)));
    let all = json(pd, &["config", "show", "all"]);
    assert_eq!(all["schedule"]["store-weight"][s1.to_string()]["leader"], 2.0);
    ok(pd, &["store", "weight", &s1.to_string(), "1", "1"]);
    assert_eq!(json(pd, &["store", &s1.to_string()])["status"]["leader_weight"], 1.0);

    let limits = json(pd, &["store", "limit"]);
    assert_eq!(limits.as_object().unwrap().len(), 4);
    ok(pd, &["store", "limit", &s1.to_string(), "30"]);
    ok(pd, &["store", "limit", "all", "20", "add-peer"]);
    let one = json(pd, &["store", "limit", &s1.to_string()]);
    assert_eq!(
        (one[s1.to_string()]["add-peer"].as_f64(), one[s1.to_string()]["remove-peer"].as_f64()),
        (Some(20.0), Some(30.0))
    );
    assert_eq!(json(pd, &["store", "limit"])[s3.to_string()]["add-peer"], 20.0);

    assert_eq!(json(pd, &["store", "check", "up"])["count"], 4);
    assert_eq!(json(pd, &["store", "check", "Tombstone"])["count"], 0);
    assert!(fails(Some(pd), &["store", "check", "sleepy"]).contains("unknown store state"));

    // --- region --------------------------------------------------------
    let regions = json(pd, &["region"]);
    let count = regions["count"].as_u64().unwrap();
    assert!(count >= 4);
    let region_ids: HashSet<u64> = ids(&regions, "regions").into_iter().collect();
    assert_eq!(region_ids.len() as u64, count, "region ids are unique");
    let (header, rows) = table(pd, &["region"]);
    assert_eq!(rows.len() as u64, count);
    assert!(rows.iter().all(|r| r[column(&header, "STORES")].split(',').count() == 3), "{rows:?}");
    let middle = regions["regions"][1].clone();
    let mid_id = id_of(&middle);
    assert_eq!(id_of(&json(pd, &["region", &mid_id.to_string()])), mid_id);

    // One key in three spellings: the same region.
    let k = key(300);
    let by_raw = id_of(&json(pd, &["region", "key", std::str::from_utf8(&k).unwrap()]));
    let by_hex = id_of(&json(pd, &["region", "key", "--format", "hex", &hex::encode(&k)]));
    let escaped: String = k.iter().map(|b| format!("\\x{b:02x}")).collect();
    let by_escaped = id_of(&json(pd, &["region", "key", "--format", "escaped", &escaped]));
    assert_eq!((by_hex, by_escaped), (by_raw, by_raw));
    assert!(
        json(pd, &["region", "key", std::str::from_utf8(&k).unwrap()])["start_key"].as_str().unwrap()
            <= hex::encode_upper(&k).as_str()
    );

    // Regions may still split: compare a scan with a listing just before it.
    wait_for("a full scan matching the region list", Duration::from_secs(20), || {
        let listed = json(pd, &["region"])["count"].clone();
        (json(pd, &["region", "scan"])["count"] == listed).then_some(())
    });
    assert_eq!(json(pd, &["region", "scan", "", "", "--limit", "2"])["count"], 2);
    let from = json(pd, &["region", "scan", "key-000300"]);
    assert_eq!(id_of(&from["regions"][0]), by_raw, "a scan starts at the region holding its first key");

    let on_s1 = json(pd, &["region", "store", &s1.to_string()]);
    assert!(on_s1["count"].as_u64().unwrap() >= 1);
    for r in on_s1["regions"].as_array().unwrap() {
        assert!(r["peers"].as_array().unwrap().iter().any(|p| p["store_id"] == s1), "{r}");
    }
    let middle = json(pd, &["region", &mid_id.to_string()]);
    let siblings = json(pd, &["region", "sibling", &mid_id.to_string()]);
    assert_eq!(siblings["count"], 2);
    assert_eq!(siblings["regions"][0]["end_key"], middle["start_key"]);
    assert_eq!(siblings["regions"][1]["start_key"], middle["end_key"]);

    for state in ["miss-peer", "extra-peer", "down-peer", "learner-peer", "offline-peer"] {
        assert_eq!(json(pd, &["region", "check", state])["count"], 0, "{state}");
    }
    assert!(json(pd, &["region", "check", "pending-peer"])["count"].is_u64());
    assert!(json(pd, &["region", "check", "empty-region"])["count"].is_u64());
    assert!(fails(Some(pd), &["region", "check", "sad-peer"]).contains("unknown region state"));
    assert!(fails(Some(pd), &["region", "999999"]).contains("PD answered 404"));

    // Read and write one region hard: it tops both lists, with real rates.
    let hot = key(100);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (read_top, write_top) = loop {
        assert!(Instant::now() < deadline, "the hot region never topped the read and write lists");
        for _ in 0..50 {
            client.put(hot.clone(), vec![b'v'; 64]).await.unwrap();
            client.get(hot.clone()).await.unwrap();
        }
        // Looked up each time: the hot region may split meanwhile.
        let Some(hot_region) = try_json(pd, &["region", "key", std::str::from_utf8(&hot).unwrap()]) else {
            continue;
        };
        let hot_region = id_of(&hot_region);
        let (r, w) = (json(pd, &["region", "topread", "1"]), json(pd, &["region", "topwrite", "1"]));
        let by_keys = json(pd, &["region", "topwrite", "query", "1"]);
        let stores = json(pd, &["store"]);
        let store_flow = |field: &str| {
            stores["stores"].as_array().unwrap().iter().any(|s| s["status"][field].as_f64() > Some(0.0))
        };
        if id_of(&r["regions"][0]) == hot_region
            && id_of(&w["regions"][0]) == hot_region
            && id_of(&by_keys["regions"][0]) == hot_region
            && r["regions"][0]["read_bytes_per_sec"].as_f64() > Some(0.0)
            && w["regions"][0]["written_bytes_per_sec"].as_f64() > Some(0.0)
            && store_flow("read_bytes_per_sec")
            && store_flow("written_bytes_per_sec")
        {
            break (r, w);
        }
        assert!(Instant::now() < deadline, "the hot region never topped the lists: {r} {w}");
    };
    assert_eq!((read_top["count"].as_u64(), write_top["count"].as_u64()), (Some(1), Some(1)));
    assert!(read_top["regions"][0]["read_keys_per_sec"].as_f64() > Some(0.0));
    let sized = json(pd, &["region", "topsize", "2"]);
    assert_eq!(sized["count"], 2);
    assert_ne!(id_of(&sized["regions"][0]), id_of(&sized["regions"][1]));

    // --- config --------------------------------------------------------
    let shown = json(pd, &["config", "show"]);
    assert!(
        shown["schedule"]["max-store-down-time"].is_string() && shown["replication"]["max-replicas"] == 3
    );
    assert!(shown.get("name").is_none(), "the default shows schedule and replication only");
    assert!(json(pd, &["config", "show", "all"])["name"].is_string());
    assert_eq!(json(pd, &["config", "show", "replication"])["max-replicas"], 3);
    assert_eq!(ok(pd, &["config", "set", "leader-schedule-limit", "8"]).trim(), "Success!");
    assert_eq!(json(pd, &["config", "show", "schedule"])["leader-schedule-limit"], 8);
    assert!(fails(Some(pd), &["config", "set", "no-such-key", "1"]).contains("unknown config key"));

    // --- scheduler -----------------------------------------------------
    let names = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().map_or_else(|| n["name"].as_str().unwrap().to_owned(), str::to_owned))
            .collect()
    };
    assert!(!names(json(pd, &["scheduler", "show"])).contains(&"balance-leader-scheduler".to_owned()));
    assert!(ok(pd, &["scheduler", "add", "shuffle-leader-scheduler"]).contains("The scheduler is created."));
    assert!(names(json(pd, &["scheduler", "show"])).contains(&"shuffle-leader-scheduler".to_owned()));
    assert!(ok(pd, &["scheduler", "pause", "shuffle-leader-scheduler", "300"]).contains("paused"));
    assert_eq!(names(json(pd, &["scheduler", "show", "--status", "paused"])), ["shuffle-leader-scheduler"]);
    ok(pd, &["scheduler", "resume", "shuffle-leader-scheduler"]);
    assert!(names(json(pd, &["scheduler", "show", "--status", "paused"])).is_empty());
    ok(pd, &["scheduler", "remove", "shuffle-leader-scheduler"]);
    assert!(!names(json(pd, &["scheduler", "show"])).contains(&"shuffle-leader-scheduler".to_owned()));
    assert!(fails(Some(pd), &["scheduler", "remove", "no-such-scheduler"]).contains("404"));

    // evict-leader drains the store's leaders and keeps them away.
    ok(pd, &["scheduler", "add", "evict-leader-scheduler", &s1.to_string()]);
    let evict = format!("evict-leader-scheduler-{s1}");
    assert!(names(json(pd, &["scheduler", "show"])).contains(&evict));
    wait_for("store 1 without leaders", Duration::from_secs(60), || {
        (json(pd, &["store", &s1.to_string()])["status"]["leader_count"] == 0).then_some(())
    });
    ok(pd, &["scheduler", "remove", &evict]);

    // --- operator ------------------------------------------------------
    settled();
    // transfer-leader, to a voter that does not lead.
    let region = json(pd, &["region", &mid_id.to_string()]);
    let leader_store = region["leader"]["store_id"].as_u64().unwrap();
    let target = region["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["store_id"].as_u64().unwrap())
        .find(|s| *s != leader_store)
        .unwrap();
    let op = json(pd, &["operator", "add", "transfer-leader", &mid_id.to_string(), &target.to_string()]);
    assert_eq!((op["region_id"].as_u64(), op["desc"].as_str()), (Some(mid_id), Some("transfer-leader")));
    wait_for("the leader moved", Duration::from_secs(30), || {
        (json(pd, &["region", &mid_id.to_string()])["leader"]["store_id"] == target).then_some(())
    });

    // An operator that cannot finish (its new peer's node is stopped) is
    // shown, found by kind, and cancelled.
    let region = json(pd, &["region", &mid_id.to_string()]);
    let holders: HashSet<u64> =
        region["peers"].as_array().unwrap().iter().map(|p| p["store_id"].as_u64().unwrap()).collect();
    let stuck_store = *store_ids.iter().find(|s| !holders.contains(s)).unwrap();
    let stuck_node =
        (0..cluster.node_count()).find(|i| cluster.store_id_of(*i) == Some(stuck_store)).unwrap();
    cluster.pause_node(stuck_node);
    let from = *holders.iter().find(|s| **s != region["leader"]["store_id"].as_u64().unwrap()).unwrap();
    ok(
        pd,
        &[
            "operator",
            "add",
            "transfer-peer",
            &mid_id.to_string(),
            &from.to_string(),
            &stuck_store.to_string(),
        ],
    );
    let shown = json(pd, &["operator", "show", "admin"]);
    assert!(
        shown.as_array().unwrap().iter().any(|o| o["region_id"] == mid_id && o["desc"] == "transfer-peer"),
        "{shown}"
    );
    // `show leader`: operators that move leadership, whatever limit they
    // count against (the stuck transfer-peer does not).
    let leader_ops = json(pd, &["operator", "show", "leader"]);
    assert!(
        leader_ops.as_array().unwrap().iter().all(|o| o["kind"] == "leader"
            || o["steps"].as_array().unwrap().iter().any(|s| s.as_str().unwrap().contains("leader"))),
        "{leader_ops}"
    );
    assert!(!leader_ops.as_array().unwrap().iter().any(|o| o["region_id"] == mid_id), "{leader_ops}");
    let (header, rows) = table(pd, &["operator", "show"]);
    assert!(rows.iter().any(|r| r[column(&header, "REGION")] == mid_id.to_string()), "{rows:?}");
    assert_eq!(json(pd, &["operator", "check", &mid_id.to_string()])["region_id"], mid_id);
    assert!(ok(pd, &["operator", "remove", &mid_id.to_string()]).contains("cancelled"));
    assert!(fails(Some(pd), &["operator", "check", &mid_id.to_string()]).contains("has no operator"));
    cluster.resume_node(stuck_node);

    // add-peer and remove-peer: the checker trims the extra voter, a
    // removed one comes back elsewhere; split-region at a key.
    let before = json(pd, &["region"])["count"].as_u64().unwrap();
    let split_at = hex::encode(key(450));
    let r450 = id_of(&wait_for("the region of key-000450", Duration::from_secs(20), || {
        try_json(pd, &["region", "key", "key-000450"])
    }));
    let op = json(
        pd,
        &["operator", "add", "split-region", &r450.to_string(), "--policy", "usekey", "--keys", &split_at],
    );
    assert_eq!(op["desc"], "split-region");
    wait_for("the split", Duration::from_secs(30), || {
        let region = try_json(pd, &["region", "key", "key-000450"])?;
        (region["start_key"] == hex::encode_upper(key(450))).then_some(())
    });
    assert!(json(pd, &["region"])["count"].as_u64().unwrap() > before);
    // The transfer-peer cancelled above may have had its learner added on
    // the stuck store already: PD hears of it a heartbeat later (and the
    // replica checker then removes it), so a store that looks spare may
    // hold that learner for a moment, and add-peer there is refused. Pick
    // again until PD accepts.
    let added = wait_for("an add-peer PD accepts", Duration::from_secs(60), || {
        let mid = mid_id.to_string();
        if run(Some(pd), &["operator", "check", &mid]).status.success() {
            return None; // an operator (the learner's removal) in flight
        }
        let region = json(pd, &["region", &mid]);
        let holders: HashSet<u64> =
            region["peers"].as_array().unwrap().iter().map(|p| p["store_id"].as_u64().unwrap()).collect();
        let Some(spare) = store_ids.iter().find(|s| !holders.contains(s)) else { return Some(None) };
        let out = run(Some(pd), &["operator", "add", "add-peer", &mid, &spare.to_string()]);
        if out.status.success() {
            return Some(Some(serde_json::from_slice::<Value>(&out.stdout).unwrap()));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("already has a peer on store") || err.contains("already has operator"), "{err}");
        None
    });
    if let Some(op) = added {
        assert_eq!(op["desc"], "add-peer");
    }
    assert!(fails(Some(pd), &["operator", "add", "remove-peer", "999999", "1"]).contains("not found"));

    // transfer-region: the region onto the spare store and the two
    // holders that do not lead; the leader hands over on its turn.
    settled();
    let region = json(pd, &["region", &mid_id.to_string()]);
    let leader_store = region["leader"]["store_id"].as_u64().unwrap();
    let holders: HashSet<u64> =
        region["peers"].as_array().unwrap().iter().map(|p| p["store_id"].as_u64().unwrap()).collect();
    let mut targets: Vec<u64> = store_ids.iter().copied().filter(|s| !holders.contains(s)).collect();
    targets.extend(holders.iter().copied().filter(|s| *s != leader_store));
    let target_args: Vec<String> = targets.iter().map(u64::to_string).collect();
    let mid = mid_id.to_string();
    let mut args = vec!["operator", "add", "transfer-region", mid.as_str()];
    args.extend(target_args.iter().map(String::as_str));
    let op = json(pd, &args);
    assert_eq!(op["desc"], "transfer-region", "{op}");
    let want: HashSet<u64> = targets.iter().copied().collect();
    wait_for("the region on its new stores", Duration::from_secs(60), || {
        let r = json(pd, &["region", &mid_id.to_string()]);
        let on: HashSet<u64> = r["peers"].as_array()?.iter().filter_map(|p| p["store_id"].as_u64()).collect();
        (on == want && !run(Some(pd), &["operator", "check", &mid_id.to_string()]).status.success())
            .then_some(())
    });
    assert!(fails(Some(pd), &["operator", "add", "transfer-region", &mid_id.to_string(), &target_args[0]])
        .contains("3 replicas"));

    // scatter-regions over the whole key space, waited for: the bar on
    // stderr, PD's answer on stdout once every scatter operator ended.
    settled();
    let out = run(Some(pd), &["operator", "add", "scatter-regions", "--wait", "--timeout", "120"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scatter-regions failed: {stderr}");
    eprintln!("$ pd-ctl operator add scatter-regions --wait --timeout 120\n{stderr}{stdout}");
    let answer: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let scattered = answer["regions_id"].as_array().unwrap().len();
    assert!(scattered > 0 && answer["finished_percentage"].as_u64().unwrap() > 0, "{answer}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(stderr.contains("scatter [") && last.contains("regions scattered"), "{stderr}");
    assert!(json(pd, &["operator", "show", "admin"])
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["desc"] != "scatter-region"));
    // One region: an operator, or (it may already sit where a scatter
    // puts it) a one-line refusal saying so.
    settled();
    let out = run(Some(pd), &["operator", "add", "scatter-region", &mid]);
    if out.status.success() {
        let op: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((op["region_id"].as_u64(), op["desc"].as_str()), (Some(mid_id), Some("scatter-region")));
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("where the scatter would put it"), "{stderr}");
    }
    assert!(fails(Some(pd), &["operator", "add", "scatter-region", "999999"]).contains("not found"));

    // --- member, health, cluster, ping ---------------------------------
    let members = json(pd, &["member"]);
    assert_eq!(members["members"].as_array().unwrap().len(), 3);
    let leader = json(pd, &["member", "leader", "show"]);
    let leader_name = leader["name"].as_str().unwrap().to_owned();
    assert_eq!(members["leader"]["name"], leader_name.as_str());
    let (header, rows) = table(pd, &["member"]);
    assert_eq!(
        rows.iter().filter(|r| r.get(column(&header, "ROLE")).is_some_and(|c| c == "leader")).count(),
        1
    );
    let health = json(pd, &["health"]);
    assert_eq!(health.as_array().unwrap().len(), 3, "{health}");
    assert!(health.as_array().unwrap().iter().all(|m| m["health"] == true), "{health}");
    // A member added (it would start with --join) and removed again; the
    // group keeps its quorum of three throughout.
    let added = json(pd, &["member", "add", "pd-extra", "http://127.0.0.1:1"]);
    let names_of = |v: &Value| -> Vec<String> {
        v["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap_or("").to_owned()).collect()
    };
    assert!(names_of(&added).contains(&"pd-extra".to_owned()), "{added}");
    assert_eq!(names_of(&added).len(), 4);
    assert_eq!(ok(pd, &["member", "delete", "pd-extra"]).trim(), "\"removed, pd: pd-extra\"");
    wait_for("three members again", Duration::from_secs(30), || {
        (names_of(&json(pd, &["member"])).len() == 3).then_some(())
    });
    let info = json(pd, &["cluster"]);
    assert!(info["id"].as_u64() > Some(0) && info["max_peer_count"] == 3);
    assert!(json(pd, &["ping"])["time_ms"].as_f64().is_some());
    assert!(ok(pd, &["-o", "table", "ping"]).starts_with("time: "));

    let other = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .find(|n| *n != leader_name)
        .unwrap();
    assert!(ok(pd, &["member", "leader", "transfer", &other]).contains("The transfer command is submitted."));
    let endpoints = cluster.pd_endpoints();
    // The leader as some member knows it: (name, client URL).
    let ask_leader = || {
        endpoints.iter().find_map(|e| {
            let l = try_json(e, &["member", "leader", "show"])?;
            Some((l["name"].as_str()?.to_owned(), l["client_urls"][0].as_str()?.to_owned()))
        })
    };
    // Sent to the new leader itself: a follower's view of who leads may lag
    // right after the transfer (it then answers that it redirected already).
    let leader_url = wait_for("the PD leader moved", Duration::from_secs(30), || {
        ask_leader().filter(|(name, _)| *name == other).map(|(_, url)| url)
    });
    let resigned = wait_for("the new leader taking a resign", Duration::from_secs(30), || {
        let out = run(Some(&leader_url), &["member", "leader", "resign"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(resigned.contains("The resign command is submitted."), "{resigned}");
    wait_for("a leader other than the one that resigned", Duration::from_secs(30), || {
        ask_leader().filter(|(name, _)| *name != other).map(drop)
    });
    let pd = &cluster.pd_endpoint();
    // Members learn of the new leader at their own pace; until then a
    // follower may forward to the one that resigned.
    wait_for("every member forwarding to the new leader", Duration::from_secs(30), || {
        endpoints.iter().all(|e| run(Some(e), &["store"]).status.success()).then_some(())
    });

    // --- interactive ---------------------------------------------------
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin_dir().join("pd-ctl"))
        .args(["-u", pd, "-i"])
        .env("HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"cluster\n-o table store check up\nexit\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"max_peer_count\": 3"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("ID") && l.contains("ADDRESS")), "{stdout}");
    let history = std::fs::read_to_string(home.path().join(".pd-ctl_history")).unwrap();
    assert!(history.contains("cluster") && history.contains("store check up"), "{history}");

    // --- drain a store with a progress bar; cancel a drain; tombstones --
    for name in ["balance-region-scheduler", "balance-leader-scheduler"] {
        ok(pd, &["scheduler", "add", name]);
    }
    assert!(names(json(pd, &["scheduler", "show"])).contains(&"balance-region-scheduler".to_owned()));
    ok(pd, &["store", "delete", &s3.to_string()]);
    assert_eq!(json(pd, &["store", &s3.to_string()])["store"]["state_name"], "Offline");
    ok(pd, &["store", "cancel-delete", &s3.to_string()]);
    assert_eq!(json(pd, &["store", &s3.to_string()])["store"]["state_name"], "Up");

    let out = run(Some(pd), &["store", "delete", &s4.to_string(), "--wait", "--timeout", "180"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    println!("store delete {s4} --wait:\n{stderr}");
    let bars: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&format!("store {s4} drain ["))).collect();
    assert!(!bars.is_empty() && bars.last().unwrap().contains("(100%)"), "{stderr}");
    assert!(stderr.contains(&format!("store {s4} is Tombstone")), "{stderr}");
    let tombstones = json(pd, &["store", "check", "tombstone"]);
    assert_eq!(ids(&tombstones, "stores"), [s4]);
    assert_eq!(json(pd, &["store", "remove-tombstone"])["removed"], serde_json::json!([s4]));
    assert_eq!(json(pd, &["store", "check", "tombstone"])["count"], 0);
    assert!(fails(Some(pd), &["store", &s4.to_string()]).contains("404"));

    // Every key is still there.
    let got = client.batch_get((0..600).map(key).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(got.len(), 600);
}
