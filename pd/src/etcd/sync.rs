//! Following the metadata in etcd: load every record at one revision,
//! then apply the watch's changes in order (followers only: a leader's own
//! writes are already in its state). Reload when this member's leadership
//! begins (it must see everything before serving) or ends (it may hold
//! staged changes etcd refused), and when the watch breaks or was
//! compacted past.

use std::sync::Arc;

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{prefix_end, Shared};
use crate::error::{Error, Result};
use crate::meta::StateMachine;

/// Records per page of a full load.
const PAGE: i64 = 1000;

/// Runs until stopped: follow, and reload whenever following must restart.
pub(super) async fn run(s: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut epochs = s.epoch.subscribe();
    loop {
        let reason = follow(&s, &mut epochs, &mut stopped).await;
        if serving_own_writes(&s) {
            // A leader's memory is ahead of any load: reloading would
            // drop what it wrote after the load's revision. Watch again.
            debug!(%reason, "PD metadata watch restarts (leading: no reload)");
            tokio::select! {
                _ = tokio::time::sleep(s.settings.tick) => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        loop {
            if *stopped.borrow() {
                return;
            }
            debug!(%reason, "reloading PD metadata from etcd");
            match reload(&s).await {
                Ok(()) => break,
                Err(e) => warn!(error = %e, "reloading PD metadata from etcd failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(s.settings.tick) => {}
                _ = stopped.changed() => {}
            }
        }
    }
}

/// True while this member leads with its state loaded for the current
/// leadership: every metadata change since is its own write, already in
/// memory.
fn serving_own_writes(s: &Shared) -> bool {
    let v = s.view.lock();
    v.term != 0 && v.loaded && v.loaded_epoch == *s.epoch.borrow()
}

/// Loads every record at one revision and replaces the state machine with
/// them (runtime facts start over: heartbeats bring them back). Marks a
/// leading member loaded once the revision is past its leader key.
pub(super) async fn reload(s: &Arc<Shared>) -> Result<()> {
    loop {
        let epoch = *s.epoch.borrow();
        let (records, revision) =
            load_all(s).await.map_err(|e| Error::NotLeader(format!("loading metadata from etcd: {e}")))?;
        let shared = s.clone();
        // Decoding every record, and the writer lock (held by request
        // threads across their etcd writes), are kept off the runtime's
        // one worker, which renews the leases.
        let swapped = tokio::task::spawn_blocking(move || {
            let sm = StateMachine::from_records(records)?;
            let _writer = shared.writer.lock();
            if *shared.epoch.borrow() != epoch {
                return Ok(false);
            }
            *shared.sm.lock() = sm;
            let mut v = shared.view.lock();
            v.synced_revision = revision;
            v.loaded_epoch = epoch;
            if v.term != 0 && revision >= v.term {
                v.loaded = true;
            }
            Ok::<_, Error>(true)
        })
        .await
        .map_err(|e| Error::NotLeader(e.to_string()))??;
        if swapped {
            return Ok(());
        }
        // Leadership changed while loading: load again.
    }
}

/// Every record under the metadata prefix, at one revision (paged).
async fn load_all(s: &Shared) -> std::result::Result<(Vec<(Vec<u8>, Vec<u8>)>, i64), etcd_client::Error> {
    let mut client = s.client.clone();
    let prefix = s.keys.meta_prefix();
    let end = prefix_end(&prefix);
    let mut start = prefix.clone();
    let mut revision = 0;
    let mut records = Vec::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision != 0 {
            options = options.with_revision(revision);
        }
        let page = client.get(start.clone(), Some(options)).await?;
        if revision == 0 {
            revision = page.header().map_or(0, |h| h.revision());
        }
        for kv in page.kvs() {
            records.push((kv.key()[prefix.len()..].to_vec(), kv.value().to_vec()));
        }
        match page.kvs().last() {
            Some(last) if page.more() => start = [last.key(), &[0u8][..]].concat(),
            _ => return Ok((records, revision)),
        }
    }
}

/// Applies the watch's changes from the last loaded revision on; returns
/// why following must restart.
async fn follow(
    s: &Arc<Shared>,
    epochs: &mut watch::Receiver<u64>,
    stopped: &mut watch::Receiver<bool>,
) -> String {
    let (from, loaded_epoch) = {
        let v = s.view.lock();
        (v.synced_revision + 1, v.loaded_epoch)
    };
    if *epochs.borrow_and_update() != loaded_epoch {
        return "leadership changed".into();
    }
    let prefix = s.keys.meta_prefix();
    let mut options = WatchOptions::new().with_prefix();
    if !serving_own_writes(s) {
        // A leader skips every event; it need not start in the past
        // (which compaction may have removed).
        options = options.with_start_revision(from);
    }
    let mut client = s.client.clone();
    let (_watcher, mut stream) = match client.watch(prefix.clone(), Some(options)).await {
        Ok(w) => w,
        Err(e) => return format!("watch failed: {e}"),
    };
    loop {
        let answer = tokio::select! {
            _ = stopped.changed() => return "stopping".into(),
            _ = epochs.changed() => return "leadership changed".into(),
            answer = stream.message() => answer,
        };
        let answer = match answer {
            Ok(Some(a)) => a,
            Ok(None) => return "watch ended".into(),
            Err(e) => return format!("watch failed: {e}"),
        };
        if answer.canceled() {
            return format!(
                "watch cancelled (compacted to {}): {}",
                answer.compact_revision(),
                answer.cancel_reason()
            );
        }
        let mut changes = Vec::new();
        let mut revision = 0;
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            revision = revision.max(kv.mod_revision());
            let value = match event.event_type() {
                EventType::Put => Some(kv.value().to_vec()),
                EventType::Delete => None,
            };
            changes.push((kv.key()[prefix.len()..].to_vec(), value));
        }
        if changes.is_empty() {
            continue;
        }
        if s.view.lock().term == 0 {
            let shared = s.clone();
            let applied = tokio::task::spawn_blocking(move || {
                let mut sm = shared.sm.lock();
                changes.iter().try_for_each(|(k, v)| sm.apply_record(k, v.as_deref()))
            })
            .await;
            match applied {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return format!("a record could not be applied: {e}"),
                Err(e) => return format!("applying records failed: {e}"),
            }
        }
        let mut v = s.view.lock();
        v.synced_revision = v.synced_revision.max(revision);
    }
}
