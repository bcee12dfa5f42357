//! `--backend etcd`: PD's metadata and its leader election in an existing
//! etcd cluster, for teams that already run one.
//!
//! The same [`Cluster`](crate::cluster::Cluster) runs on top; only the two
//! seams change: this module's [`EtcdHandle`] is the [`Replicator`] (where
//! commands become durable) and the [`Leadership`] (who serves).
//!
//! ```text
//!  {prefix}/meta/pd/...        the metadata records (layout: meta/storage.rs), whole values
//!  {prefix}/leader             the leader's Member (JSON), attached to its leader lease
//!  {prefix}/members/{id:016x}  every member that ever registered (JSON), until deleted
//!  {prefix}/alive/{id:016x}    "" on each running member's own lease: who is up
//!  {prefix}/transfer           {id:016x} of the member a leader hands over to (short lease)
//! ```
//!
//! - **Election** (`session.rs`): a member that finds no leader key creates
//!   it in a transaction (`create_revision == 0`) on a lease of
//!   `election-interval` (whole seconds, at least etcd's minimum), renews
//!   the lease every tick (each renewal on a stream of its own, so its
//!   answer is never an older renewal's), and serves until `sent + TTL -
//!   margin` of its last answered renewal — etcd restarts the TTL only when
//!   the renewal arrives, so no other member can hold the key while this
//!   one still serves. The key's create revision is the leader's *term*:
//!   unique and increasing.
//! - **Writes** (the [`Replicator`]): a command is staged on the leader's
//!   state machine exactly as the raft backend applies it, and rolled back
//!   at once to the records' previous values (readers never see a change
//!   etcd has not taken); the records it changes go to etcd in
//!   transactions guarded by `create_revision(leader) == term` (at most
//!   100 operations each), so a deposed leader's write fails instead of
//!   landing; then they are applied to memory. Writers are serialised
//!   (whole-value records must reach etcd in the order they were staged).
//!   When a guarded write fails or its fate is unknown, the member stops
//!   serving at once, gives up its lease, and reloads.
//! - **Followers and new leaders** (`sync.rs`): every member loads all
//!   records at one revision, then follows the metadata prefix with a watch
//!   (so followers answer `GET /config` and a new leader starts warm, as
//!   PD's region syncer keeps its followers). A member that wins reloads
//!   at a revision past its leader key before serving: everything its
//!   predecessors wrote is then in its state. A serving leader never
//!   reloads (its memory holds its own writes); a broken watch is only
//!   opened again.
//! - **Membership** is who runs against the same prefix: a member registers
//!   itself on start; `member delete` removes a member that no longer runs;
//!   there is nothing to add (start another `mnemo-pd --backend etcd`).

mod session;
mod sync;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::warn;

use crate::error::{Error, Result};
use crate::member::Member;
use crate::meta::{Command, Replicator, SharedMeta};
use crate::raft::{blocking, GroupStatus, Leadership, MemberChange};
use mnemo_engine::{WriteBatch, WriteOp};

/// How to reach etcd and how fast to fail over.
#[derive(Clone, Debug)]
pub struct EtcdSettings {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// This PD cluster's key prefix (`/mnemosyne`).
    pub prefix: String,
    /// How often the session renews leases and looks at the group.
    pub tick: Duration,
    /// Leader lease TTL asked of etcd (rounded up to whole seconds).
    pub election: Duration,
}

/// The keys of one PD cluster in etcd.
#[derive(Clone, Debug)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn meta_prefix(&self) -> Vec<u8> {
        format!("{}/meta/", self.prefix).into_bytes()
    }
    fn meta(&self, record: &[u8]) -> Vec<u8> {
        [self.meta_prefix().as_slice(), record].concat()
    }
    fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }
    fn transfer(&self) -> String {
        format!("{}/transfer", self.prefix)
    }
    fn members_prefix(&self) -> String {
        format!("{}/members/", self.prefix)
    }
    fn member(&self, id: u64) -> String {
        format!("{}{id:016x}", self.members_prefix())
    }
    fn alive_prefix(&self) -> String {
        format!("{}/alive/", self.prefix)
    }
    fn alive(&self, id: u64) -> String {
        format!("{}{id:016x}", self.alive_prefix())
    }
}

/// The end of the range of keys starting with `prefix` (etcd's
/// `--prefix`): the prefix with its last byte incremented.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What the session and the sync task know; read by [`Leadership::status`].
#[derive(Clone, Debug, Default)]
struct View {
    /// The leader key's holder (0: none).
    leader_id: u64,
    /// Create revision of this member's leader key; 0 unless it leads.
    term: i64,
    /// This member (leading) reloaded the metadata past its leader key.
    loaded: bool,
    /// Handing over to another member: no longer serving.
    transferring: bool,
    /// The leader lease surely holds until then.
    lease_until: Option<Instant>,
    /// Registered members.
    registered: BTreeMap<u64, Member>,
    /// Members whose liveness key exists.
    alive: Vec<u64>,
    /// The etcd revision the metadata was last followed to.
    synced_revision: i64,
    /// The leadership epoch of the last full load.
    loaded_epoch: u64,
}

/// What the session, the sync task and request threads share.
struct Shared {
    member: Member,
    sm: SharedMeta,
    keys: Keys,
    settings: EtcdSettings,
    client: Client,
    view: Mutex<View>,
    /// Writers (staging + the guarded write) and reloads, one at a time.
    writer: Mutex<()>,
    /// Bumped when this member's leadership begins or ends: the sync task
    /// reloads (a new leader must see everything; a deposed one may hold
    /// staged changes etcd refused).
    epoch: watch::Sender<u64>,
    /// A leader transfer asked for (target member id; 0: none).
    transfer_to: AtomicU64,
}

/// Operations per etcd transaction (etcd's `--max-txn-ops` is 128).
const MAX_TXN_OPS: usize = 100;

/// Record changes: key → new value (`None`: deleted).
type RecordChanges = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl Shared {
    /// Validates `cmd` against the state and returns the records it
    /// changes, leaving memory as it was: staged and then rolled back to
    /// the records' previous values under one lock, so no reader sees a
    /// change etcd has not taken yet. (Writers are serialised, so the next
    /// command is staged on top of this one once it is applied.)
    fn stage_aside(&self, cmd: &Command) -> Result<RecordChanges> {
        let mut sm = self.sm.lock();
        let mut wb = WriteBatch::new();
        sm.stage(cmd, &mut wb)?;
        let mut changes = Vec::with_capacity(wb.len());
        let mut before = Vec::with_capacity(wb.len());
        for op in wb.ops() {
            let (key, value) = match op {
                WriteOp::Put { key, value, .. } => (key, Some(value.clone())),
                WriteOp::Delete { key, .. } => (key, None),
                WriteOp::DeleteRange { .. } => unreachable!("the state machine deletes records one by one"),
            };
            // stage() does not write the engine: it still holds the old value.
            before.push((key.clone(), sm.record(key)?));
            changes.push((key.clone(), value));
        }
        for (key, value) in before.iter().rev() {
            sm.apply_record(key, value.as_deref())?;
        }
        Ok(changes)
    }

    /// The term this member may write in now.
    fn writable_term(&self) -> Result<i64> {
        let v = self.view.lock();
        let lease = v.lease_until.is_some_and(|t| Instant::now() < t);
        if v.term != 0 && v.loaded && !v.transferring && lease {
            Ok(v.term)
        } else {
            Err(Error::NotLeader("this PD member does not lead".into()))
        }
    }

    /// Ends this member's leadership (if `term` is still its term): it stops
    /// serving now; the session revokes the lease; the state reloads.
    fn step_down(&self, term: i64, why: &str) {
        let mut v = self.view.lock();
        if v.term == 0 || v.term != term {
            return;
        }
        warn!(term, reason = why, "PD leadership (etcd) ended");
        v.term = 0;
        v.loaded = false;
        v.transferring = false;
        v.lease_until = None;
        if v.leader_id == self.member.member_id {
            v.leader_id = 0;
        }
        drop(v);
        self.epoch.send_modify(|e| *e += 1);
    }
}

/// The running etcd backend of one PD member; clones share it. Its tasks
/// run on a runtime of their own (request handlers block on etcd writes
/// from the main runtime's threads).
#[derive(Clone)]
pub struct EtcdHandle {
    shared: Arc<Shared>,
    rt: Arc<OwnRuntime>,
    stop: Arc<watch::Sender<bool>>,
    session: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// A runtime shut down without waiting when dropped.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl OwnRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("runtime until dropped").handle()
    }
}

/// Connects to etcd, checks that no running member uses this member's
/// identity, and starts the session and the metadata follower. `sm` is
/// replaced by what etcd holds.
pub async fn start(member: Member, sm: SharedMeta, settings: EtcdSettings) -> Result<EtcdHandle> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pd-etcd")
        .enable_all()
        .build()?;
    let rt = Arc::new(OwnRuntime(Some(rt)));
    let timeout = request_timeout(&settings);
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(settings.tick.max(Duration::from_millis(500)), timeout)
        // A request to an etcd member cut off from its quorum fails
        // instead of waiting (or watching) in silence.
        .with_require_leader(true);
    let endpoints = settings.endpoints.clone();
    let client = rt
        .handle()
        .spawn(async move { Client::connect(endpoints, Some(options)).await })
        .await
        .map_err(|e| Error::Config(e.to_string()))?
        .map_err(|e| Error::Config(format!("etcd-endpoints {:?}: {e}", settings.endpoints)))?;
    let keys = Keys { prefix: settings.prefix.clone() };
    let (epoch, _) = watch::channel(0);
    let shared = Arc::new(Shared {
        member,
        sm,
        keys,
        settings,
        client,
        view: Mutex::new(View::default()),
        writer: Mutex::new(()),
        epoch,
        transfer_to: AtomicU64::new(0),
    });
    // Refuse a second process with this identity before touching anything.
    let s = shared.clone();
    let joined = rt.handle().spawn(async move { session::check_identity(&s).await }).await;
    joined.map_err(|e| Error::Config(e.to_string()))??;
    // The first load, so the member starts with the metadata in memory.
    let s = shared.clone();
    let joined = rt.handle().spawn(async move { sync::reload(&s).await }).await;
    joined.map_err(|e| Error::Config(e.to_string()))??;
    let (stop, stopped) = watch::channel(false);
    let session = rt.handle().spawn(session::run(shared.clone(), stopped.clone()));
    rt.handle().spawn(sync::run(shared.clone(), stopped));
    Ok(EtcdHandle { shared, rt, stop: Arc::new(stop), session: Arc::new(Mutex::new(Some(session))) })
}

/// How long one etcd request may take before its fate counts as unknown.
fn request_timeout(settings: &EtcdSettings) -> Duration {
    (settings.election * 2).max(Duration::from_secs(3))
}

impl EtcdHandle {
    /// Stops serving now and tells the tasks to end (the session gives up
    /// the leases on its way out).
    pub fn signal_stop(&self) {
        let term = self.shared.view.lock().term;
        if term != 0 {
            self.shared.step_down(term, "stopping");
        }
        let _ = self.stop.send(true);
    }

    /// Stops the tasks; a leader gives up its lease first, so another
    /// member takes over without waiting for it to expire.
    pub async fn stop(&self) {
        self.signal_stop();
        let session = self.session.lock().take();
        if let Some(session) = session {
            let _ = tokio::time::timeout(
                request_timeout(&self.shared.settings) + Duration::from_secs(2),
                session,
            )
            .await;
        }
    }

    /// Runs `f` on the etcd runtime and waits for it on this thread
    /// (request handlers are synchronous).
    fn call<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.handle().spawn(async move {
            let _ = tx.send(f.await);
        });
        blocking(|| rx.recv_timeout(request_timeout(&self.shared.settings) + Duration::from_secs(1)))
            .map_err(|_| Error::NotLeader("etcd did not answer in time".into()))
    }
}

impl Leadership for EtcdHandle {
    fn status(&self) -> GroupStatus {
        let v = self.shared.view.lock();
        GroupStatus {
            term: v.term.max(0) as u64,
            leader_id: v.leader_id,
            is_leader: v.term != 0,
            caught_up: v.term != 0 && v.loaded,
            transferring: v.transferring,
            lease_until: v.lease_until,
            voters: v.registered.keys().copied().collect(),
            active_voters: v.alive.clone(),
            applied_index: v.synced_revision.max(0) as u64,
            first_index: 0,
            foreign_dropped: 0,
        }
    }

    fn transfer_leader(&self, member_id: u64) -> Result<()> {
        if !self.shared.view.lock().alive.contains(&member_id) {
            return Err(Error::InvalidArgument(format!("member {member_id:x} is not running")));
        }
        self.shared.transfer_to.store(member_id, Ordering::SeqCst);
        Ok(())
    }

    fn peer_infos(&self) -> BTreeMap<u64, Member> {
        self.shared.view.lock().registered.clone()
    }

    fn members_vote(&self) -> bool {
        false
    }

    fn change_member(&self, change: MemberChange) -> Result<()> {
        match change {
            MemberChange::Add(_) => Err(Error::InvalidArgument(
                "with backend etcd a member joins by starting `mnemo-pd --backend etcd` with the same \
                 etcd-endpoints and etcd-prefix; there is nothing to add"
                    .into(),
            )),
            MemberChange::Remove(id) => {
                if self.shared.view.lock().alive.contains(&id) {
                    return Err(Error::InvalidArgument(format!(
                        "member {id:x} is running: stop it before deleting it"
                    )));
                }
                let key = self.shared.keys.member(id);
                let mut client = self.shared.client.clone();
                self.call(async move { client.delete(key, None).await })?
                    .map_err(|e| Error::NotLeader(format!("etcd: {e}")))?;
                self.shared.view.lock().registered.remove(&id);
                Ok(())
            }
        }
    }
}

/// Stages each command on this member's state machine and writes the
/// records it changed to etcd, guarded by this member's leader key (see the
/// module docs). On [`Error::NotLeader`] the write may or may not have
/// landed; either way this member stopped serving and will reload.
impl Replicator for EtcdHandle {
    fn replicate(&mut self, cmd: Command) -> Result<()> {
        let shared = &self.shared;
        let _writer = blocking(|| shared.writer.lock());
        let term = shared.writable_term()?;
        let changes = shared.stage_aside(&cmd)?;
        if changes.is_empty() {
            return Ok(());
        }
        let ops: Vec<TxnOp> = changes
            .iter()
            .map(|(key, value)| match value {
                Some(v) => TxnOp::put(shared.keys.meta(key), v.clone(), None),
                None => TxnOp::delete(shared.keys.meta(key), None),
            })
            .collect();
        // etcd takes at most 128 operations per transaction by default (a
        // region swallowing many others deletes them all): one guarded
        // transaction per chunk. Should a later chunk fail, the member
        // reloads, as for any write of unknown fate.
        for chunk in ops.chunks(MAX_TXN_OPS) {
            let txn = Txn::new()
                .when([Compare::create_revision(shared.keys.leader(), CompareOp::Equal, term)])
                .and_then(chunk.to_vec());
            let mut client = shared.client.clone();
            match self.call(async move { client.txn(txn).await }) {
                Ok(Ok(resp)) if resp.succeeded() => {}
                Ok(Ok(_)) => {
                    shared.step_down(term, "a guarded write found another leader key");
                    return Err(Error::NotLeader("PD leadership (etcd) lost".into()));
                }
                Ok(Err(e)) => {
                    shared.step_down(term, "a write failed; its fate is unknown");
                    return Err(Error::NotLeader(format!("etcd: {e}")));
                }
                Err(e) => {
                    shared.step_down(term, "a write timed out; its fate is unknown");
                    return Err(e);
                }
            }
        }
        // Durable: now readers may see it.
        let mut sm = shared.sm.lock();
        for (key, value) in &changes {
            if let Err(e) = sm.apply_record(key, value.as_deref()) {
                drop(sm);
                shared.step_down(term, "a written record could not be applied");
                return Err(e);
            }
        }
        Ok(())
    }

    fn another(&self) -> Box<dyn Replicator> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_bound_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/m/meta/"), b"/m/meta0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        let keys = Keys { prefix: "/m".into() };
        assert_eq!(keys.member(0xab), "/m/members/00000000000000ab");
        assert_eq!(keys.meta(b"pd/cluster_id"), b"/m/meta/pd/cluster_id".to_vec());
    }
}
