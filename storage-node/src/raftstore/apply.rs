//! Applying committed write commands to the kv engine.
//!
//! Apply is deterministic: every replica applies the same entries in the same
//! order to the same state and reaches the same result, so the result of a CAS
//! is decided here, not at propose time. Apply reads no clock, no randomness
//! and no local configuration: where a decision needs the time (is the value a
//! CAS compares against expired?) it uses the time the proposing leader
//! stamped into the command (`RaftCommand.proposed_at_ms`), so a follower
//! applying later, or a node replaying its log after a restart, decides
//! exactly as the leader did. The region epoch and key ranges are
//! checked again at apply time, since a split or membership change may have
//! been applied between propose and apply.
//!
//! `ApplyBatch` accumulates the engine changes of one ready round. A CAS must
//! read the current value, including writes of earlier entries in the same
//! round, so before a CAS the batch is flushed together with the apply state
//! that covers it: data and applied index never disagree on disk.

use mnemo_proto::raft_serverpb::{BatchSplit, MutationOp, RaftCommand};
use mnemo_proto::types::{epoch_of, Peer, PeerId, Region, RegionId};

use crate::engine::{Cf, Engine, WriteBatch};
use crate::error::{Error, Result};
use crate::keys;

/// What a write produced, returned to the proposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Puts/deletes/delete-range applied.
    Done,
    /// A compare-and-swap ran: whether it swapped, and the value before it.
    Cas { succeed: bool, previous: Option<Vec<u8>> },
}

/// Checks that a command still fits the region: same `version`, keys inside.
pub fn check_command(region: &Region, cmd: &RaftCommand) -> Result<()> {
    let epoch = epoch_of(cmd.header.as_ref().and_then(|h| h.region_epoch.as_ref()));
    if epoch.version != region.epoch.version {
        return Err(Error::EpochNotMatch { current: vec![region.clone()] });
    }
    let keys = cmd.mutations.iter().map(|m| &m.key).chain(cmd.cas.as_ref().map(|c| &c.key));
    for k in keys {
        if !region.contains(k) {
            return Err(Error::KeyNotInRegion { key: k.clone(), region: region.clone() });
        }
    }
    if let Some(dr) = &cmd.delete_range {
        if !region.contains(&dr.start_key) && dr.start_key > region.start_key {
            return Err(Error::KeyNotInRegion { key: dr.start_key.clone(), region: region.clone() });
        }
    }
    Ok(())
}

/// Computes the regions a batch split produces: the parent keeps
/// `[start, first key)` under its id, each new region `[key, next key)`.
/// Every region's `version` is the parent's + 1; `conf_ver` is unchanged.
/// The command must carry the parent's exact epoch (split checks both parts).
pub fn split_regions(
    region: &Region,
    cmd: &RaftCommand,
    split: &BatchSplit,
) -> Result<(Region, Vec<Region>)> {
    let epoch = epoch_of(cmd.header.as_ref().and_then(|h| h.region_epoch.as_ref()));
    if epoch != region.epoch {
        return Err(Error::EpochNotMatch { current: vec![region.clone()] });
    }
    if split.requests.is_empty() {
        return Err(Error::InvalidArgument("split without split keys".into()));
    }
    let mut prev: &[u8] = &region.start_key;
    for r in &split.requests {
        if r.split_key.as_slice() <= prev || !region.contains(&r.split_key) {
            return Err(Error::InvalidArgument(format!(
                "split key {:?} is not inside region {} above the previous split key",
                r.split_key, region.id
            )));
        }
        if r.new_peer_ids.len() != region.peers.len() || r.new_region_id == 0 {
            return Err(Error::InvalidArgument("split ids do not match the region's peers".into()));
        }
        prev = &r.split_key;
    }
    let mut version = region.epoch;
    version.version += 1;
    let mut derived = region.clone();
    derived.epoch = version;
    derived.end_key = split.requests[0].split_key.clone();
    let mut new_regions = Vec::with_capacity(split.requests.len());
    for (i, r) in split.requests.iter().enumerate() {
        let end =
            split.requests.get(i + 1).map(|n| n.split_key.clone()).unwrap_or_else(|| region.end_key.clone());
        let peers = region
            .peers
            .iter()
            .zip(&r.new_peer_ids)
            .map(|(p, id)| Peer { id: PeerId(*id), store_id: p.store_id, role: p.role })
            .collect();
        new_regions.push(Region {
            id: RegionId(r.new_region_id),
            start_key: r.split_key.clone(),
            end_key: end,
            epoch: version,
            peers,
        });
    }
    Ok((derived, new_regions))
}

/// Approximate bytes a command adds to a region (for the split check hint).
pub fn written_bytes(cmd: &RaftCommand) -> u64 {
    let muts: usize = cmd.mutations.iter().map(|m| m.key.len() + m.value.len()).sum();
    let cas = cmd.cas.as_ref().map(|c| c.key.len() + c.value.len()).unwrap_or(0);
    (muts + cas) as u64
}

/// The user's value in a stored value, unless it expired at `now_ms`.
pub fn live_value(stored: Option<Vec<u8>>, now_ms: u64) -> Option<Vec<u8>> {
    stored.and_then(|raw| {
        let v = keys::decode_value(&raw);
        (!v.is_expired(now_ms)).then(|| v.value.to_vec())
    })
}

/// Reads the live (unexpired) value of a user key.
pub fn read_live(engine: &dyn Engine, key: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>> {
    Ok(live_value(engine.get(Cf::Default, &keys::data_key(key))?, now_ms))
}

/// Stages the effect of `cmd` on `region` into `wb`. For a CAS, the caller
/// must have flushed `wb` so that `engine` shows every earlier entry. Expiry
/// is judged at the command's own stamp (`proposed_at_ms`), never by a clock.
pub fn apply_write(
    engine: &dyn Engine,
    region: &Region,
    cmd: &RaftCommand,
    wb: &mut WriteBatch,
) -> Result<WriteOutcome> {
    check_command(region, cmd)?;
    stage_write(engine, region, cmd, wb)
}

/// [`apply_write`] without the check that the command still fits the
/// region: only for a command already checked (and for a planted bug).
pub fn stage_write(
    engine: &dyn Engine,
    region: &Region,
    cmd: &RaftCommand,
    wb: &mut WriteBatch,
) -> Result<WriteOutcome> {
    for m in &cmd.mutations {
        match m.op() {
            MutationOp::Put => {
                wb.put(Cf::Default, keys::data_key(&m.key), keys::encode_value(&m.value, m.expire_at_ms))
            }
            MutationOp::Delete => wb.delete(Cf::Default, keys::data_key(&m.key)),
        }
    }
    if let Some(dr) = &cmd.delete_range {
        let (start, end) = mnemo_proto::types::clamp_range(region, &dr.start_key, &dr.end_key);
        let (ds, de) = (keys::data_key(&start), keys::data_end_key(&end));
        if ds < de {
            wb.delete_range(Cf::Default, ds, de);
        }
    }
    if let Some(cas) = &cmd.cas {
        let current = read_live(engine, &cas.key, cmd.proposed_at_ms)?;
        let matches = match &current {
            None => cas.previous_not_exist,
            Some(v) => !cas.previous_not_exist && *v == cas.previous_value,
        };
        if matches {
            wb.put(Cf::Default, keys::data_key(&cas.key), keys::encode_value(&cas.value, cas.expire_at_ms));
        }
        return Ok(WriteOutcome::Cas { succeed: matches, previous: current });
    }
    Ok(WriteOutcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemEngine;
    use mnemo_proto::raft_serverpb::{CompareAndSwap, Mutation, RaftRequestHeader};
    use mnemo_proto::types::RegionEpoch;

    fn region() -> Region {
        Region {
            start_key: b"b".to_vec(),
            end_key: b"m".to_vec(),
            epoch: RegionEpoch { conf_ver: 1, version: 2 },
            ..Default::default()
        }
    }

    fn header(version: u64) -> Option<RaftRequestHeader> {
        Some(RaftRequestHeader {
            region_epoch: Some(mnemo_proto::metapb::RegionEpoch { conf_ver: 1, version }),
            ..Default::default()
        })
    }

    fn put(key: &[u8], value: &[u8]) -> RaftCommand {
        RaftCommand {
            header: header(2),
            mutations: vec![Mutation {
                op: MutationOp::Put as i32,
                key: key.to_vec(),
                value: value.to_vec(),
                expire_at_ms: 0,
            }],
            ..Default::default()
        }
    }

    fn cas(key: &[u8], expect: Option<&[u8]>, new: &[u8]) -> RaftCommand {
        RaftCommand {
            header: header(2),
            cas: Some(CompareAndSwap {
                key: key.to_vec(),
                previous_not_exist: expect.is_none(),
                previous_value: expect.unwrap_or_default().to_vec(),
                value: new.to_vec(),
                expire_at_ms: 0,
            }),
            ..Default::default()
        }
    }

    fn run(e: &MemEngine, cmd: &RaftCommand) -> Result<WriteOutcome> {
        let mut wb = WriteBatch::new();
        let out = apply_write(e, &region(), cmd, &mut wb)?;
        e.write(&wb, false).unwrap();
        Ok(out)
    }

    #[test]
    fn cas_swaps_only_on_match() {
        let e = MemEngine::new();
        assert_eq!(
            run(&e, &cas(b"c", None, b"1")).unwrap(),
            WriteOutcome::Cas { succeed: true, previous: None }
        );
        assert_eq!(
            run(&e, &cas(b"c", None, b"2")).unwrap(),
            WriteOutcome::Cas { succeed: false, previous: Some(b"1".to_vec()) }
        );
        assert_eq!(
            run(&e, &cas(b"c", Some(b"1"), b"3")).unwrap(),
            WriteOutcome::Cas { succeed: true, previous: Some(b"1".to_vec()) }
        );
        assert_eq!(read_live(&e, b"c", 1).unwrap(), Some(b"3".to_vec()));
    }

    #[test]
    fn stale_version_and_foreign_keys_are_rejected() {
        let e = MemEngine::new();
        let mut stale = put(b"c", b"v");
        stale.header = header(1);
        assert!(matches!(run(&e, &stale), Err(Error::EpochNotMatch { .. })));
        assert!(matches!(run(&e, &put(b"z", b"v")), Err(Error::KeyNotInRegion { .. })));
        assert_eq!(read_live(&e, b"c", 1).unwrap(), None);
    }

    #[test]
    fn split_cuts_the_range_and_bumps_version() {
        use mnemo_proto::raft_serverpb::SplitRequest;
        let mut parent = region();
        parent.peers =
            vec![Peer { id: PeerId(1), store_id: mnemo_proto::types::StoreId(1), role: Default::default() }];
        let split = BatchSplit {
            requests: vec![
                SplitRequest { split_key: b"d".to_vec(), new_region_id: 10, new_peer_ids: vec![11] },
                SplitRequest { split_key: b"h".to_vec(), new_region_id: 12, new_peer_ids: vec![13] },
            ],
        };
        let cmd = RaftCommand {
            header: Some(RaftRequestHeader {
                region_epoch: Some(mnemo_proto::metapb::RegionEpoch { conf_ver: 1, version: 2 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (derived, new) = split_regions(&parent, &cmd, &split).unwrap();
        assert_eq!((derived.start_key.as_slice(), derived.end_key.as_slice()), (&b"b"[..], &b"d"[..]));
        assert_eq!(derived.epoch, RegionEpoch { conf_ver: 1, version: 3 });
        assert_eq!((new[0].start_key.as_slice(), new[0].end_key.as_slice()), (&b"d"[..], &b"h"[..]));
        assert_eq!((new[1].start_key.as_slice(), new[1].end_key.as_slice()), (&b"h"[..], &b"m"[..]));
        assert_eq!(new[1].peers[0].id, PeerId(13));

        // A key outside the region or out of order is refused.
        let bad = BatchSplit {
            requests: vec![SplitRequest {
                split_key: b"z".to_vec(),
                new_region_id: 10,
                new_peer_ids: vec![11],
            }],
        };
        assert!(split_regions(&parent, &cmd, &bad).is_err());
        // A stale epoch is refused.
        let mut stale = cmd.clone();
        stale.header = header(1);
        assert!(matches!(split_regions(&parent, &stale, &split), Err(Error::EpochNotMatch { .. })));
    }

    #[test]
    fn expired_values_are_invisible() {
        let e = MemEngine::new();
        let mut wb = WriteBatch::new();
        wb.put(Cf::Default, keys::data_key(b"c"), keys::encode_value(b"v", 100));
        e.write(&wb, false).unwrap();
        assert_eq!(read_live(&e, b"c", 99).unwrap(), Some(b"v".to_vec()));
        assert_eq!(read_live(&e, b"c", 100).unwrap(), None);
    }
}
