//! Region heartbeats and splits: keeping the region map current, and
//! answering with operator steps (see `schedule` for the protocol).

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use mnemo_proto::types::{PeerId, Region, RegionId, StoreId};
use tracing::{debug, info};

use super::Cluster;
use crate::error::{Error, Result};
use crate::meta::Command;
use crate::region_map::{RegionRuntime, Verdict};
use crate::schedule::ScheduleOrder;

/// One region heartbeat, converted from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionHeartbeat {
    /// The region as its leader sees it.
    pub region: Region,
    /// The leader (the sender) and statistics; `last_heartbeat` is set by PD.
    pub runtime: RegionRuntime,
}

/// Ids for one new region of a batch split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitIds {
    /// The new region's id.
    pub region_id: RegionId,
    /// One new peer id per peer of the region being split, in its peer order.
    pub peer_ids: Vec<PeerId>,
}

/// Most regions one `AskBatchSplit` may ask for.
pub const MAX_SPLIT_COUNT: u32 = 1000;

impl Cluster {
    /// Updates the region map from a heartbeat (a stale one is ignored) and
    /// returns the step its leader should carry out, if any. Metadata is
    /// persisted only when it changed; the rest (leader, sizes, pending
    /// peers) lives in memory.
    pub fn region_heartbeat(&self, hb: RegionHeartbeat) -> Result<Option<ScheduleOrder>> {
        fail::fail_point!("pd_region_heartbeat");
        self.counters.region_heartbeats.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let id = hb.region.id;
        if id.0 == 0 {
            return Err(Error::InvalidArgument("heartbeat without a region".into()));
        }
        let Some(leader) = hb.runtime.leader else {
            return Err(Error::InvalidArgument(format!("heartbeat of region {id} without a leader")));
        };
        self.inner.lock().ensure_bootstrapped()?;
        // The region's record first, if it is news (its metadata, even from
        // a deposed leader, was committed: the map takes it), outside
        // `inner`.
        self.put_regions(std::slice::from_ref(&hb.region))?;
        let mut inner = self.inner.lock();
        // Judged now, with `inner` held: another heartbeat of this region
        // (from its new leader, on another store's stream) may have been
        // handled meanwhile. A stale report must not attach its leader or
        // pending peers to a newer record, and a deposed leader's late
        // report must not undo the new one's leadership.
        let (known_term, verdict) = {
            let state = inner.state();
            (state.regions().get(id).map_or(0, |i| i.runtime.term), state.regions().check(&hb.region))
        };
        if verdict != Verdict::Unchanged {
            debug!(region_id = %id, ?verdict, "region heartbeat older than the map: ignored");
            return Ok(None);
        }
        let deposed = hb.runtime.term != 0 && hb.runtime.term < known_term;
        if deposed {
            debug!(region_id = %id, term = hb.runtime.term, known_term, "heartbeat of a deposed leader: leader kept");
            return Ok(None);
        }
        let runtime = RegionRuntime { last_heartbeat: Some(now), ..hb.runtime };
        inner.note_heard(id);
        inner.state().set_region_runtime(id, runtime);
        if inner.state().regions().get(id).and_then(|r| r.leader()) != Some(leader) {
            return Ok(None); // the sender is not a peer of the region we know
        }
        if !inner.prepared(now) {
            return Ok(None);
        }
        inner.ensure_ids()?;
        let order = inner.scheduling(
            now,
            Box::new(|snap, settings, ops, coordinator, ids| {
                coordinator.on_heartbeat(snap, settings, ops, id, &mut || ids.try_alloc().map(PeerId))
            }),
        );
        self.still_serving(order)
    }

    /// Proposes each of `regions` that is news to the map (a newer epoch, or
    /// unknown), one at a time under [`Cluster::region_writes`] and never
    /// under `inner`: a heartbeat waiting for its region record to commit
    /// holds up no other heartbeat, decision or HTTP call, only the next
    /// region write (on the etcd backend every write, of any kind, still
    /// waits its turn for etcd). (Apply checks again: a
    /// record another member's leader wrote meanwhile wins if newer.)
    fn put_regions(&self, regions: &[Region]) -> Result<()> {
        let news = |r: &Region| self.sm.lock().state().regions().check(r) == Verdict::Changed;
        // Most heartbeats bring no news: they must not queue behind a write.
        if !regions.iter().any(news) {
            return Ok(());
        }
        let mut writes = self.region_writes.lock();
        for region in regions {
            if news(region) {
                debug!(region_id = %region.id, epoch = ?region.epoch, "region changed");
                self.counters.region_changes.fetch_add(1, Ordering::Relaxed);
                writes.replicate(Command::PutRegion { region: region.clone() })?;
            }
        }
        Ok(())
    }

    /// Allocates ids for `count` new regions split off `region`.
    pub fn ask_batch_split(&self, region: &Region, count: u32) -> Result<Vec<SplitIds>> {
        if count == 0 || count > MAX_SPLIT_COUNT {
            return Err(Error::InvalidArgument(format!(
                "split count {count} must be in 1..={MAX_SPLIT_COUNT}"
            )));
        }
        let mut inner = self.inner.lock();
        inner.ensure_bootstrapped()?;
        if inner.state().regions().get(region.id).is_none() {
            return Err(Error::RegionNotFound(region.id));
        }
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let region_id = RegionId(inner.alloc_id()?);
            let peer_ids =
                region.peers.iter().map(|_| inner.alloc_id().map(PeerId)).collect::<Result<_>>()?;
            out.push(SplitIds { region_id, peer_ids });
        }
        Ok(out)
    }

    /// Records the regions resulting from a split. New regions whose leader
    /// PD does not know yet are assumed led by their peer on the store that
    /// led the split region: that is where raft elects them first, and it
    /// spares clients a leaderless lookup until their first heartbeat.
    pub fn report_batch_split(&self, regions: &[Region]) -> Result<()> {
        let leader_store: Option<StoreId> = {
            let inner = self.inner.lock();
            inner.ensure_bootstrapped()?;
            let state = inner.state();
            regions
                .iter()
                .filter_map(|r| state.regions().get(r.id).and_then(|i| i.leader()))
                .map(|l| l.store_id)
                .next()
        };
        self.put_regions(regions)?;
        let inner = self.inner.lock();
        for region in regions {
            let known = inner.state().regions().get(region.id).map(|i| i.leader().is_some());
            if let (Some(false), Some(store)) = (known, leader_store) {
                if let Some(&peer) = region.peer_on_store(store) {
                    let runtime = RegionRuntime { leader: Some(peer), ..Default::default() };
                    inner.state().set_region_runtime(region.id, runtime);
                }
            }
        }
        info!(regions = ?regions.iter().map(|r| r.id.0).collect::<Vec<_>>(), "batch split reported");
        Ok(())
    }
}
