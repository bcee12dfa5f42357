//! Range scans: walking regions in key order (or backwards), one region piece
//! at a time, until the range or the limit is exhausted.
//!
//! Each piece is one `RawScan` to one region with the range clamped to that
//! region on the client (the node clamps too). A piece that comes back full
//! may have more keys in the same region, so the next piece starts right
//! after its last key; otherwise the next piece starts at the region's
//! boundary. On the wire a reverse scan names the exclusive **upper** bound
//! in `start_key` and the inclusive **lower** bound in `end_key`.

use mnemo_proto::kvrpcpb;
use mnemo_proto::types::{clamp_range, Region};
use tokio::time::Instant;

use crate::batch::KvPair;
use crate::error::Result;
use crate::executor::{Executor, Locate};
use crate::retry::Kind;

/// Most keys asked of a node in one `RawScan` (TiKV's limit; nodes refuse more).
pub(crate) const MAX_SCAN_LIMIT: u32 = 10_240;

/// Pairs with `lo <= key < hi` (empty `hi`: no upper bound). A node clamps
/// to its region too; this guards against a node that does not.
fn within(kvs: Vec<kvrpcpb::KvPair>, lo: &[u8], hi: &[u8]) -> Vec<KvPair> {
    kvs.into_iter()
        .filter(|kv| kv.key.as_slice() >= lo && (hi.is_empty() || kv.key.as_slice() < hi))
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// Where a forward scan continues after a piece read from `region`, or
/// `None` when the range `[.., end)` is exhausted.
fn forward_next(region: &Region, end: &[u8], piece_full: bool, last_key: Option<&[u8]>) -> Option<Vec<u8>> {
    if let (true, Some(last)) = (piece_full, last_key) {
        // The smallest key after `last`.
        let mut next = last.to_vec();
        next.push(0);
        return Some(next);
    }
    let region_end = &region.end_key;
    if region_end.is_empty() || (!end.is_empty() && region_end.as_slice() >= end) {
        return None;
    }
    Some(region_end.clone())
}

/// The new exclusive upper bound of a reverse scan after a piece read from
/// `region`, or `None` when the range `[lower, ..)` is exhausted.
fn reverse_next(region: &Region, lower: &[u8], piece_full: bool, last_key: Option<&[u8]>) -> Option<Vec<u8>> {
    if let (true, Some(last)) = (piece_full, last_key) {
        return Some(last.to_vec());
    }
    let region_start = &region.start_key;
    if region_start.is_empty() || region_start.as_slice() <= lower {
        return None;
    }
    Some(region_start.clone())
}

/// Up to `limit` pairs with keys in `[start, end)`, ascending.
pub(crate) async fn forward(
    exec: &Executor,
    deadline: Instant,
    start: Vec<u8>,
    end: Vec<u8>,
    limit: u32,
) -> Result<Vec<KvPair>> {
    let limit = limit as usize;
    let mut out = Vec::new();
    let mut cursor = start;
    while out.len() < limit && (end.is_empty() || cursor < end) {
        let piece_limit = (limit - out.len()).min(MAX_SCAN_LIMIT as usize) as u32;
        let (region, (got, kvs)) = exec
            .run_one(Kind::Read, deadline, Locate::Key(&cursor), |t| {
                let (lo, hi) = clamp_range(&t.region, &cursor, &end);
                let req = t.request(kvrpcpb::RawScanRequest {
                    context: Some(t.context()),
                    start_key: lo.clone(),
                    end_key: hi.clone(),
                    limit: piece_limit,
                    reverse: false,
                    ..Default::default()
                });
                async move {
                    let resp = t.call(t.client().raw_scan(req)).await?;
                    Ok((resp.kvs.len(), within(resp.kvs, &lo, &hi)))
                }
            })
            .await?;
        let last = kvs.last().map(|kv| kv.0.clone());
        out.extend(kvs);
        match forward_next(&region, &end, got >= piece_limit as usize, last.as_deref()) {
            Some(next) => cursor = next,
            None => break,
        }
    }
    out.truncate(limit);
    Ok(out)
}

/// Up to `limit` pairs with keys in `[lower, upper)`, descending.
pub(crate) async fn reverse(
    exec: &Executor,
    deadline: Instant,
    lower: Vec<u8>,
    upper: Vec<u8>,
    limit: u32,
) -> Result<Vec<KvPair>> {
    let limit = limit as usize;
    let mut out = Vec::new();
    let mut upper = upper;
    while out.len() < limit && (upper.is_empty() || upper > lower) {
        let piece_limit = (limit - out.len()).min(MAX_SCAN_LIMIT as usize) as u32;
        let at = Locate::Before { upper: &upper, lower: &lower };
        let (region, (got, kvs)) = exec
            .run_one(Kind::Read, deadline, at, |t| {
                let (lo, hi) = clamp_range(&t.region, &lower, &upper);
                let req = t.request(kvrpcpb::RawScanRequest {
                    context: Some(t.context()),
                    start_key: hi.clone(),
                    end_key: lo.clone(),
                    limit: piece_limit,
                    reverse: true,
                    ..Default::default()
                });
                async move {
                    let resp = t.call(t.client().raw_scan(req)).await?;
                    Ok((resp.kvs.len(), within(resp.kvs, &lo, &hi)))
                }
            })
            .await?;
        let last = kvs.last().map(|kv| kv.0.clone());
        out.extend(kvs);
        match reverse_next(&region, &lower, got >= piece_limit as usize, last.as_deref()) {
            Some(next) => upper = next,
            None => break,
        }
    }
    out.truncate(limit);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnemo_proto::types::RegionId;

    fn region(start: &str, end: &str) -> Region {
        Region { id: RegionId(1), start_key: start.into(), end_key: end.into(), ..Default::default() }
    }

    #[test]
    fn forward_moves_to_the_next_region_or_stops() {
        let r = region("g", "p");
        assert_eq!(forward_next(&r, b"", false, None), Some(b"p".to_vec()));
        assert_eq!(forward_next(&r, b"z", false, Some(b"h")), Some(b"p".to_vec()));
        // The range ends inside this region, or exactly at its end.
        assert_eq!(forward_next(&r, b"k", false, Some(b"h")), None);
        assert_eq!(forward_next(&r, b"p", false, None), None);
        // The last region.
        assert_eq!(forward_next(&region("p", ""), b"", false, None), None);
    }

    #[test]
    fn forward_full_piece_continues_after_its_last_key() {
        let r = region("g", "p");
        assert_eq!(forward_next(&r, b"", true, Some(b"h")), Some(b"h\0".to_vec()));
    }

    #[test]
    fn reverse_moves_to_the_previous_region_or_stops() {
        let r = region("g", "p");
        assert_eq!(reverse_next(&r, b"", false, None), Some(b"g".to_vec()));
        assert_eq!(reverse_next(&r, b"g", false, None), None);
        assert_eq!(reverse_next(&r, b"h", false, None), None);
        assert_eq!(reverse_next(&region("", "g"), b"", false, None), None);
        // A full piece continues below its last (smallest) key.
        assert_eq!(reverse_next(&r, b"", true, Some(b"m")), Some(b"m".to_vec()));
    }

    #[test]
    fn pieces_are_filtered_to_the_asked_range() {
        let kv = |k: &str| kvrpcpb::KvPair { key: k.into(), value: b"v".to_vec(), error: None };
        let got = within(vec![kv("a"), kv("g"), kv("o"), kv("p")], b"g", b"p");
        assert_eq!(got.iter().map(|p| p.0.clone()).collect::<Vec<_>>(), vec![b"g".to_vec(), b"o".to_vec()]);
        assert_eq!(within(vec![kv("zz")], b"g", b"").len(), 1);
    }
}
