//! A local cluster of real processes: one or more `mnemo-pd` members (a PD
//! raft group) and N `mnemo-node`s, each with its own data directory under
//! one temporary root, on loopback or each in its own network namespace.
//!
//! Used by the process tests, `mnemo-bench --spawn`, and (later) the chaos
//! harness, so there is one launcher. Nodes can be killed with SIGKILL and
//! restarted on the same data directory and ports. Dropping the cluster kills
//! every process and removes the directory (set `MNEMO_KEEP_TEST_DATA=1` to
//! keep it for a post-mortem; the path is printed).
//!
//! Binaries are found in `MNEMO_BIN_DIR`, else next to the running test
//! executable's parent (`target/release`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::net::Network;

/// Settings of a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of storage nodes.
    pub nodes: usize,
    /// Extra TOML appended to every node's config file.
    pub node_toml: String,
    /// Extra TOML appended to PD's config file.
    pub pd_toml: String,
    /// PD members (one raft group); 1 by default.
    pub pd_members: usize,
    /// Keep PD's metadata in a three-member etcd (Debian's `etcd-server`)
    /// started with the cluster (`--backend etcd`) instead of the PD
    /// members' own raft group.
    pub pd_etcd: bool,
    /// `--labels` of node i (0-based), if any (e.g. `zone=z1,host=h1`).
    pub node_labels: Vec<String>,
    /// Extra command-line arguments of every node (e.g. test-only flags).
    pub node_args: Vec<String>,
    /// Run each node and each PD member in its own network namespace with
    /// its own IP address (see [`crate::net`]; needs root), so links can be
    /// cut. Otherwise everything listens on loopback.
    pub netns: bool,
    /// Data directory of the run, kept afterwards. Default: a temporary
    /// directory removed on drop (unless a test panics or
    /// `MNEMO_KEEP_TEST_DATA` is set).
    pub root: Option<PathBuf>,
}

/// Node settings that make regions split after ~100 keys (or 8 KiB) and
/// check often, so multi-region tests run in seconds.
pub const SMALL_REGIONS_TOML: &str = "[coprocessor]\nregion-split-size = \"8KiB\"\nregion-split-keys = 100\n\
split-region-check-tick-interval = \"200ms\"\n";

impl ClusterConfig {
    /// `nodes` nodes whose regions split after ~100 keys.
    pub fn small_regions(nodes: usize) -> Self {
        let mut c = ClusterConfig { nodes, ..Default::default() };
        c.node_toml.push_str("raft-log-gc-tick-interval = \"1s\"\n");
        c.node_toml.push_str(SMALL_REGIONS_TOML);
        c
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 3,
            // Fast reports so PD repairs within a second or two in tests.
            node_toml: "[raftstore]\npd-heartbeat-tick-interval = \"1s\"\npd-store-heartbeat-tick-interval = \"1s\"\n"
                .into(),
            pd_toml: String::new(),
            pd_members: 1,
            pd_etcd: false,
            node_labels: Vec::new(),
            node_args: Vec::new(),
            netns: false,
            root: None,
        }
    }
}

struct Proc {
    child: Option<Child>,
    args: Vec<String>,
    /// Environment of the next start only (e.g. `FAILPOINTS`).
    env: Vec<(String, String)>,
    bin: PathBuf,
    log: PathBuf,
}

impl Proc {
    fn spawn(bin: &Path, args: &[String], log: &Path) -> Proc {
        let mut p = Proc {
            child: None,
            args: args.to_vec(),
            env: Vec::new(),
            bin: bin.to_path_buf(),
            log: log.to_path_buf(),
        };
        p.start();
        p
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "process already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open log");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .envs(std::mem::take(&mut self.env))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} (run `make build` first)", self.bin.display()));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// If the process exited although nobody killed it, reaps it (so it
    /// can be restarted) and returns how it ended.
    fn reap_crashed(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }
}

/// A process left running is killed with its handle (a cluster that fails
/// to start part-way leaves nothing behind).
impl Drop for Proc {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill();
    }
}

/// A running local cluster. Dropping it kills every process.
pub struct Cluster {
    root: PathBuf,
    keep: bool,
    /// PD members and their client addresses (`host:port`).
    pds: Vec<Proc>,
    pd_addrs: Vec<String>,
    /// Network host of the first PD member (the nodes come first).
    first_pd_host: usize,
    /// etcd members holding PD's metadata (`pd_etcd`) and their client ports.
    etcds: Vec<Proc>,
    etcd_ports: Vec<u16>,
    nodes: Vec<Proc>,
    node_addrs: Vec<String>,
    status_addrs: Vec<String>,
    node_args: Vec<String>,
    /// Dropped after the processes are killed (fields drop after `drop`).
    net: Option<Network>,
}

/// Directory holding the binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MNEMO_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/release/deps/test-xxxx → target/release
    let dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// PD's client and peer ports inside a member's own namespace.
const PD_CLIENT_PORT: u16 = 2379;
const PD_PEER_PORT: u16 = 2380;

/// A loopback port nobody listens on right now, never handed out twice by
/// this process. Ports come from 10000–31999, below the kernel's ephemeral
/// range, so an outgoing connection cannot grab one between our check and
/// the child's bind; each test process starts at its own offset.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ =
        NEXT.compare_exchange(u32::MAX, (std::process::id() * 97) % SPAN, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        // Any address: etcd binds the bridge's, PD members their own.
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// Starts a three-member etcd on `host` (loopback, or the bridge's address
/// in the root namespace) under `root/etcd*` (Debian's `etcd-server`) and
/// waits until every member is healthy; returns the processes and their
/// client ports.
fn start_etcd(root: &Path, host: &str) -> (Vec<Proc>, Vec<u16>) {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("etcd{i}=http://{host}:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let token = format!("mnemo-{}-{}", std::process::id(), ports[0].0);
    let mut procs = Vec::new();
    let mut endpoints = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let (client_url, peer_url) = (format!("http://{host}:{client}"), format!("http://{host}:{peer}"));
        let args: Vec<String> = [
            "--name",
            &format!("etcd{i}"),
            "--data-dir",
            &root.join(format!("etcd{i}")).display().to_string(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &initial,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &token,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        procs.push(Proc::spawn(Path::new("etcd"), &args, &root.join(format!("etcd{i}.log"))));
        endpoints.push(client_url);
    }
    for url in &endpoints {
        wait_for(&format!("etcd at {url} to be healthy"), Duration::from_secs(30), || {
            let answer = ureq::get(&format!("{url}/health")).timeout(Duration::from_secs(2)).call().ok()?;
            answer.into_string().ok()?.contains("\"true\"").then_some(())
        });
    }
    (procs, ports.iter().map(|(client, _)| *client).collect())
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Cluster {
    /// Starts PD and `cfg.nodes` nodes and waits until PD answers HTTP.
    pub fn start(cfg: ClusterConfig) -> Cluster {
        let (root, keep) = match &cfg.root {
            Some(r) => {
                std::fs::create_dir_all(r).expect("create cluster root");
                (r.clone(), true)
            }
            None => (
                tempfile::Builder::new().prefix("mnemo-cluster-").tempdir().expect("tempdir").keep(),
                std::env::var("MNEMO_KEEP_TEST_DATA").is_ok(),
            ),
        };
        // Hosts n1…, then pd1…: node i (0-based) is host i, PD member j host nodes + j.
        let members = cfg.pd_members.max(1);
        let net = cfg.netns.then(|| {
            let names: Vec<String> = (1..=cfg.nodes)
                .map(|i| format!("n{i}"))
                .chain((1..=members).map(|j| format!("pd{j}")))
                .collect();
            Network::create(&names).unwrap_or_else(|e| panic!("network: {e}"))
        });
        let bins = bin_dir();
        std::fs::write(root.join("pd.toml"), &cfg.pd_toml).expect("write pd.toml");
        // In its own namespace a member has its own address, so fixed ports do.
        let pd_urls: Vec<(String, String)> = (0..members)
            .map(|j| match &net {
                Some(net) => {
                    let ip = net.host_ip(cfg.nodes + j);
                    (format!("{ip}:{PD_CLIENT_PORT}"), format!("{ip}:{PD_PEER_PORT}"))
                }
                None => (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())),
            })
            .collect();
        let initial = pd_urls
            .iter()
            .enumerate()
            .map(|(j, (_, peer))| format!("pd{}=http://{peer}", j + 1))
            .collect::<Vec<_>>()
            .join(",");
        let etcd_host = net.as_ref().map_or("127.0.0.1".to_string(), |n| n.gateway_ip().to_string());
        let (etcds, etcd_ports) =
            if cfg.pd_etcd { start_etcd(&root, &etcd_host) } else { (Vec::new(), Vec::new()) };
        let mut pds = Vec::new();
        let mut pd_addrs = Vec::new();
        for (j, (client, peer)) in pd_urls.iter().enumerate() {
            let name = format!("pd{}", j + 1);
            let pd_bin = bins.join("mnemo-pd").display().to_string();
            let mut pd_args: Vec<String> = match &net {
                Some(net) => net.exec_prefix(cfg.nodes + j).into_iter().skip(1).chain([pd_bin]).collect(),
                None => Vec::new(),
            };
            pd_args.extend([
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                root.join(&name).display().to_string(),
                "--client-urls".into(),
                format!("http://{client}"),
                "--peer-urls".into(),
                format!("http://{peer}"),
                "--config".into(),
                root.join("pd.toml").display().to_string(),
            ]);
            if cfg.pd_etcd {
                let endpoints: Vec<String> =
                    etcd_ports.iter().map(|p| format!("http://{etcd_host}:{p}")).collect();
                pd_args.extend([
                    "--backend".into(),
                    "etcd".into(),
                    "--etcd-endpoints".into(),
                    endpoints.join(","),
                ]);
            } else {
                pd_args.extend(["--initial-cluster".into(), initial.clone()]);
            }
            let program = match &net {
                Some(_) => PathBuf::from("ip"),
                None => bins.join("mnemo-pd"),
            };
            pds.push(Proc::spawn(&program, &pd_args, &root.join(format!("{name}.log"))));
            pd_addrs.push(client.clone());
        }
        let mut cluster = Cluster {
            root,
            keep,
            pds,
            pd_addrs,
            first_pd_host: cfg.nodes,
            etcds,
            etcd_ports,
            nodes: Vec::new(),
            node_addrs: Vec::new(),
            status_addrs: Vec::new(),
            node_args: cfg.node_args.clone(),
            net,
        };
        cluster.wait_pd_healthy();
        // Test clusters move regions at full speed: PD's store limit
        // (15 peers per store and minute) would make every repair and
        // rebalance in a test take minutes.
        wait_for("PD to lift the store limits", Duration::from_secs(30), || {
            cluster.pd_post("/pd/api/v1/stores/limit", serde_json::json!({ "rate": 100_000.0 })).ok()
        });
        std::fs::write(cluster.root.join("node.toml"), with_capacity(&cfg.node_toml))
            .expect("write node.toml");
        for i in 1..=cfg.nodes {
            cluster.add_node(i, cfg.node_labels.get(i - 1).cloned());
        }
        cluster
    }

    fn add_node(&mut self, i: usize, labels: Option<String>) {
        // In its own namespace a node has its own address, so fixed ports do.
        let (addr, status) = match &self.net {
            Some(net) => (format!("{}:20160", net.host_ip(i - 1)), format!("{}:20180", net.host_ip(i - 1))),
            None => (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())),
        };
        let node_bin = bin_dir().join("mnemo-node").display().to_string();
        let mut args = match &self.net {
            Some(net) => net.exec_prefix(i - 1).into_iter().skip(1).chain([node_bin]).collect(),
            None => Vec::new(),
        };
        args.extend([
            "--pd".into(),
            self.pd_addrs.join(","),
            "--addr".into(),
            addr.clone(),
            "--status-addr".into(),
            status.clone(),
            "--data-dir".into(),
            self.root.join(format!("n{i}")).display().to_string(),
            "--config".into(),
            self.root.join("node.toml").display().to_string(),
        ]);
        args.extend(self.node_args.iter().cloned());
        if let Some(l) = labels {
            args.extend(["--labels".to_string(), l]);
        }
        let program = match &self.net {
            Some(_) => PathBuf::from("ip"),
            None => bin_dir().join("mnemo-node"),
        };
        let p = Proc::spawn(&program, &args, &self.root.join(format!("n{i}.log")));
        self.nodes.push(p);
        self.node_addrs.push(addr);
        self.status_addrs.push(status);
    }

    /// The status (HTTP) address of node `i` (0-based).
    pub fn node_status_addr(&self, i: usize) -> &str {
        &self.status_addrs[i]
    }

    /// True if nodes run in network namespaces, so links can be cut.
    pub fn can_partition(&self) -> bool {
        self.net.is_some()
    }

    /// Cuts links: node `i` drops every packet from the nodes in
    /// `grudge[i]`. Replaces any earlier partition. Panics without namespaces.
    pub fn partition(&self, grudge: &[Vec<usize>]) -> Result<(), String> {
        self.net.as_ref().expect("partitions need ClusterConfig::netns").partition(grudge)
    }

    /// Cuts node `i` off from every PD member's client port (adds to other
    /// cuts; needs namespaces).
    pub fn cut_from_pd(&self, i: usize) -> Result<(), String> {
        let net = self.net.as_ref().ok_or("cuts need ClusterConfig::netns")?;
        for j in 0..self.pds.len() {
            net.cut_port_out(i, net.host_ip(self.pd_host(j)), PD_CLIENT_PORT)?;
        }
        Ok(())
    }

    /// Makes node `i`'s gRPC port unreachable for clients (adds to other
    /// cuts; needs namespaces). Other nodes and its status port still reach it.
    pub fn cut_from_clients(&self, i: usize) -> Result<(), String> {
        let port = self.node_addrs[i]
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or("node address has no port")?;
        self.net.as_ref().ok_or("cuts need ClusterConfig::netns")?.cut_port_in(i, port)
    }

    /// Partitions PD member `i` from the other members, both ways, and from
    /// etcd when PD's metadata lives there; nodes and clients still reach
    /// it (adds to other cuts; needs namespaces).
    pub fn cut_pd_member(&self, i: usize) -> Result<(), String> {
        let net = self.net.as_ref().ok_or("cuts need ClusterConfig::netns")?;
        let me = self.pd_host(i);
        for other in (0..self.pds.len()).filter(|&j| j != i).map(|j| self.pd_host(j)) {
            net.drop_from(me, other)?;
            net.drop_from(other, me)?;
        }
        for &port in &self.etcd_ports {
            net.cut_port_out(me, net.gateway_ip(), port)?;
        }
        Ok(())
    }

    /// The network host of PD member `j` (after the nodes).
    fn pd_host(&self, j: usize) -> usize {
        self.first_pd_host + j
    }

    /// Removes every cut (no-op without namespaces).
    pub fn heal_network(&self) -> Result<(), String> {
        self.net.as_ref().map_or(Ok(()), Network::heal)
    }

    /// The first PD member's client endpoint (`host:port`); with one
    /// member, PD's.
    pub fn pd_endpoint(&self) -> String {
        self.pd_addrs[0].clone()
    }

    /// Every PD member's client endpoint.
    pub fn pd_endpoints(&self) -> Vec<String> {
        self.pd_addrs.clone()
    }

    /// The client URLs of the etcd started for PD (`pd_etcd`; else empty).
    pub fn etcd_endpoints(&self) -> Vec<String> {
        let host = self.net.as_ref().map_or("127.0.0.1".to_string(), |n| n.gateway_ip().to_string());
        self.etcd_ports.iter().map(|p| format!("http://{host}:{p}")).collect()
    }

    /// Number of PD members (running or not).
    pub fn pd_member_count(&self) -> usize {
        self.pds.len()
    }

    /// The PD member that serves as leader now (it says so itself, `GET
    /// /pd/api/v1/raft`), if any. A stopped member counts as not serving.
    pub fn pd_leader(&self) -> Option<usize> {
        (0..self.pds.len())
            .filter(|i| self.pds[*i].is_running())
            .find(|&i| self.pd_member_serving(i) == Some(true))
    }

    /// Whether PD member `i` says it serves as leader (None: no answer
    /// within 300 ms).
    pub fn pd_member_serving(&self, i: usize) -> Option<bool> {
        self.pd_member_raft(i, Duration::from_millis(300))?["serving"].as_bool()
    }

    /// What PD member `i` says of its raft group (`GET /pd/api/v1/raft`:
    /// serving, term, applied and first index, ...), if it answers within
    /// `timeout`.
    pub fn pd_member_raft(&self, i: usize, timeout: Duration) -> Option<Value> {
        let url = format!("http://{}/pd/api/v1/raft", self.pd_addrs[i]);
        ureq::get(&url).timeout(timeout).call().ok()?.into_json().ok()
    }

    /// SIGKILLs PD member `i`.
    pub fn kill_pd_member(&mut self, i: usize) {
        self.pds[i].kill();
    }

    /// Restarts PD member `i` on its data directory (without waiting).
    pub fn restart_pd_member(&mut self, i: usize) {
        self.pds[i].start();
    }

    /// SIGSTOPs (`pause = true`) or SIGCONTs PD member `i`.
    pub fn pause_pd_member(&mut self, i: usize, pause: bool) {
        self.pds[i].signal(if pause { "-STOP" } else { "-CONT" });
    }

    /// The gRPC address of node `i` (0-based).
    pub fn node_addr(&self, i: usize) -> &str {
        &self.node_addrs[i]
    }

    /// Number of nodes (running or not).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Index of the node listening on `addr`.
    pub fn node_index(&self, addr: &str) -> Option<usize> {
        self.node_addrs.iter().position(|a| a == addr)
    }

    /// SIGKILLs node `i`.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Restarts node `i` on its data directory and ports.
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].start();
    }

    /// Restarts node `i` with crash points armed from its first instruction
    /// (`FAILPOINTS=spec`, e.g. `snapshot_apply_after_ingest=panic`); later
    /// restarts run without.
    pub fn restart_node_with_failpoints(&mut self, i: usize, spec: &str) {
        self.nodes[i].env = vec![("FAILPOINTS".into(), spec.into())];
        self.nodes[i].start();
    }

    /// Arms crash point `name` of running node `i` with `actions` (the node
    /// must run with `--enable-test-controls`).
    pub fn arm_crash_point(&self, i: usize, name: &str, actions: &str) -> Result<(), String> {
        let url = format!("http://{}/debug/fail/{name}", self.status_addrs[i]);
        match ureq::put(&url).timeout(Duration::from_secs(2)).send_string(actions) {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code, r)) => {
                Err(format!("{code}: {}", r.into_string().unwrap_or_default()))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Disarms crash point `name` of node `i` (best effort: it may be dead).
    pub fn disarm_crash_point(&self, i: usize, name: &str) {
        let url = format!("http://{}/debug/fail/{name}", self.status_addrs[i]);
        let _ = ureq::delete(&url).timeout(Duration::from_secs(2)).call();
    }

    /// The value of metric `name` on node `i`'s `/metrics` (None if the
    /// node does not answer or has no such metric).
    pub fn node_metric(&self, i: usize, name: &str) -> Option<f64> {
        let url = format!("http://{}/metrics", self.status_addrs[i]);
        let text = ureq::get(&url).timeout(Duration::from_secs(2)).call().ok()?.into_string().ok()?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Node `i`'s region hashes (`GET /debug/region-hashes`; the node must
    /// run with `--enable-test-controls`), or None if it does not answer.
    pub fn node_region_hashes(&self, i: usize) -> Option<Vec<Value>> {
        let url = format!("http://{}/debug/region-hashes", self.status_addrs[i]);
        ureq::get(&url).timeout(Duration::from_secs(10)).call().ok()?.into_json().ok()
    }

    /// Resident memory of node `i`'s process in bytes (Linux), if it runs.
    pub fn node_rss_bytes(&self, i: usize) -> Option<u64> {
        let pid = self.nodes[i].child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    }

    /// Freezes node `i` (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn pause_node(&mut self, i: usize) {
        self.nodes[i].signal("-STOP");
    }

    /// Thaws node `i` (SIGCONT).
    pub fn resume_node(&mut self, i: usize) {
        self.nodes[i].signal("-CONT");
    }

    /// True if node `i` runs.
    pub fn node_running(&self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// Nodes that exited on their own since the last call (not killed by
    /// [`Cluster::kill_node`]), with their exit status; they are reaped and
    /// can be restarted.
    pub fn reap_crashed_nodes(&mut self) -> Vec<(usize, std::process::ExitStatus)> {
        (0..self.nodes.len()).filter_map(|i| Some((i, self.nodes[i].reap_crashed()?))).collect()
    }

    /// SIGKILLs every PD member.
    pub fn kill_pd(&mut self) {
        self.pds.iter_mut().for_each(Proc::kill);
    }

    /// Restarts the PD members that are down, on their data directories,
    /// and waits until one serves as leader.
    pub fn restart_pd(&mut self) {
        self.pds.iter_mut().filter(|p| !p.is_running()).for_each(Proc::start);
        self.wait_pd_healthy();
    }

    /// Restarts the PD members that are down with crash points armed
    /// (`FAILPOINTS=spec`), without waiting: they may die at once.
    pub fn restart_pd_with_failpoints(&mut self, spec: &str) {
        for p in self.pds.iter_mut().filter(|p| !p.is_running()) {
            p.env = vec![("FAILPOINTS".into(), spec.into())];
            p.start();
        }
    }

    /// If a PD member exited on its own, reaps it (so it can be restarted)
    /// and returns how it ended.
    pub fn reap_crashed_pd(&mut self) -> Option<std::process::ExitStatus> {
        self.pds.iter_mut().find_map(Proc::reap_crashed)
    }

    /// True if any PD member runs.
    pub fn pd_running(&self) -> bool {
        self.pds.iter().any(Proc::is_running)
    }

    /// The client address of a running PD member (followers forward the
    /// HTTP API to the leader), the first one if none runs.
    fn pd_http_addr(&self) -> &str {
        let i = (0..self.pds.len()).find(|i| self.pds[*i].is_running()).unwrap_or(0);
        &self.pd_addrs[i]
    }

    /// GET a PD HTTP API path, as JSON (None on any failure).
    pub fn pd_get(&self, path: &str) -> Option<Value> {
        let url = format!("http://{}{}", self.pd_http_addr(), path);
        ureq::get(&url).timeout(Duration::from_secs(2)).call().ok()?.into_json().ok()
    }

    /// Waits until a PD member serves as leader.
    pub fn wait_pd_healthy(&self) {
        wait_for("a PD member to serve as leader", Duration::from_secs(30), || self.pd_leader());
    }

    /// POSTs JSON to a PD HTTP API path; returns the response body.
    pub fn pd_post(&self, path: &str, body: Value) -> Result<String, String> {
        let url = format!("http://{}{}", self.pd_http_addr(), path);
        match ureq::post(&url).timeout(Duration::from_secs(5)).send_json(body) {
            Ok(r) => r.into_string().map_err(|e| e.to_string()),
            Err(ureq::Error::Status(code, r)) => {
                Err(format!("{code}: {}", r.into_string().unwrap_or_default()))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Asks PD to split the regions containing `keys` at those keys
    /// (`POST /pd/api/v1/regions/split`); the splits follow asynchronously.
    pub fn split_at(&self, keys: &[Vec<u8>]) -> Result<String, String> {
        let hex: Vec<String> = keys.iter().map(|k| k.iter().map(|b| format!("{b:02x}")).collect()).collect();
        self.pd_post("/pd/api/v1/regions/split", serde_json::json!({ "split_keys": hex }))
    }

    /// Region boundaries (start keys) as PD lists them.
    pub fn region_starts(&self) -> std::collections::HashSet<Vec<u8>> {
        self.regions().iter().map(|r| unhex(r["start_key"].as_str().unwrap_or(""))).collect()
    }

    /// DELETEs a PD HTTP API path.
    pub fn pd_delete(&self, path: &str) -> Result<(), String> {
        let url = format!("http://{}{}", self.pd_http_addr(), path);
        ureq::delete(&url).timeout(Duration::from_secs(5)).call().map(|_| ()).map_err(|e| e.to_string())
    }

    /// Stores as PD's HTTP API lists them (`{"store":…, "status":…}` each).
    pub fn stores(&self) -> Vec<Value> {
        self.pd_get("/pd/api/v1/stores")
            .and_then(|v| v.get("stores").and_then(|s| s.as_array().cloned()))
            .unwrap_or_default()
    }

    /// The store id of node `i`, from PD.
    pub fn store_id_of(&self, i: usize) -> Option<u64> {
        let addr = &self.node_addrs[i];
        self.stores()
            .iter()
            .find(|s| s["store"]["address"].as_str() == Some(addr))
            .and_then(|s| s["store"]["id"].as_u64())
    }

    /// Regions as PD's HTTP API lists them.
    pub fn regions(&self) -> Vec<Value> {
        self.pd_get("/pd/api/v1/regions")
            .and_then(|v| v.get("regions").and_then(|r| r.as_array().cloned()))
            .unwrap_or_default()
    }

    /// Checks that PD's regions tile the key space: sorted by start key, the
    /// first starts at "", each ends where the next starts, the last ends at
    /// "". Returns a description of the first defect.
    pub fn check_tiling(regions: &[Value]) -> Result<(), String> {
        let mut rs: Vec<(Vec<u8>, Vec<u8>, u64)> = regions
            .iter()
            .map(|r| {
                (
                    unhex(r["start_key"].as_str().unwrap_or("")),
                    unhex(r["end_key"].as_str().unwrap_or("")),
                    r["id"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        rs.sort();
        let first = rs.first().ok_or("no regions")?;
        if !first.0.is_empty() {
            return Err(format!("first region {} starts at {:?}", first.2, first.0));
        }
        for w in rs.windows(2) {
            if w[0].1 != w[1].0 {
                return Err(format!(
                    "region {} ends at {:?} but region {} starts at {:?}",
                    w[0].2, w[0].1, w[1].2, w[1].0
                ));
            }
        }
        let last = rs.last().expect("non-empty");
        if !last.1.is_empty() {
            return Err(format!("last region {} ends at {:?}", last.2, last.1));
        }
        Ok(())
    }

    /// Waits until every region has `replicas` voters on distinct stores and
    /// a leader; returns the regions.
    pub fn wait_replicated(&self, replicas: usize, timeout: Duration) -> Vec<Value> {
        wait_for(&format!("every region to have {replicas} voters and a leader"), timeout, || {
            let regions = self.regions();
            let ok = !regions.is_empty()
                && regions.iter().all(|r| {
                    let peers = r["peers"].as_array().cloned().unwrap_or_default();
                    let voters: std::collections::HashSet<u64> = peers
                        .iter()
                        .filter(|p| p["role_name"].as_str().unwrap_or("Voter") == "Voter")
                        .filter_map(|p| p["store_id"].as_u64())
                        .collect();
                    voters.len() == replicas
                        && peers.len() == replicas
                        && r["leader"]["store_id"].as_u64().unwrap_or(0) != 0
                });
            ok.then_some(regions)
        })
    }

    /// Store id → address, from PD.
    pub fn store_address(&self, store_id: u64) -> Option<String> {
        let v = self.pd_get(&format!("/pd/api/v1/store/{store_id}"))?;
        v["store"]["address"].as_str().map(str::to_string)
    }

    /// Index of the node holding the leader of the region containing `key`.
    pub fn leader_node_of(&self, key: &[u8]) -> Option<usize> {
        let region = self.regions().into_iter().find(|r| {
            let start = unhex(r["start_key"].as_str().unwrap_or(""));
            let end = unhex(r["end_key"].as_str().unwrap_or(""));
            key >= start.as_slice() && (end.is_empty() || key < end.as_slice())
        })?;
        let store = region["leader"]["store_id"].as_u64()?;
        self.node_index(&self.store_address(store)?)
    }

    /// The cluster's root directory (logs: `pd1.log`, `n1.log`, ...).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Decodes PD's hex key encoding (either case); invalid input decodes as empty.
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.signal("-CONT");
            n.kill();
        }
        self.pds.iter_mut().for_each(Proc::kill);
        self.etcds.iter_mut().for_each(Proc::kill);
        if self.keep || std::thread::panicking() {
            eprintln!("cluster data and logs kept in {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Test clusters share this machine's disk, whose used share may be above
/// PD's `low-space-ratio` because of other files: every store would count
/// as low on space and get no new replicas. Each node reports a 10 GiB
/// capacity of its own instead (`raftstore.capacity`), unless the test set one.
fn with_capacity(node_toml: &str) -> String {
    if node_toml.lines().any(|l| l.trim_start().starts_with("capacity")) {
        return node_toml.to_string();
    }
    match node_toml.find("[raftstore]\n") {
        Some(i) => {
            let at = i + "[raftstore]\n".len();
            format!("{}capacity = \"10GiB\"\n{}", &node_toml[..at], &node_toml[at..])
        }
        None => format!("{node_toml}\n[raftstore]\ncapacity = \"10GiB\"\n"),
    }
}
