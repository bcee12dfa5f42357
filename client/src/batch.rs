//! Cutting multi-key requests along region boundaries, and putting the
//! answers back together.
//!
//! A batch is a list of *pieces*: keys, key-value pairs or key ranges. Each
//! piece is placed in the region that holds its start key; a range that runs
//! past that region's end is split, and the rest placed again. Pieces of one
//! region are sent together, in chunks small enough for one request.

use std::collections::HashMap;

use mnemo_proto::types::{Region, RegionId};

use crate::region_cache::{CachedRegion, RegionCache};

/// A key-value pair as the client returns and accepts it.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// Most pieces in one request (the node refuses batches over 10,000 keys).
pub(crate) const MAX_BATCH_KEYS: usize = 4096;
/// Most payload bytes in one request (keys plus values), so a batch stays
/// well under the node's gRPC message and raft entry limits. A single piece
/// over this size travels alone.
pub(crate) const MAX_BATCH_BYTES: usize = 2 << 20;

/// Something a batch request carries, placeable in a region.
pub(crate) trait Piece: Clone + Send + Sync {
    /// The key that decides which region the piece goes to.
    fn start(&self) -> &[u8];
    /// Trims the piece to `region` (which contains its start) and returns
    /// the part beyond the region's end, if any.
    fn split_off(&mut self, region: &Region) -> Option<Self>;
    /// Payload bytes, for chunking.
    fn size(&self) -> usize;
}

impl Piece for Vec<u8> {
    fn start(&self) -> &[u8] {
        self
    }
    fn split_off(&mut self, _: &Region) -> Option<Self> {
        None
    }
    fn size(&self) -> usize {
        self.len()
    }
}

impl Piece for KvPair {
    fn start(&self) -> &[u8] {
        &self.0
    }
    fn split_off(&mut self, _: &Region) -> Option<Self> {
        None
    }
    fn size(&self) -> usize {
        self.0.len() + self.1.len()
    }
}

/// A key range `[start, end)`; an empty `end` means +infinity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRange {
    pub(crate) start: Vec<u8>,
    pub(crate) end: Vec<u8>,
}

impl Piece for KeyRange {
    fn start(&self) -> &[u8] {
        &self.start
    }
    fn split_off(&mut self, region: &Region) -> Option<Self> {
        let region_end = &region.end_key;
        if region_end.is_empty() || (!self.end.is_empty() && self.end <= *region_end) {
            return None;
        }
        let rest = KeyRange { start: region_end.clone(), end: std::mem::take(&mut self.end) };
        self.end = region_end.clone();
        Some(rest)
    }
    fn size(&self) -> usize {
        self.start.len() + self.end.len()
    }
}

/// Pieces grouped by region, in the order regions were first seen.
pub(crate) struct Groups<I> {
    groups: Vec<(CachedRegion, Vec<I>)>,
    index: HashMap<RegionId, usize>,
}

impl<I: Piece> Groups<I> {
    pub(crate) fn new() -> Self {
        Groups { groups: Vec::new(), index: HashMap::new() }
    }

    /// Places `items` in the regions the cache knows; returns the pieces
    /// whose start key no cached region contains (to be located through PD).
    pub(crate) fn place(&mut self, cache: &RegionCache, items: Vec<I>) -> Vec<I> {
        let mut missing = Vec::new();
        for mut item in items {
            loop {
                let Some(cached) = cache.get_by_key(item.start()) else {
                    missing.push(item);
                    break;
                };
                let rest = item.split_off(&cached.region);
                let id = cached.region.id;
                let slot = match self.index.get(&id) {
                    Some(&i) => i,
                    None => {
                        self.groups.push((cached, Vec::new()));
                        self.index.insert(id, self.groups.len() - 1);
                        self.groups.len() - 1
                    }
                };
                self.groups[slot].1.push(item);
                match rest {
                    Some(r) => item = r,
                    None => break,
                }
            }
        }
        missing
    }

    /// The groups cut into chunks of at most `max_items` pieces and about
    /// `max_bytes` payload bytes each.
    pub(crate) fn into_chunks(self, max_items: usize, max_bytes: usize) -> Vec<(CachedRegion, Vec<I>)> {
        let mut out = Vec::new();
        for (region, items) in self.groups {
            let mut chunk: Vec<I> = Vec::new();
            let mut bytes = 0;
            for item in items {
                let size = item.size();
                if !chunk.is_empty() && (chunk.len() >= max_items || bytes + size > max_bytes) {
                    out.push((region.clone(), std::mem::take(&mut chunk)));
                    bytes = 0;
                }
                bytes += size;
                chunk.push(item);
            }
            if !chunk.is_empty() {
                out.push((region, chunk));
            }
        }
        out
    }
}

/// Keys sorted, each once: a batch never names a key twice.
pub(crate) fn unique_sorted(mut keys: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    keys.sort();
    keys.dedup();
    keys
}

/// Pairs sorted by key, each key once; when a key repeats, its last pair in
/// the input wins (as if the puts ran in order).
pub(crate) fn last_wins(mut pairs: Vec<KvPair>) -> Vec<KvPair> {
    // Stable sort keeps equal keys in input order, so the last of a run is
    // the last given.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<KvPair> = Vec::with_capacity(pairs.len());
    for pair in pairs {
        match out.last_mut() {
            Some(last) if last.0 == pair.0 => *last = pair,
            _ => out.push(pair),
        }
    }
    out
}

/// The found pairs in the order their keys were requested, each key once.
pub(crate) fn in_request_order(requested: &[Vec<u8>], found: Vec<KvPair>) -> Vec<KvPair> {
    let mut found: HashMap<Vec<u8>, Vec<u8>> = found.into_iter().collect();
    requested.iter().filter_map(|k| found.remove_entry(k.as_slice())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnemo_proto::types::RegionEpoch;

    fn region(id: u64, start: &str, end: &str) -> Region {
        Region {
            id: RegionId(id),
            start_key: start.into(),
            end_key: end.into(),
            epoch: RegionEpoch { conf_ver: 1, version: 1 },
            peers: vec![],
        }
    }

    /// ["", "g") = 1, ["g", "p") = 2, ["p", +inf) = 3.
    fn cache() -> RegionCache {
        let c = RegionCache::new();
        c.insert(region(1, "", "g"), None);
        c.insert(region(2, "g", "p"), None);
        c.insert(region(3, "p", ""), None);
        c
    }

    fn shape<I: Clone>(chunks: &[(CachedRegion, Vec<I>)]) -> Vec<(u64, Vec<I>)> {
        chunks.iter().map(|(c, items)| (c.region.id.0, items.clone())).collect()
    }

    fn k(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn keys_are_grouped_by_region() {
        let mut g = Groups::new();
        let missing = g.place(&cache(), vec![k("a"), k("q"), k("h"), k("b"), k("z")]);
        assert!(missing.is_empty());
        assert_eq!(
            shape(&g.into_chunks(100, 1 << 20)),
            vec![(1, vec![k("a"), k("b")]), (3, vec![k("q"), k("z")]), (2, vec![k("h")])]
        );
    }

    #[test]
    fn uncached_keys_are_reported_missing() {
        let c = RegionCache::new();
        c.insert(region(2, "g", "p"), None);
        let mut g = Groups::new();
        let missing = g.place(&c, vec![k("a"), k("h"), k("q")]);
        assert_eq!(missing, vec![k("a"), k("q")]);
        assert_eq!(shape(&g.into_chunks(100, 1 << 20)), vec![(2, vec![k("h")])]);
    }

    #[test]
    fn ranges_are_split_at_region_ends() {
        let mut g = Groups::new();
        let r = |s: &str, e: &str| KeyRange { start: k(s), end: k(e) };
        let missing = g.place(&cache(), vec![r("c", "q"), r("x", "")]);
        assert!(missing.is_empty());
        assert_eq!(
            shape(&g.into_chunks(100, 1 << 20)),
            vec![(1, vec![r("c", "g")]), (2, vec![r("g", "p")]), (3, vec![r("p", "q"), r("x", "")])]
        );
    }

    #[test]
    fn open_range_covers_every_following_region() {
        let mut g = Groups::new();
        let missing = g.place(&cache(), vec![KeyRange { start: k("h"), end: vec![] }]);
        assert!(missing.is_empty());
        let chunks = g.into_chunks(100, 1 << 20);
        assert_eq!(
            shape(&chunks),
            vec![
                (2, vec![KeyRange { start: k("h"), end: k("p") }]),
                (3, vec![KeyRange { start: k("p"), end: vec![] }])
            ]
        );
    }

    #[test]
    fn chunks_respect_count_and_bytes() {
        let mut g = Groups::new();
        g.place(&cache(), vec![k("a"), k("b"), k("c"), k("d"), k("e")]);
        let chunks = g.into_chunks(2, 1 << 20);
        assert_eq!(
            shape(&chunks),
            vec![(1, vec![k("a"), k("b")]), (1, vec![k("c"), k("d")]), (1, vec![k("e")])]
        );

        let mut g = Groups::new();
        let big = (k("a"), vec![0u8; 11]);
        g.place(&cache(), vec![big.clone(), (k("b"), vec![]), (k("c"), vec![])]);
        // The 12-byte pair fills a 12-byte chunk on its own.
        let chunks = g.into_chunks(100, 12);
        assert_eq!(shape(&chunks), vec![(1, vec![big]), (1, vec![(k("b"), vec![]), (k("c"), vec![])])]);
    }

    #[test]
    fn duplicates_collapse() {
        assert_eq!(unique_sorted(vec![k("b"), k("a"), k("b")]), vec![k("a"), k("b")]);
        let pairs = vec![(k("b"), k("1")), (k("a"), k("2")), (k("b"), k("3"))];
        assert_eq!(last_wins(pairs), vec![(k("a"), k("2")), (k("b"), k("3"))]);
    }

    #[test]
    fn answers_come_back_in_request_order() {
        let requested = vec![k("z"), k("a"), k("m"), k("a")];
        let found = vec![(k("a"), k("1")), (k("z"), k("2"))];
        assert_eq!(in_request_order(&requested, found), vec![(k("z"), k("2")), (k("a"), k("1"))]);
    }
}
