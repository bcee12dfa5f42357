//! How the node lays out keys and values in its two engines.
//!
//! kv engine, `default` CF: user key `k` is stored as `DATA_PREFIX + k`, so
//! node-local records can never collide with user data and a region's data is
//! the contiguous range `[z+start, z+end)` (`z+` "infinity" = `DATA_MAX`).
//! The stored value is `flag, [expire_at_ms as u64 BE], user value`:
//! flag 0 = no TTL, flag 1 = expires at the given Unix millisecond.
//!
//! kv engine, `meta` CF: `STORE_IDENT_KEY`, and per region
//! `0x01 0x03 region_id(BE) 0x01` (RegionLocalState) and `... 0x02` (RaftApplyState).
//!
//! raft log store: per region `0x01 0x02 region_id(BE) 0x01 index(BE)` for
//! entries, `... 0x02` for the hard state, `... 0x03` for a snapshot being
//! applied (`PendingSnapshot`, kept until the apply is complete) and
//! `... 0x04` for the id of the peer a message created here (whose hard
//! state the region's raft state is). Big-endian ids keep each
//! region's records contiguous and its entries in index order.

use mnemo_proto::types::RegionId;

/// First byte of every user-data key in the kv engine.
pub const DATA_PREFIX: u8 = b'z';
/// Upper bound (exclusive) of all user-data keys.
pub const DATA_MAX: &[u8] = b"{";
/// The node's identity (cluster id, store id).
pub const STORE_IDENT_KEY: &[u8] = b"\x01\x01";
/// Region records of the `meta` CF lie in `[REGION_META_MIN, REGION_META_MAX)`.
pub const REGION_META_MIN: &[u8] = b"\x01\x03";
/// See [`REGION_META_MIN`].
pub const REGION_META_MAX: &[u8] = b"\x01\x04";

const REGION_STATE_SUFFIX: u8 = 0x01;
const APPLY_STATE_SUFFIX: u8 = 0x02;
const RAFT_LOG_SUFFIX: u8 = 0x01;
const RAFT_STATE_SUFFIX: u8 = 0x02;
const PENDING_SNAPSHOT_SUFFIX: u8 = 0x03;
const RAFT_PEER_SUFFIX: u8 = 0x04;

/// The kv-engine key of user key `key`.
pub fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(key);
    k
}

/// The kv-engine bound for a region end key (empty = +infinity).
pub fn data_end_key(end: &[u8]) -> Vec<u8> {
    if end.is_empty() {
        DATA_MAX.to_vec()
    } else {
        data_key(end)
    }
}

/// The user key of kv-engine data key `dk`.
pub fn origin_key(dk: &[u8]) -> &[u8] {
    debug_assert_eq!(dk.first(), Some(&DATA_PREFIX));
    &dk[1..]
}

fn region_meta_key(region: RegionId, suffix: u8) -> Vec<u8> {
    let mut k = REGION_META_MIN.to_vec();
    k.extend_from_slice(&region.0.to_be_bytes());
    k.push(suffix);
    k
}

/// Key of a region's `RegionLocalState` in the `meta` CF.
pub fn region_state_key(region: RegionId) -> Vec<u8> {
    region_meta_key(region, REGION_STATE_SUFFIX)
}

/// Key of a region's `RaftApplyState` in the `meta` CF.
pub fn apply_state_key(region: RegionId) -> Vec<u8> {
    region_meta_key(region, APPLY_STATE_SUFFIX)
}

/// Decodes `(region, is_region_state)` from a region meta key.
pub fn decode_region_meta_key(key: &[u8]) -> Option<(RegionId, bool)> {
    if key.len() != REGION_META_MIN.len() + 9 || !key.starts_with(REGION_META_MIN) {
        return None;
    }
    let id = u64::from_be_bytes(key[2..10].try_into().ok()?);
    Some((RegionId(id), key[10] == REGION_STATE_SUFFIX))
}

fn raft_prefix(region: RegionId) -> Vec<u8> {
    let mut k = b"\x01\x02".to_vec();
    k.extend_from_slice(&region.0.to_be_bytes());
    k
}

/// The prefix of `region`'s raft log entries in the raft log store; entry
/// `i` is this prefix followed by `i` big-endian (`mnemo_raft_driver::log`).
pub fn raft_log_prefix(region: RegionId) -> Vec<u8> {
    let mut k = raft_prefix(region);
    k.push(RAFT_LOG_SUFFIX);
    k
}

/// Key of raft log entry `index` of `region` in the raft log store.
pub fn raft_log_key(region: RegionId, index: u64) -> Vec<u8> {
    let mut k = raft_log_prefix(region);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The node's raft log entry keys, for [`mnemo_engine::RaftLogEngine`]:
/// group = region id.
pub struct RaftLogKeys;

impl mnemo_engine::LogKeys for RaftLogKeys {
    fn entry(&self, key: &[u8]) -> Option<(u64, u64)> {
        let (prefix, index) = key.split_last_chunk::<8>()?;
        let (suffix, region) = prefix.strip_prefix(b"\x01\x02")?.split_last()?;
        let region: [u8; 8] = region.try_into().ok()?;
        (*suffix == RAFT_LOG_SUFFIX).then(|| (u64::from_be_bytes(region), u64::from_be_bytes(*index)))
    }

    fn entry_key(&self, group: u64, index: u64) -> Vec<u8> {
        raft_log_key(RegionId(group), index)
    }
}

/// Key of the snapshot a region's peer is applying, in the raft log store.
pub fn pending_snapshot_key(region: RegionId) -> Vec<u8> {
    let mut k = raft_prefix(region);
    k.push(PENDING_SNAPSHOT_SUFFIX);
    k
}

/// Key of the id (u64 BE) of the peer a leader's message created for the
/// region on this store, in the raft log store.
pub fn raft_peer_key(region: RegionId) -> Vec<u8> {
    let mut k = raft_prefix(region);
    k.push(RAFT_PEER_SUFFIX);
    k
}

/// Key of a region's raft hard state in the raft log store.
pub fn raft_state_key(region: RegionId) -> Vec<u8> {
    let mut k = raft_prefix(region);
    k.push(RAFT_STATE_SUFFIX);
    k
}

/// Stored form of a user value with an optional expiry (Unix ms, 0 = never).
pub fn encode_value(value: &[u8], expire_at_ms: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 9);
    if expire_at_ms == 0 {
        v.push(0);
    } else {
        v.push(1);
        v.extend_from_slice(&expire_at_ms.to_be_bytes());
    }
    v.extend_from_slice(value);
    v
}

/// A stored value: the user's bytes and the expiry (Unix ms, 0 = never).
#[derive(Debug, PartialEq, Eq)]
pub struct StoredValue<'a> {
    pub value: &'a [u8],
    pub expire_at_ms: u64,
}

impl StoredValue<'_> {
    /// True if the value has expired at `now_ms` and must be invisible.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expire_at_ms != 0 && self.expire_at_ms <= now_ms
    }
}

/// Decodes a stored value; a corrupt one decodes as an empty, never-expiring value.
pub fn decode_value(raw: &[u8]) -> StoredValue<'_> {
    match raw.first() {
        Some(1) if raw.len() >= 9 => StoredValue {
            value: &raw[9..],
            expire_at_ms: u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes")),
        },
        Some(_) => StoredValue { value: &raw[1..], expire_at_ms: 0 },
        None => StoredValue { value: raw, expire_at_ms: 0 },
    }
}

/// Unix time in milliseconds (wall clock; TTLs are wall-clock promises).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_sort_like_user_keys_and_stay_below_max() {
        assert!(data_key(b"a") < data_key(b"b"));
        assert!(data_key(&[0xff; 8]).as_slice() < DATA_MAX);
        assert_eq!(origin_key(&data_key(b"abc")), b"abc");
        assert_eq!(data_end_key(b""), DATA_MAX);
    }

    #[test]
    fn raft_log_keys_sort_by_index() {
        let r = RegionId(3);
        assert!(raft_log_key(r, 9) < raft_log_key(r, 10));
        use mnemo_engine::LogKeys;
        assert_eq!(RaftLogKeys.entry(&raft_log_key(r, 9)), Some((r.0, 9)));
        assert_eq!(RaftLogKeys.entry_key(r.0, 9), raft_log_key(r, 9));
        for other in [raft_state_key(r), raft_peer_key(r), pending_snapshot_key(r), raft_log_prefix(r)] {
            assert_eq!(RaftLogKeys.entry(&other), None, "{other:?} is not an entry");
        }
        assert!(raft_log_key(r, u64::MAX) < raft_state_key(r));
        assert!(raft_state_key(r) < raft_log_key(RegionId(4), 0));
    }

    #[test]
    fn region_meta_keys_decode() {
        assert_eq!(decode_region_meta_key(&region_state_key(RegionId(5))), Some((RegionId(5), true)));
        assert_eq!(decode_region_meta_key(&apply_state_key(RegionId(5))), Some((RegionId(5), false)));
        assert!(region_state_key(RegionId(u64::MAX)).as_slice() < REGION_META_MAX);
    }

    #[test]
    fn values_round_trip_with_and_without_ttl() {
        let plain = encode_value(b"v", 0);
        assert_eq!(decode_value(&plain), StoredValue { value: b"v", expire_at_ms: 0 });
        let ttl = encode_value(b"v", 1000);
        let d = decode_value(&ttl);
        assert_eq!(d.value, b"v");
        assert!(d.is_expired(1000) && !d.is_expired(999));
    }
}
