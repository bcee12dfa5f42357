//! Hosts with their own IP addresses on one machine: one network namespace
//! per host (each storage node and each PD member), joined to a bridge in
//! the root namespace, and iptables rules inside each namespace to cut
//! links (network partitions).
//!
//! Layout of network number `k` (0..64, one per concurrent run), hosts
//! named by the caller (the cluster launcher: `n1`…, then `pd1`…):
//!
//! ```text
//!   root namespace: bridge mnbr{k} 10.200.{k}.1/24  ← clients, the harness (and etcd)
//!     ├─ veth mnv{k}-1 ⇄ eth0 in namespace mnemo{k}-{name of host 1}: 10.200.{k}.11
//!     ├─ veth mnv{k}-2 ⇄ eth0 in namespace mnemo{k}-{name of host 2}: 10.200.{k}.12
//!     └─ ...
//! ```
//!
//! A partition is a *grudge*: for each host, the hosts whose packets it
//! drops (`iptables -A INPUT -s <ip> -j DROP` in its namespace); a grudge
//! held by one side only is a one-way partition. Cuts of one service exist
//! too: a host that cannot reach another host's port
//! ([`Network::cut_port_out`], e.g. a node cut off from PD) and a host the
//! root namespace (the clients) cannot reach on one port
//! ([`Network::cut_port_in`]; its other ports stay open).
//!
//! The network number is claimed with an exclusive lock on
//! `/tmp/mnemo-netns-{k}.lock`, held while the [`Network`] lives; the kernel
//! drops it when the process dies, so a crashed run's leftovers (namespaces,
//! bridge, the FORWARD rule) are removed by the next run that claims `k`.
//! Docker sets the root FORWARD policy to DROP and bridged packets go through
//! it (br_netfilter), so the bridge gets an ACCEPT rule for its own traffic.
//!
//! Needs root (CAP_NET_ADMIN), `ip` (iproute2) and `iptables`.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Number of network numbers (so at most this many concurrent runs).
const NETWORKS: u32 = 64;

/// A bridge and one namespace per host. Dropping it removes everything.
pub struct Network {
    k: u32,
    /// Host names (namespace `mnemo{k}-{name}`), in address order.
    names: Vec<String>,
    _lock: File,
}

/// Runs a command, returning its stderr on failure.
fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// True if this process can create network namespaces (root with `ip` and
/// `iptables` installed).
pub fn available() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    root && run(&["ip", "-V"]).is_ok() && run(&["iptables", "--version"]).is_ok()
}

impl Network {
    /// Claims a free network number and creates one namespace per host
    /// name (host `i` is `names[i]`).
    pub fn create(names: &[String]) -> Result<Network, String> {
        assert!(names.len() < 200, "at most 199 hosts");
        for k in 0..NETWORKS {
            let lock = File::create(format!("/tmp/mnemo-netns-{k}.lock")).map_err(|e| e.to_string())?;
            if lock.try_lock().is_err() {
                continue;
            }
            let net = Network { k, names: names.to_vec(), _lock: lock };
            net.remove_leftovers();
            net.build()?;
            return Ok(net);
        }
        Err(format!("all {NETWORKS} network numbers are in use"))
    }

    fn bridge(&self) -> String {
        format!("mnbr{}", self.k)
    }

    /// The namespace of host `i` (0-based).
    pub fn namespace(&self, i: usize) -> String {
        format!("mnemo{}-{}", self.k, self.names[i])
    }

    fn veth(&self, i: usize) -> String {
        format!("mnv{}-{}", self.k, i + 1)
    }

    /// The bridge's address in the root namespace (clients and etcd bind here).
    pub fn gateway_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.k as u8, 1)
    }

    /// The address of host `i` (0-based).
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.k as u8, 11 + i as u8)
    }

    /// The command prefix that runs a program inside host `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.namespace(i)]
    }

    fn forward_rule(&self) -> Vec<String> {
        let b = self.bridge();
        ["FORWARD", "-i", &b, "-o", &b, "-j", "ACCEPT"].iter().map(|s| s.to_string()).collect()
    }

    fn build(&self) -> Result<(), String> {
        let b = self.bridge();
        let gw = format!("{}/24", self.gateway_ip());
        run(&["ip", "link", "add", &b, "type", "bridge"])?;
        run(&["ip", "addr", "add", &gw, "dev", &b])?;
        run(&["ip", "link", "set", &b, "up"])?;
        let rule = self.forward_rule();
        let mut insert = vec!["iptables", "-w", "-I"];
        insert.extend(rule.iter().map(String::as_str));
        run(&insert)?;
        for i in 0..self.names.len() {
            let (ns, veth) = (self.namespace(i), self.veth(i));
            let ip = format!("{}/24", self.host_ip(i));
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run(&["ip", "link", "set", &veth, "master", &b, "up"])?;
            run(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &ip, "dev", "eth0"])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up"])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Removes whatever an earlier holder of this network number left.
    fn remove_leftovers(&self) {
        let prefix = format!("mnemo{}-", self.k);
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                if name.starts_with(&prefix) {
                    // Deleting a namespace does not stop its processes (a
                    // killed run's nodes): kill them first.
                    if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                            let _ = run(&["kill", "-9", pid]);
                        }
                    }
                    let _ = run(&["ip", "netns", "del", name]);
                }
            }
        }
        // A namespace is torn down asynchronously, and its veth ends with
        // it: delete our root-side ends explicitly, whichever still exist.
        let veth_prefix = format!("mnv{}-", self.k);
        if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                // "12: mnv0-3@if2: <...>": the name is the second field, before any '@'.
                let name = line.split_whitespace().nth(1).unwrap_or("").trim_end_matches(':');
                let name = name.split('@').next().unwrap_or("");
                if name.starts_with(&veth_prefix) {
                    let _ = run(&["ip", "link", "del", name]);
                }
            }
        }
        let rule = self.forward_rule();
        let mut delete = vec!["iptables", "-w", "-D"];
        delete.extend(rule.iter().map(String::as_str));
        while run(&delete).is_ok() {}
        let _ = run(&["ip", "link", "del", &self.bridge()]);
    }

    /// Applies a grudge: host `i` drops every packet from the hosts in
    /// `grudge[i]`. Replaces any earlier cut, on every host.
    pub fn partition(&self, grudge: &[Vec<usize>]) -> Result<(), String> {
        self.heal()?;
        for (i, enemies) in grudge.iter().enumerate() {
            for &j in enemies {
                self.drop_from(i, j)?;
            }
        }
        Ok(())
    }

    /// Host `i` drops every packet from host `j`. Adds to other cuts.
    pub fn drop_from(&self, i: usize, j: usize) -> Result<(), String> {
        let src = self.host_ip(j).to_string();
        run(&[
            "ip",
            "netns",
            "exec",
            &self.namespace(i),
            "iptables",
            "-w",
            "-A",
            "INPUT",
            "-s",
            &src,
            "-j",
            "DROP",
        ])
    }

    /// Host `i` drops what it sends to `dst:port` (another host's, or the
    /// root namespace's `gateway_ip`): it can no longer reach that service.
    /// Adds to other cuts.
    pub fn cut_port_out(&self, i: usize, dst: Ipv4Addr, port: u16) -> Result<(), String> {
        let (dst, port) = (dst.to_string(), port.to_string());
        let ns = self.namespace(i);
        run(&[
            "ip", "netns", "exec", &ns, "iptables", "-w", "-A", "OUTPUT", "-d", &dst, "-p", "tcp", "--dport",
            &port, "-j", "DROP",
        ])
    }

    /// Host `i` drops what the root namespace (the clients) sends to its
    /// `port` (e.g. its gRPC port). Adds to other cuts.
    pub fn cut_port_in(&self, i: usize, port: u16) -> Result<(), String> {
        let (gw, port) = (self.gateway_ip().to_string(), port.to_string());
        let ns = self.namespace(i);
        run(&[
            "ip", "netns", "exec", &ns, "iptables", "-w", "-A", "INPUT", "-s", &gw, "-p", "tcp", "--dport",
            &port, "-j", "DROP",
        ])
    }

    /// Removes every cut, on every host.
    pub fn heal(&self) -> Result<(), String> {
        for i in 0..self.names.len() {
            for chain in ["INPUT", "OUTPUT"] {
                run(&["ip", "netns", "exec", &self.namespace(i), "iptables", "-w", "-F", chain])?;
            }
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.remove_leftovers();
    }
}
