//! This member's session with etcd, one round per tick: its registration,
//! its liveness lease, one consistent look at the group (members, who is
//! alive, the leader key, a pending handover), then either renewing its
//! leader lease or campaigning for the leader key. See the module docs of
//! `etcd` for the keys and why the lease makes a deposed leader stop
//! serving before another can start.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;
use tracing::{debug, info};

use super::{request_timeout, Shared};
use crate::error::{Error, Result};
use crate::member::Member;

/// A lease this member keeps alive.
struct KeptLease {
    id: i64,
    /// The TTL etcd granted (at least its minimum, whatever was asked).
    ttl: Duration,
}

impl KeptLease {
    async fn grant(client: &mut Client, ttl_secs: i64) -> std::result::Result<KeptLease, etcd_client::Error> {
        let granted = client.lease_grant(ttl_secs, None).await?;
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        Ok(KeptLease { id: granted.id(), ttl })
    }

    /// One renewal on a stream of its own, so the answer read is the
    /// answer to this request (a reply left over from a renewal that timed
    /// out would otherwise be taken for a fresh one, and the lease
    /// believed longer than etcd keeps it). `Ok(false)`: etcd says the
    /// lease is gone.
    async fn renew(&self, client: &mut Client) -> std::result::Result<bool, etcd_client::Error> {
        match client.lease_keep_alive(self.id).await {
            Ok(_) => Ok(true),
            Err(etcd_client::Error::LeaseKeepAliveError(e)) if e.contains("not found") => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// This member's leadership, as the session holds it.
struct Leading {
    term: i64,
    lease: KeptLease,
}

/// What one session keeps between rounds.
#[derive(Default)]
struct Session {
    registered: bool,
    alive: Option<KeptLease>,
    leading: Option<Leading>,
}

/// The group as one read saw it.
struct Group {
    registered: Vec<Member>,
    alive: Vec<u64>,
    /// The leader key's create revision and holder.
    leader: Option<(i64, Member)>,
    /// The member a handover names.
    transfer_to: Option<u64>,
}

/// Refuses to start while another running process has this member's
/// identity (same name and peer URL). A liveness key left by this member's
/// previous, killed process expires within its TTL, so wait that long.
pub(super) async fn check_identity(s: &Shared) -> Result<()> {
    let key = s.keys.alive(s.member.member_id);
    // etcd may grant more than was asked (its minimum TTL): wait for a
    // generous multiple, then refuse.
    let deadline =
        Instant::now() + request_timeout(&s.settings) + (lease_ttl(s) * 3).max(Duration::from_secs(15));
    let mut client = s.client.clone();
    loop {
        let found = client
            .get(key.clone(), None)
            .await
            .map_err(|e| Error::Config(format!("etcd-endpoints {:?}: {e}", s.settings.endpoints)))?;
        if found.kvs().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Config(format!(
                "a PD member called {} with peer URL {} is already running against etcd prefix {}",
                s.member.name, s.member.peer_url, s.keys.prefix
            )));
        }
        tokio::time::sleep(s.settings.tick).await;
    }
}

/// The TTL asked for leases: the election interval in whole seconds.
fn lease_ttl(s: &Shared) -> Duration {
    Duration::from_secs(s.settings.election.as_secs_f64().ceil().max(1.0) as u64)
}

/// Runs rounds until stopped; then gives up the leases (so the next
/// leader need not wait for them to expire).
pub(super) async fn run(s: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut session = Session::default();
    let timeout = request_timeout(&s.settings);
    while !*stopped.borrow() {
        tokio::select! {
            done = tokio::time::timeout(timeout, session.round(&s)) => match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "etcd session round failed"),
                Err(_) => debug!("etcd session round timed out"),
            },
            _ = stopped.changed() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(s.settings.tick) => {}
            _ = stopped.changed() => {}
        }
    }
    let mut client = s.client.clone();
    let leases = [session.leading.map(|l| l.lease.id), session.alive.map(|l| l.id)];
    for id in leases.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(id)).await;
    }
}

impl Session {
    async fn round(&mut self, s: &Shared) -> std::result::Result<(), etcd_client::Error> {
        let mut c = s.client.clone();
        let me = s.member.member_id;
        let ttl = lease_ttl(s).as_secs() as i64;
        if !self.registered {
            c.put(s.keys.member(me), to_json(&s.member), None).await?;
            self.registered = true;
        }
        let alive = match &self.alive {
            Some(lease) => lease.renew(&mut c).await.unwrap_or(false),
            None => false,
        };
        if !alive {
            let lease = KeptLease::grant(&mut c, ttl).await?;
            c.put(s.keys.alive(me), "", Some(PutOptions::new().with_lease(lease.id))).await?;
            self.alive = Some(lease);
        }

        let group = read_group(s, &mut c).await?;
        {
            let mut v = s.view.lock();
            v.registered = group.registered.iter().map(|m| (m.member_id, m.clone())).collect();
            v.alive = group.alive.clone();
            v.leader_id = group.leader.as_ref().map_or(0, |(_, m)| m.member_id);
        }

        if let Some(leading) = &mut self.leading {
            let term = leading.term;
            let holds = group.leader.as_ref().is_some_and(|(rev, m)| *rev == term && m.member_id == me);
            if s.view.lock().term != term || !holds {
                s.step_down(term, "the leader key is gone");
                let id = leading.lease.id;
                self.leading = None;
                let _ = c.lease_revoke(id).await;
                return Ok(());
            }
            let target = s.transfer_to.swap(0, Ordering::SeqCst);
            if target != 0 && target != me {
                s.view.lock().transferring = true;
                // The handover names its target for one TTL: the others
                // hold back meanwhile; a target that never campaigns
                // delays the next leader by that much only.
                let value = format!("{target:016x}");
                let hinted = async {
                    let hint = c.lease_grant(ttl, None).await?;
                    c.put(s.keys.transfer(), value, Some(PutOptions::new().with_lease(hint.id()))).await
                };
                if let Err(e) = hinted.await {
                    // Not handed over: serve on.
                    s.view.lock().transferring = false;
                    return Err(e);
                }
                s.step_down(term, "leadership handed over");
                let id = leading.lease.id;
                self.leading = None;
                c.lease_revoke(id).await?;
                return Ok(());
            }
            let sent = Instant::now();
            if leading.lease.renew(&mut c).await? {
                // etcd restarts the TTL when the renewal arrives, after
                // `sent`; the margin covers its expiry check's granularity.
                let margin = (s.settings.tick * 2).min(leading.lease.ttl / 4);
                let mut v = s.view.lock();
                if v.term == term {
                    v.lease_until = Some(sent + leading.lease.ttl - margin);
                }
            } else {
                s.step_down(term, "the leader lease expired");
                self.leading = None;
            }
            return Ok(());
        }

        // Not leading: a handover asked of this member is moot.
        s.transfer_to.store(0, Ordering::SeqCst);
        if group.leader.is_some() || group.transfer_to.is_some_and(|t| t != me) {
            return Ok(());
        }
        let sent = Instant::now();
        let lease = KeptLease::grant(&mut c, ttl).await?;
        let leader_key = s.keys.leader();
        let txn =
            Txn::new().when([Compare::create_revision(leader_key.clone(), CompareOp::Equal, 0)]).and_then([
                TxnOp::put(leader_key, to_json(&s.member), Some(PutOptions::new().with_lease(lease.id))),
            ]);
        let answer = match c.txn(txn).await {
            Ok(a) => a,
            Err(e) => {
                // It may have committed: give the key up rather than leave
                // it to block the election for a TTL.
                let _ = c.lease_revoke(lease.id).await;
                return Err(e);
            }
        };
        let term = answer.header().map_or(0, |h| h.revision());
        if !answer.succeeded() || term == 0 {
            let _ = c.lease_revoke(lease.id).await;
            return Ok(());
        }
        {
            let mut v = s.view.lock();
            v.term = term;
            v.loaded = false;
            v.transferring = false;
            v.lease_until = Some(sent + lease.ttl - (s.settings.tick * 2).min(lease.ttl / 4));
            v.leader_id = me;
        }
        // The sync task reloads past the new key before this member serves.
        s.epoch.send_modify(|e| *e += 1);
        info!(term, lease_ttl = ?lease.ttl, "won the PD leader key in etcd");
        if group.transfer_to == Some(me) {
            let _ = c.delete(s.keys.transfer(), None).await;
        }
        self.leading = Some(Leading { term, lease });
        Ok(())
    }
}

/// Members, liveness keys, the leader key and a handover, at one revision.
async fn read_group(s: &Shared, c: &mut Client) -> std::result::Result<Group, etcd_client::Error> {
    let prefixed = |p: String| TxnOp::get(p, Some(GetOptions::new().with_prefix()));
    let txn = Txn::new().and_then([
        prefixed(s.keys.members_prefix()),
        prefixed(s.keys.alive_prefix()),
        TxnOp::get(s.keys.leader(), None),
        TxnOp::get(s.keys.transfer(), None),
    ]);
    let answer = c.txn(txn).await?;
    let gets: Vec<_> = answer
        .op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect();
    let [members, alive, leader, transfer] = &gets[..] else {
        return Err(etcd_client::Error::InvalidArgs(format!(
            "a 4-read transaction gave {} answers",
            gets.len()
        )));
    };
    let hex_suffix = |key: &[u8]| {
        let text = std::str::from_utf8(key).ok()?;
        u64::from_str_radix(text.rsplit('/').next()?, 16).ok()
    };
    Ok(Group {
        registered: members.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect(),
        alive: alive.kvs().iter().filter_map(|kv| hex_suffix(kv.key())).collect(),
        leader: leader.kvs().first().and_then(|kv| {
            let m: Member = serde_json::from_slice(kv.value()).ok()?;
            Some((kv.create_revision(), m))
        }),
        transfer_to: transfer
            .kvs()
            .first()
            .and_then(|kv| u64::from_str_radix(std::str::from_utf8(kv.value()).ok()?, 16).ok()),
    })
}

fn to_json(m: &Member) -> Vec<u8> {
    serde_json::to_vec(m).expect("a member serializes")
}
