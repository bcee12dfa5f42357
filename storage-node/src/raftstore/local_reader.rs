//! The local reader: lease reads answered on the gRPC thread, without a trip
//! through the store loop (TiKV's `LocalReader`).
//!
//! A leader holding a valid lease may answer a read from its applied state at
//! once ([`super::peer::Peer::lease_valid`]). Asking the store loop for that
//! permission costs a queue hop and waits behind the loop's round (its fsync
//! included); on a read-heavy load the loop does little else. So every peer
//! publishes what a lease read needs into a [`ReadDelegate`] that gRPC
//! threads can check themselves: the region (its epoch and range), the end of
//! the lease (`None` unless the peer leads, applied an entry of its term and
//! no transfer is under way), the largest stamp applied and the oldest stamp
//! of a write still in flight. A read the delegate cannot grant (no lease,
//! another epoch, a region not here) goes to the store loop as before, which
//! answers it or says why not.
//!
//! Invariants, and what keeps them:
//! - **A lease is never used after the peer gave it up.** The store loop
//!   revokes the delegate's lease the moment its peer loses it for any
//!   reason other than time: a role or term change, a leader transfer
//!   starting ([`ReadDelegate::revoke`], called before any message of that
//!   round leaves the node, so before a transfer target can be elected).
//!   A step that deposes the leader revokes too, before the round sees it.
//!   Expiry is checked by the reader on the same lease clock the peer uses.
//!   A lease extension reaches the delegate once the round that made it
//!   wrote everything it applied (after `Round::finish`): late is only
//!   conservative, early would let a read miss an applied write.
//! - **A read sees every write acknowledged before it started**: writes are
//!   acknowledged only after their round wrote them to the kv engine, which
//!   is where the reader reads.
//! - **TTL expiry is judged in log order** (see [`ReadGrant::now_ms`]): a
//!   read is judged below the stamp of any write in flight, never below a
//!   stamp applied, and never below the time an earlier read of the region
//!   was judged at (the delegate's `read_floor_ms`, kept by reads on both
//!   paths: [`ReadDelegate::judge_read`]). A write's stamp is taken under the delegate's lock and above
//!   that floor ([`ReadDelegate::stamp_write`]), so a read the write's
//!   stamp did not see was judged below it.
//! - The split of a region reaches its delegate at the end of the round that
//!   applied it; until then the new region on this node cannot have taken a
//!   write (it has no peer yet), so serving its keys from the old range
//!   misses nothing.

use std::collections::HashMap;
use std::sync::Arc;

use mnemo_proto::types::{Region, RegionEpoch, RegionId};
use parking_lot::{Mutex, RwLock};

use super::lease_clock::{LeaseClock, LeaseInstant};
use super::peer::ReadGrant;

/// Every delegate of this node, by region; shared by the store loop (which
/// registers, publishes and removes) and the gRPC threads (which read).
pub struct LocalReader {
    delegates: RwLock<HashMap<RegionId, Arc<ReadDelegate>>>,
    clock: LeaseClock,
}

/// What one peer publishes for lease reads.
#[derive(Debug)]
pub struct ReadDelegate {
    state: Mutex<DelegateState>,
}

#[derive(Debug)]
struct DelegateState {
    region: Region,
    /// End of the lease on the lease clock; `None`: no lease to lend.
    lease_until: Option<LeaseInstant>,
    applied_stamp_ms: u64,
    /// Smallest stamp of a write proposed (or batched) and not yet applied.
    oldest_pending_ms: Option<u64>,
    /// The largest time a read of this region was judged at, on either path.
    read_floor_ms: u64,
}

/// A peer's state as a lease read needs it (see [`ReadDelegate::publish`]).
pub struct LeaseView<'a> {
    pub region: &'a Region,
    /// The lease, if the peer may lend it now (leader, entry of its term
    /// applied, no transfer); `None` otherwise.
    pub lease_until: Option<LeaseInstant>,
    pub applied_stamp_ms: u64,
    pub oldest_pending_ms: Option<u64>,
}

impl LocalReader {
    /// An empty reader measuring leases on `clock` (the store's lease clock).
    pub fn new(clock: LeaseClock) -> Arc<LocalReader> {
        Arc::new(LocalReader { delegates: RwLock::new(HashMap::new()), clock })
    }

    /// Makes `delegate` the one for `region` (a new or re-created peer).
    pub fn register(&self, region: RegionId, delegate: Arc<ReadDelegate>) {
        self.delegates.write().insert(region, delegate);
    }

    /// Forgets `region`'s delegate, revoking its lease first (a peer being
    /// destroyed: its data is about to go).
    pub fn unregister(&self, region: RegionId) {
        if let Some(d) = self.delegates.write().remove(&region) {
            d.revoke();
        }
    }

    /// Grants a read of `region` at `epoch` (its version, as the store loop
    /// checks) if the local peer's published lease covers now; `None`: ask
    /// the store loop.
    pub fn read(&self, region: RegionId, epoch: RegionEpoch) -> Option<ReadGrant> {
        let delegate = self.delegates.read().get(&region).cloned()?;
        let holder = delegate.clone();
        let mut s = delegate.state.lock();
        if s.region.epoch.version != epoch.version {
            return None;
        }
        let now = self.clock.now();
        if s.lease_until.is_none_or(|until| now >= until) {
            return None;
        }
        let mut at = crate::keys::now_unix_ms().max(s.applied_stamp_ms);
        if let Some(oldest) = s.oldest_pending_ms {
            at = at.min(oldest.saturating_sub(1)).max(s.applied_stamp_ms);
        }
        at = at.max(s.read_floor_ms);
        s.read_floor_ms = at;
        Some(ReadGrant { region: s.region.clone(), now_ms: at, holder: Some(holder) })
    }

    /// True if `holder` is still `region`'s delegate here. A read checks it
    /// *after* taking its engine snapshot: a peer is unregistered before its
    /// data is deleted (`Store::destroy_peer`), so if the delegate that
    /// granted the read is still registered then, the snapshot holds the
    /// region's data; if not, the read must not answer (the client
    /// retries where the region is now).
    pub fn still_serves(&self, region: RegionId, holder: &Arc<ReadDelegate>) -> bool {
        self.delegates.read().get(&region).is_some_and(|d| Arc::ptr_eq(d, holder))
    }
}

impl ReadDelegate {
    /// A delegate with no lease to lend.
    pub fn new(region: Region) -> Arc<ReadDelegate> {
        Arc::new(ReadDelegate {
            state: Mutex::new(DelegateState {
                region,
                lease_until: None,
                applied_stamp_ms: 0,
                oldest_pending_ms: None,
                read_floor_ms: 0,
            }),
        })
    }

    /// Publishes the peer's state (store loop, end of a round that touched it).
    pub fn publish(&self, view: LeaseView<'_>) {
        let mut s = self.state.lock();
        if s.region.epoch != view.region.epoch || s.region.id != view.region.id {
            s.region = view.region.clone();
        }
        s.lease_until = view.lease_until;
        // An apply worker may have raised it already (`note_applied`).
        s.applied_stamp_ms = s.applied_stamp_ms.max(view.applied_stamp_ms);
        s.oldest_pending_ms = view.oldest_pending_ms;
    }

    /// An apply worker wrote writes stamped up to `stamp_ms` and is about
    /// to answer their clients, before the store loop takes its report in:
    /// every read from now on is judged at or above that stamp.
    pub fn note_applied(&self, stamp_ms: u64) {
        let mut s = self.state.lock();
        s.applied_stamp_ms = s.applied_stamp_ms.max(stamp_ms);
    }

    /// The largest stamp applied, as published or noted by a worker.
    pub fn applied_stamp_ms(&self) -> u64 {
        self.state.lock().applied_stamp_ms
    }

    /// The peer lost its lease (store loop, at once).
    pub fn revoke(&self) {
        self.state.lock().lease_until = None;
    }

    /// The stamp for a write about to be proposed or batched: `candidate`
    /// (the peer's monotonic wall stamp), raised above every read judged so
    /// far; recorded as in flight before any reader can see the lock free.
    pub fn stamp_write(&self, candidate: u64) -> u64 {
        let mut s = self.state.lock();
        let stamp = candidate.max(s.read_floor_ms + 1);
        s.oldest_pending_ms = Some(s.oldest_pending_ms.map_or(stamp, |o| o.min(stamp)));
        stamp
    }

    /// The time a read on the store loop's path is judged at: `at`, but
    /// never below a read already judged (a wall clock stepped back must
    /// not bring an expired value back).
    pub fn judge_read(&self, at: u64) -> u64 {
        let mut s = self.state.lock();
        s.read_floor_ms = s.read_floor_ms.max(at);
        s.read_floor_ms
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn region() -> Region {
        Region { id: RegionId(1), epoch: RegionEpoch { conf_ver: 1, version: 1 }, ..Default::default() }
    }

    fn lend(d: &ReadDelegate, region: &Region, until: LeaseInstant) {
        d.publish(LeaseView {
            region,
            lease_until: Some(until),
            applied_stamp_ms: 0,
            oldest_pending_ms: None,
        });
    }

    #[test]
    fn a_lease_is_lent_only_until_it_ends_and_while_the_region_is_here() {
        let clock = LeaseClock::real();
        let reader = LocalReader::new(clock.clone());
        let (r, d) = (region(), ReadDelegate::new(region()));
        reader.register(r.id, d.clone());
        lend(&d, &r, clock.now() + Duration::from_secs(3600));
        assert!(reader.read(r.id, r.epoch).is_some_and(|g| g.region == r));
        // A lease that ended is not lent, whatever was published.
        lend(&d, &r, clock.now());
        assert!(reader.read(r.id, r.epoch).is_none());
        // A region no longer here (its peer being destroyed) is not read.
        lend(&d, &r, clock.now() + Duration::from_secs(3600));
        reader.unregister(r.id);
        assert!(reader.read(r.id, r.epoch).is_none());
        assert!(d.state.lock().lease_until.is_none(), "unregistering revokes");
    }

    #[test]
    fn a_grant_serves_only_while_the_peer_that_made_it_is_registered() {
        let clock = LeaseClock::real();
        let reader = LocalReader::new(clock.clone());
        let (r, d) = (region(), ReadDelegate::new(region()));
        reader.register(r.id, d.clone());
        lend(&d, &r, clock.now() + Duration::from_secs(3600));
        let grant = reader.read(r.id, r.epoch).expect("lent");
        let holder = grant.holder.expect("a real grant names its peer");
        assert!(reader.still_serves(r.id, &holder));
        // The peer is destroyed (unregistered before its data goes), then
        // the region's peer here is created again: neither serves the
        // old grant, whose snapshot may predate the new data.
        reader.unregister(r.id);
        assert!(!reader.still_serves(r.id, &holder));
        reader.register(r.id, ReadDelegate::new(region()));
        assert!(!reader.still_serves(r.id, &holder));
    }

    #[test]
    fn reads_are_judged_between_the_applied_stamp_and_the_oldest_write_in_flight() {
        let clock = LeaseClock::real();
        let reader = LocalReader::new(clock.clone());
        let (r, d) = (region(), ReadDelegate::new(region()));
        reader.register(r.id, d.clone());
        let until = Some(clock.now() + Duration::from_secs(3600));
        let wall = crate::keys::now_unix_ms();
        // A write stamped a minute ago still in flight: reads judge below it.
        let view = |applied_stamp_ms, oldest_pending_ms| LeaseView {
            region: &r,
            lease_until: until,
            applied_stamp_ms,
            oldest_pending_ms,
        };
        d.publish(view(wall - 120_000, Some(wall - 60_000)));
        assert_eq!(reader.read(r.id, r.epoch).unwrap().now_ms, wall - 60_001);
        // A stamp applied an hour ahead (another leader's clock): never below it.
        d.publish(view(wall + 3_600_000, None));
        assert_eq!(reader.read(r.id, r.epoch).unwrap().now_ms, wall + 3_600_000);
        // And never below a read already judged, even if what is published
        // says otherwise; a write stamped now goes above that read.
        d.publish(view(0, None));
        assert_eq!(reader.read(r.id, r.epoch).unwrap().now_ms, wall + 3_600_000);
        assert_eq!(d.stamp_write(wall), wall + 3_600_001);
    }
}
