//! Three PD members in one process, on loopback ports: one leader serves,
//! followers refuse as PD's do, the metadata survives the leader going away
//! and the whole group restarting. The suite runs on both backends: the
//! members' own raft group (talking over their peer URLs; a member far
//! behind a compacted log catches up by snapshot, a fourth joins and
//! leaves) and an external etcd (a real three-member `etcd` from Debian's
//! `etcd-server`, started by the test; a leader cut off from etcd stops
//! serving before its lease could pass to anyone else).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// Ports no other member of this test process was given, below the kernel's
// ephemeral range: a member restarted on its ports finds them free.
use mnemo_chaos::cluster::free_port;
use mnemo_pd::config::Backend;
use mnemo_pd::{Config, PdHandle};
use mnemo_proto::metapb;
use mnemo_proto::pdpb::{self, pd_client::PdClient};
use mnemo_raft_driver::duration::ReadableDuration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Bounds every wait; nothing sleeps for a fixed time.
const DEADLINE: Duration = Duration::from_secs(30);

fn header(cluster_id: u64) -> Option<pdpb::RequestHeader> {
    Some(pdpb::RequestHeader { cluster_id, sender_id: 0 })
}

/// A real etcd cluster of three members on loopback (Debian's
/// `etcd-server`, installed by `make deps`), each with its own data dir;
/// killed and removed on drop.
struct Etcd {
    members: Vec<Child>,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("mnemo-test-{}", std::process::id());
        // Built as they start: a failure part-way kills those started.
        let mut etcd = Etcd { members: Vec::new(), endpoints: Vec::new(), _dir: dir };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(etcd._dir.path().join(format!("e{i}.log"))).unwrap();
            let child = Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(etcd._dir.path().join(format!("e{i}")))
                .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd (Debian package etcd-server; `make deps` installs it)");
            etcd.members.push(child);
            etcd.endpoints.push(client_url);
        }
        let deadline = Instant::now() + DEADLINE;
        for url in &etcd.endpoints {
            loop {
                let health = ureq::get(&format!("{url}/health")).timeout(Duration::from_secs(2)).call();
                if health.ok().and_then(|r| r.into_string().ok()).is_some_and(|b| b.contains("\"true\"")) {
                    break;
                }
                assert!(Instant::now() < deadline, "etcd at {url} never became healthy");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        etcd
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) every etcd member.
    fn signal_all(&self, signal: &str) {
        for i in 0..self.members.len() {
            self.signal(i, signal);
        }
    }

    /// Sends `signal` to etcd member `i`.
    fn signal(&self, i: usize, signal: &str) {
        let pid = self.members[i].id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success(), "kill {signal} etcd");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = Command::new("kill").args(["-CONT", &m.id().to_string()]).status();
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

/// Which backend a group runs on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Raft,
    Etcd,
}

/// A group of members and what it needs (etcd, when it runs on etcd).
struct Fixture {
    configs: Vec<Config>,
    _dirs: Vec<tempfile::TempDir>,
    etcd: Option<Etcd>,
}

impl Fixture {
    fn new(kind: Kind) -> Fixture {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut configs = group(&dirs);
        let etcd = (kind == Kind::Etcd).then(Etcd::start);
        if let Some(etcd) = &etcd {
            for c in &mut configs {
                c.backend = Backend::Etcd;
                c.etcd_endpoints = etcd.endpoints.join(",");
                c.initial_cluster = String::new();
            }
        }
        Fixture { configs, _dirs: dirs, etcd }
    }
}

/// Three member configs with fixed ports (the initial cluster names them),
/// fast ticks, and a short log.
fn group(dirs: &[tempfile::TempDir]) -> Vec<Config> {
    let ports: Vec<(u16, u16)> = dirs.iter().map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("pd{}=http://127.0.0.1:{peer}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    dirs.iter()
        .zip(&ports)
        .enumerate()
        .map(|(i, (dir, (client, peer)))| Config {
            name: format!("pd{}", i + 1),
            client_urls: format!("http://127.0.0.1:{client}"),
            peer_urls: format!("http://127.0.0.1:{peer}"),
            initial_cluster: initial.clone(),
            tick_interval: ReadableDuration(Duration::from_millis(50)),
            election_interval: ReadableDuration(Duration::from_millis(500)),
            raft_log_keep_entries: 5,
            ..Config::for_tests(dir.path())
        })
        .collect()
}

async fn start_all(configs: &[Config]) -> Vec<Option<PdHandle>> {
    let mut out = Vec::new();
    for c in configs {
        out.push(Some(mnemo_pd::start(c.clone()).await.unwrap()));
    }
    out
}

/// The index of the one member serving as leader, once there is one.
async fn wait_leader(members: &[Option<PdHandle>]) -> usize {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let serving: Vec<usize> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.as_ref().is_some_and(|m| m.cluster().check_serving().is_ok()))
            .map(|(i, _)| i)
            .collect();
        assert!(serving.len() <= 1, "two members serve at once: {serving:?}");
        if let [one] = serving[..] {
            return one;
        }
        assert!(Instant::now() < deadline, "no PD leader within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn client(m: &PdHandle) -> PdClient<Channel> {
    PdClient::connect(m.client_url().to_owned()).await.unwrap()
}

async fn alloc_id(pd: &mut PdClient<Channel>, cluster_id: u64) -> u64 {
    let resp = pd.alloc_id(pdpb::AllocIdRequest { header: header(cluster_id) }).await.unwrap().into_inner();
    assert_eq!(resp.header.unwrap().error, None);
    resp.id
}

async fn tso(pd: &mut PdClient<Channel>, cluster_id: u64) -> u64 {
    let (tx, rx) = mpsc::channel(1);
    let mut answers = pd.tso(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(pdpb::TsoRequest { header: header(cluster_id), count: 1, dc_location: String::new() })
        .await
        .unwrap();
    let ts = answers.message().await.unwrap().unwrap().timestamp.unwrap();
    ((ts.physical as u64) << 18) | ts.logical as u64
}

async fn put_store(pd: &mut PdClient<Channel>, cluster_id: u64, id: u64) {
    let store = metapb::Store { id, address: format!("127.0.0.1:{}", 30000 + id), ..Default::default() };
    let resp =
        pd.put_store(pdpb::PutStoreRequest { header: header(cluster_id), store: Some(store) }).await.unwrap();
    assert_eq!(resp.into_inner().header.unwrap().error, None);
}

async fn bootstrap(pd: &mut PdClient<Channel>, cluster_id: u64) {
    let store_id = alloc_id(pd, cluster_id).await;
    let region = metapb::Region {
        id: alloc_id(pd, cluster_id).await,
        peers: vec![metapb::Peer { id: alloc_id(pd, cluster_id).await, store_id, ..Default::default() }],
        region_epoch: Some(metapb::RegionEpoch { conf_ver: 1, version: 1 }),
        ..Default::default()
    };
    let store = metapb::Store { id: store_id, address: "127.0.0.1:20160".into(), ..Default::default() };
    let req = pdpb::BootstrapRequest { header: header(cluster_id), store: Some(store), region: Some(region) };
    assert_eq!(pd.bootstrap(req).await.unwrap().into_inner().header.unwrap().error, None);
}

/// The serving leader once there is one, the cluster id, and a client of
/// the leader after it bootstrapped the cluster.
async fn bootstrapped(members: &[Option<PdHandle>]) -> (usize, u64, PdClient<Channel>) {
    let leader = wait_leader(members).await;
    let cluster_id = members[leader].as_ref().unwrap().cluster_id();
    let mut pd = client(members[leader].as_ref().unwrap()).await;
    bootstrap(&mut pd, cluster_id).await;
    (leader, cluster_id, pd)
}

/// Polls `f` on a member until it holds.
async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn shutdown_all(members: Vec<Option<PdHandle>>) {
    for m in members.into_iter().flatten() {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_serves_followers_refuse_and_a_new_leader_continues_above_everything_issued() {
    failover_and_restart(Kind::Raft).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_one_leader_serves_followers_refuse_and_a_new_leader_continues_above_everything_issued() {
    failover_and_restart(Kind::Etcd).await;
}

async fn failover_and_restart(kind: Kind) {
    let fixture = Fixture::new(kind);
    let configs = &fixture.configs;
    let mut members = start_all(configs).await;
    let leader = wait_leader(&members).await;
    let mut pd = client(members[leader].as_ref().unwrap()).await;
    let cluster_id = members[leader].as_ref().unwrap().cluster_id();
    assert_ne!(cluster_id, 0);

    // Followers: UNAVAILABLE "not leader" for a unary call; GetMembers
    // answered by everyone, naming the leader with its client URL.
    let follower = (leader + 1) % 3;
    let mut f = client(members[follower].as_ref().unwrap()).await;
    let err =
        f.is_bootstrapped(pdpb::IsBootstrappedRequest { header: header(cluster_id) }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("not leader"), "{}", err.message());
    // The gRPC health service: SERVING on every member, leader or not.
    let follower_url = members[follower].as_ref().unwrap().client_url().to_owned();
    let channel = Channel::from_shared(follower_url).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(
        status.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let leader_url = members[leader].as_ref().unwrap().client_url().to_owned();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let resp = f.get_members(pdpb::GetMembersRequest::default()).await.unwrap().into_inner();
        let named = resp.leader.as_ref().is_some_and(|l| l.client_urls == vec![leader_url.clone()]);
        if named && resp.members.len() == 3 && resp.header.unwrap().cluster_id == cluster_id {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower never listed 3 members and the leader: {:?}",
            resp.members
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Work on the leader: bootstrap, stores, ids, timestamps.
    bootstrap(&mut pd, cluster_id).await;
    for id in 100..110 {
        put_store(&mut pd, cluster_id, id).await;
    }
    let last_id = alloc_id(&mut pd, cluster_id).await;
    let last_ts = tso(&mut pd, cluster_id).await;

    // The leader goes away: another serves, above every id and timestamp.
    let stopped_at = Instant::now();
    members[leader].take().unwrap().shutdown().await;
    let next = wait_leader(&members).await;
    let failover = stopped_at.elapsed();
    let mut pd = client(members[next].as_ref().unwrap()).await;
    let resp = pd.is_bootstrapped(pdpb::IsBootstrappedRequest { header: header(cluster_id) }).await.unwrap();
    assert!(resp.into_inner().bootstrapped);
    assert!(alloc_id(&mut pd, cluster_id).await > last_id);
    assert!(tso(&mut pd, cluster_id).await > last_ts);
    let stores = pd
        .get_all_stores(pdpb::GetAllStoresRequest {
            header: header(cluster_id),
            exclude_tombstone_stores: true,
        })
        .await
        .unwrap()
        .into_inner()
        .stores;
    assert_eq!(stores.len(), 11, "bootstrap store and 10 more");
    eprintln!("failover after the leader stopped: {failover:?}");

    // The old leader comes back as a follower and catches up.
    members[leader] = Some(mnemo_pd::start(configs[leader].clone()).await.unwrap());
    put_store(&mut pd, cluster_id, 200).await;
    let back = members[leader].as_ref().unwrap().cluster().clone();
    wait_for("the old leader to catch up", || back.read(|v| v.state.stores().len() == 12)).await;
    assert_eq!(wait_leader(&members).await, next, "a returning member does not disturb the leader");
    drop(back);

    // Run-time config and schedulers, changed through the leader.
    let leader_url = members[next].as_ref().unwrap().client_url().to_owned();
    tokio::task::spawn_blocking(move || {
        let post = |path: &str, body: serde_json::Value| {
            ureq::post(&format!("{leader_url}{path}")).send_json(body).map(|_| ()).map_err(|e| e.to_string())
        };
        post("/pd/api/v1/config", serde_json::json!({ "schedule.max-store-down-time": "7m" })).unwrap();
        post("/pd/api/v1/schedulers", serde_json::json!({ "name": "shuffle-leader-scheduler" })).unwrap();
    })
    .await
    .unwrap();

    // The whole group stops and starts again: everything is still there,
    // and ids and timestamps keep going up.
    let last_id = alloc_id(&mut pd, cluster_id).await;
    let last_ts = tso(&mut pd, cluster_id).await;
    drop(pd);
    shutdown_all(members).await;
    let members = start_all(configs).await;
    let leader = wait_leader(&members).await;
    let m = members[leader].as_ref().unwrap();
    assert_eq!(m.cluster_id(), cluster_id);
    let mut pd = client(m).await;
    assert!(alloc_id(&mut pd, cluster_id).await > last_id);
    assert!(tso(&mut pd, cluster_id).await > last_ts);
    assert_eq!(m.cluster().read(|v| v.state.stores().len()), 12);
    assert_eq!(m.cluster().read(|v| v.state.regions().len()), 1);
    assert_eq!(m.cluster().config().schedule.max_store_down_time.0, Duration::from_secs(420));
    let schedulers: Vec<String> = m.cluster().schedulers().iter().map(|s| s.name()).collect();
    assert!(schedulers.iter().any(|s| s == "shuffle-leader-scheduler"), "{schedulers:?}");
    drop(pd);
    shutdown_all(members).await;
}

/// The etcd backend's lease: with etcd unreachable (every etcd member
/// stopped), the leader cannot renew its lease and stops serving, and no
/// member serves; once etcd is back, a leader serves again and hands out
/// ids and timestamps above everything before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_a_leader_cut_off_from_etcd_stops_serving_and_a_leader_serves_again_above_everything() {
    let fixture = Fixture::new(Kind::Etcd);
    let members = start_all(&fixture.configs).await;
    let (_, cluster_id, mut pd) = bootstrapped(&members).await;
    let last_id = alloc_id(&mut pd, cluster_id).await;
    let last_ts = tso(&mut pd, cluster_id).await;

    let etcd = fixture.etcd.as_ref().unwrap();
    etcd.signal_all("-STOP");
    let paused = Instant::now();
    wait_for("every member to stop serving", || {
        members.iter().flatten().all(|m| m.cluster().check_serving().is_err())
    })
    .await;
    eprintln!("the leader stopped serving {:?} after etcd stopped", paused.elapsed());
    let err = pd.alloc_id(pdpb::AllocIdRequest { header: header(cluster_id) }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("not leader"), "{}", err.message());

    etcd.signal_all("-CONT");
    let next = wait_leader(&members).await;
    let mut pd = client(members[next].as_ref().unwrap()).await;
    assert!(alloc_id(&mut pd, cluster_id).await > last_id);
    assert!(tso(&mut pd, cluster_id).await > last_ts);
    drop(pd);
    shutdown_all(members).await;
}

/// The etcd backend's lease is conservative. Each PD member talks to its
/// own etcd member; the leader's is stopped, so the leader alone loses
/// etcd while the others still reach a quorum of it. The leader stops
/// serving, and only after that does another member win the key and
/// serve; timestamps keep increasing across the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_a_leader_cut_off_stops_serving_before_another_serves() {
    let mut fixture = Fixture::new(Kind::Etcd);
    let endpoints = fixture.etcd.as_ref().unwrap().endpoints.clone();
    for (c, e) in fixture.configs.iter_mut().zip(&endpoints) {
        c.etcd_endpoints = e.clone();
    }
    let members = start_all(&fixture.configs).await;
    let (leader, cluster_id, mut pd) = bootstrapped(&members).await;
    let last_ts = tso(&mut pd, cluster_id).await;

    fixture.etcd.as_ref().unwrap().signal(leader, "-STOP");
    let cut = Instant::now();
    let deadline = cut + DEADLINE;
    let mut old_stopped = None;
    let next = loop {
        let now = Instant::now();
        if old_stopped.is_none() && members[leader].as_ref().unwrap().cluster().check_serving().is_err() {
            old_stopped = Some(now);
        }
        let other =
            (0..3).find(|i| *i != leader && members[*i].as_ref().unwrap().cluster().check_serving().is_ok());
        if let Some(i) = other {
            let stopped = old_stopped.expect("a new leader served while the old one still did");
            eprintln!(
                "cut off: old leader stopped after {:?}, the next served after {:?}",
                stopped - cut,
                now - cut
            );
            break i;
        }
        assert!(now < deadline, "no new leader within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut pd = client(members[next].as_ref().unwrap()).await;
    assert!(tso(&mut pd, cluster_id).await > last_ts);
    fixture.etcd.as_ref().unwrap().signal(leader, "-CONT");
    drop(pd);
    shutdown_all(members).await;
}

/// Leadership handed over on request (`member leader transfer`, `resign`),
/// and a member that no longer runs deleted, on the etcd backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_leadership_moves_on_request_and_a_stopped_member_is_deleted() {
    let fixture = Fixture::new(Kind::Etcd);
    let mut members = start_all(&fixture.configs).await;
    let leader = wait_leader(&members).await;
    let target = (leader + 1) % 3;
    let lead = members[leader].as_ref().unwrap().cluster().clone();
    wait_for("the leader to see every member running", || {
        lead.leadership().status().active_voters.len() == 3 && lead.member_list().0.len() == 3
    })
    .await;
    drop(lead);
    let url = members[leader].as_ref().unwrap().client_url().to_owned();
    let post = |url: String, path: &'static str| {
        tokio::task::spawn_blocking(move || {
            ureq::post(&format!("{url}{path}"))
                .call()
                .map(|r| r.into_string().unwrap())
                .map_err(|e| e.to_string())
        })
    };
    let path: &'static str = [
        "/pd/api/v1/leader/transfer/pd1",
        "/pd/api/v1/leader/transfer/pd2",
        "/pd/api/v1/leader/transfer/pd3",
    ][target];
    post(url, path).await.unwrap().unwrap();
    wait_for("the named member to lead", || {
        members[target].as_ref().unwrap().cluster().check_serving().is_ok()
    })
    .await;
    assert_eq!(wait_leader(&members).await, target);
    let url = members[target].as_ref().unwrap().client_url().to_owned();
    post(url, "/pd/api/v1/leader/resign").await.unwrap().unwrap();
    wait_for("another member to lead after the resign", || {
        (0..3).any(|i| i != target && members[i].as_ref().unwrap().cluster().check_serving().is_ok())
    })
    .await;
    let next = wait_leader(&members).await;
    assert_ne!(next, target);

    // A running member cannot be deleted; once stopped, it can.
    let gone = (0..3).find(|i| *i != next).unwrap();
    let name = format!("pd{}", gone + 1);
    let url = members[next].as_ref().unwrap().client_url().to_owned();
    let delete = |url: String, name: String| {
        tokio::task::spawn_blocking(move || {
            match ureq::delete(&format!("{url}/pd/api/v1/members/name/{name}")).call() {
                Ok(r) => (200, r.into_string().unwrap()),
                Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
                Err(e) => panic!("{e}"),
            }
        })
    };
    let (code, body) = delete(url.clone(), name.clone()).await.unwrap();
    assert_ne!(code, 200, "deleting a running member: {body}");
    let leader_cluster = members[next].as_ref().unwrap().cluster().clone();
    let gone_id = member_id_of(&leader_cluster, &name);
    assert_ne!(gone_id, 0);
    members[gone].take().unwrap().shutdown().await;
    wait_for("the stopped member to be seen as not running", || {
        !leader_cluster.leadership().status().active_voters.contains(&gone_id)
    })
    .await;
    let (code, body) = delete(url, name.clone()).await.unwrap();
    assert_eq!(code, 200, "{body}");
    wait_for("the member list to drop it", || leader_cluster.member_list().0.iter().all(|m| m.name != name))
        .await;
    drop(leader_cluster);
    shutdown_all(members).await;
}

fn member_id_of(cluster: &mnemo_pd::cluster::Cluster, name: &str) -> u64 {
    cluster.member_list().0.iter().find(|m| m.name == name).map_or(0, |m| m.member_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_a_compacted_log_catches_up_by_snapshot() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs = group(&dirs);
    let mut members = start_all(&configs).await;
    let leader = wait_leader(&members).await;
    let cluster_id = members[leader].as_ref().unwrap().cluster_id();
    let mut pd = client(members[leader].as_ref().unwrap()).await;
    bootstrap(&mut pd, cluster_id).await;

    // One follower stops; the others commit far more than the log keeps.
    let away = (leader + 1) % 3;
    let left_at = members[away].as_ref().unwrap().cluster().leadership().status().applied_index;
    members[away].take().unwrap().shutdown().await;
    for id in 100..140 {
        put_store(&mut pd, cluster_id, id).await;
    }
    let first_kept = members[leader].as_ref().unwrap().cluster().leadership().status().first_index;
    assert!(
        first_kept > left_at + 1,
        "the log was compacted past the member that left ({first_kept} vs {left_at})"
    );

    // Back, it can only catch up by snapshot.
    members[away] = Some(mnemo_pd::start(configs[away].clone()).await.unwrap());
    let back = members[away].as_ref().unwrap().cluster().clone();
    wait_for("the member to catch up", || back.read(|v| v.state.stores().len() == 41)).await;
    assert!(back.is_bootstrapped());
    drop(pd);
    shutdown_all(members).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_member_joins_catches_up_by_snapshot_and_is_removed_again() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    // A log nothing compacts: the founders' configuration is in no entry,
    // so the newcomer must still be sent a snapshot (its log starts at 0,
    // the founders' after their initial index).
    let configs: Vec<Config> =
        group(&dirs[..3]).into_iter().map(|c| Config { raft_log_keep_entries: 10_000, ..c }).collect();
    let mut members = start_all(&configs).await;
    let leader = wait_leader(&members).await;
    let cluster_id = members[leader].as_ref().unwrap().cluster_id();
    let mut pd = client(members[leader].as_ref().unwrap()).await;
    bootstrap(&mut pd, cluster_id).await;
    for id in 100..130 {
        put_store(&mut pd, cluster_id, id).await;
    }

    // pd4 joins through a follower's client URL (forwarded to the leader).
    let follower = members[(leader + 1) % 3].as_ref().unwrap().client_url().to_owned();
    let peer = free_port();
    let pd4 = Config {
        name: "pd4".into(),
        client_urls: format!("http://127.0.0.1:{}", free_port()),
        peer_urls: format!("http://127.0.0.1:{peer}"),
        initial_cluster: String::new(),
        join: follower,
        ..configs[0].clone()
    };
    let pd4 = Config { data_dir: dirs[3].path().to_path_buf(), ..pd4 };
    members.push(Some(mnemo_pd::start(pd4.clone()).await.unwrap()));
    let joined = members[3].as_ref().unwrap().cluster().clone();
    wait_for("pd4 to catch up", || joined.read(|v| v.state.stores().len() == 31)).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let resp = pd.get_members(pdpb::GetMembersRequest::default()).await.unwrap().into_inner();
        let listed = resp.members.iter().any(|m| m.name == "pd4" && !m.client_urls.is_empty());
        if resp.members.len() == 4 && listed {
            break;
        }
        assert!(Instant::now() < deadline, "pd4 never listed with its client URL: {:?}", resp.members);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("pd4 to see all four voters", || joined.leadership().status().voters.len() == 4).await;

    // Restarted, pd4 comes back as a member without asking to join again.
    drop(joined);
    members[3].take().unwrap().shutdown().await;
    members[3] = Some(mnemo_pd::start(pd4).await.unwrap());
    put_store(&mut pd, cluster_id, 300).await;
    let back = members[3].as_ref().unwrap().cluster().clone();
    wait_for("pd4 to catch up after its restart", || back.read(|v| v.state.stores().len() == 32)).await;
    drop(back);

    // Removed, it is no longer a voter anywhere nor listed.
    let url = members[leader].as_ref().unwrap().client_url().to_owned();
    let removed = tokio::task::spawn_blocking(move || {
        let resp = ureq::delete(&format!("{url}/pd/api/v1/members/name/pd4")).call();
        resp.map_err(|e| e.to_string()).map(|r| r.into_string().unwrap())
    })
    .await
    .unwrap()
    .unwrap();
    assert!(removed.contains("removed, pd: pd4"), "{removed}");
    let leader_cluster = members[leader].as_ref().unwrap().cluster().clone();
    wait_for("pd4 to leave the member list and the voters", || {
        leader_cluster.member_list().0.len() == 3 && leader_cluster.leadership().status().voters.len() == 3
    })
    .await;
    drop(leader_cluster);
    drop(pd);
    shutdown_all(members).await;
}

/// A member restarted on a data directory left from an earlier cluster
/// (same names and URLs, a log with a higher term) takes no part in the new
/// cluster: each side drops the other's raft messages, so it can neither
/// win an election nor overwrite the new cluster's metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_an_earlier_cluster_cannot_take_over_a_new_one() {
    // The earlier cluster: leadership moved around to raise its term.
    let old_dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs = group(&old_dirs);
    let old = start_all(&configs).await;
    let (_, old_cluster_id, _) = bootstrapped(&old).await;
    for _ in 0..4 {
        let leader = wait_leader(&old).await;
        let next = (leader + 1) % 3;
        let cluster = old[leader].as_ref().unwrap().cluster();
        let term = cluster.leadership().status().term;
        let _ = cluster.leadership().transfer_leader(member_id_of(cluster, &format!("pd{}", next + 1)));
        wait_for("leadership to move", || cluster.leadership().status().term > term).await;
    }
    let old_term = old[wait_leader(&old).await].as_ref().unwrap().cluster().leadership().status().term;
    shutdown_all(old).await;

    // A new cluster on the same names and URLs: pd1 and pd2 with fresh
    // directories, a quorum of three, serve and bootstrap.
    let new_dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut new_configs = configs.clone();
    for (c, d) in new_configs.iter_mut().zip(&new_dirs) {
        c.data_dir = d.path().to_path_buf();
    }
    let mut members = start_all(&new_configs[..2]).await;
    let (leader, cluster_id, mut pd) = bootstrapped(&members).await;
    assert_ne!(cluster_id, old_cluster_id);
    let new_term = members[leader].as_ref().unwrap().cluster().leadership().status().term;
    assert!(
        new_term < old_term,
        "the stale member's log must carry the higher term ({new_term} vs {old_term})"
    );

    // pd3 starts on the earlier cluster's directory.
    members.push(Some(mnemo_pd::start(new_configs[2].clone()).await.unwrap()));
    let status = |i: usize| members[i].as_ref().unwrap().cluster().leadership().status();
    // Both sides refuse the other through several of the stale member's
    // campaigns (about one every 0.5-1 s).
    wait_for("the new leader to drop the stale member's messages", || status(leader).foreign_dropped >= 8)
        .await;
    wait_for("the stale member to drop the new cluster's messages", || status(2).foreign_dropped > 0).await;
    let now = wait_leader(&members).await;
    assert_eq!(now, leader, "the new cluster's leader keeps leading");
    assert_eq!(status(leader).term, new_term, "no election was forced on the new cluster");
    assert_eq!(members[leader].as_ref().unwrap().cluster_id(), cluster_id);
    assert!(members[2].as_ref().unwrap().cluster().check_serving().is_err());
    alloc_id(&mut pd, cluster_id).await;
    shutdown_all(members).await;
}
