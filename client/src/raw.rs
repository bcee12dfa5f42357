//! [`RawClient`]: the raw key-value API (no transactions).
//!
//! Every method runs under one deadline (`Config::timeout` from the call's
//! start) and returns an [`Error`] whose variant says what happened to the
//! data (see [`crate::error`]). Reads retry through every transient failure;
//! writes retry only through failures that prove they were not applied.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use mnemo_proto::kvrpcpb;
use tokio::time::Instant;

use crate::batch::{in_request_order, last_wins, unique_sorted, KeyRange, KvPair};
use crate::error::{Error, Result};
use crate::executor::{Executor, Locate, Pick};
use crate::pd::PdClient;
use crate::retry::Kind;
use crate::scan;

/// How many ranges of a [`RawClient::batch_scan`] are scanned at once.
const BATCH_SCAN_PARALLELISM: usize = 16;

/// Client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Total time one call may take, retries and backoff included. Default
    /// 20 s. When it runs out the call fails with `DeadlineExceeded` (or
    /// `Undetermined` if a write was in flight). Must be non-zero.
    pub timeout: Duration,
    /// Time one RPC (to a node or to PD) may take, and the connect timeout.
    /// Default 2 s. A write whose RPC times out is `Undetermined`, so keep it
    /// well above the cluster's normal write latency. Must be non-zero.
    pub rpc_timeout: Duration,
    /// **Only for the chaos harness's unsafe mode.** Default false. When
    /// true, [`RawClient::get`] sends its first attempt to a random peer of
    /// the key's region (not necessarily the leader) with `replica_read` set;
    /// on any failure it retries the normal way, at the leader. Against nodes
    /// started with `--unsafe-stale-reads` that peer answers from its own
    /// state: **reads may be stale** (not linearizable), which is what the
    /// harness uses to show its checker catches violations. Against normal
    /// nodes a follower answers `NotLeader` and the read costs one extra hop.
    /// Other calls ignore it.
    pub replica_read: bool,
    /// Send gets and puts to each node on one `BatchCommands` stream (as
    /// TiKV's Go client does) instead of one call each: fewer frames and
    /// wake-ups per request under concurrency. Default false.
    pub batch_commands: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeout: Duration::from_secs(20),
            rpc_timeout: Duration::from_secs(2),
            replica_read: false,
            batch_commands: false,
        }
    }
}

impl Config {
    /// Checks the settings; a zero timeout is an `InvalidArgument`.
    pub fn validate(&self) -> Result<()> {
        if self.timeout.is_zero() {
            return Err(Error::InvalidArgument("timeout must be non-zero".into()));
        }
        if self.rpc_timeout.is_zero() {
            return Err(Error::InvalidArgument("rpc_timeout must be non-zero".into()));
        }
        Ok(())
    }
}

/// The raw key-value client. Cheap to clone (clones share the region cache
/// and connections); safe to use from many tasks at once.
#[derive(Clone)]
pub struct RawClient {
    exec: Arc<Executor>,
    config: Config,
}

/// Checks `[start, end)` (empty `end`: +infinity). Returns false for an empty
/// range; `start > end` is an `InvalidArgument`.
fn check_range(start: &[u8], end: &[u8]) -> Result<bool> {
    if end.is_empty() || start < end {
        Ok(true)
    } else if start == end {
        Ok(false)
    } else {
        Err(Error::InvalidArgument(format!(
            "range start {:?} is after its end {:?}",
            String::from_utf8_lossy(start),
            String::from_utf8_lossy(end)
        )))
    }
}

impl RawClient {
    /// Connects to the cluster whose PD members include `pd_endpoints`
    /// (`host:port` or `http://host:port`), with [`Config::default`].
    pub async fn new(pd_endpoints: Vec<String>) -> Result<Self> {
        Self::with_config(pd_endpoints, Config::default()).await
    }

    /// Connects with the given settings.
    pub async fn with_config(pd_endpoints: Vec<String>, config: Config) -> Result<Self> {
        config.validate()?;
        let pd = PdClient::connect_with_timeout(pd_endpoints, config.rpc_timeout).await?;
        Ok(RawClient { exec: Arc::new(Executor::new(pd, config.rpc_timeout, config.batch_commands)), config })
    }

    /// The id of the cluster this client talks to.
    pub fn cluster_id(&self) -> u64 {
        self.exec.pd.cluster_id()
    }

    /// The settings in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The PD client (for region and store lookups).
    pub fn pd(&self) -> &PdClient {
        &self.exec.pd
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.timeout
    }

    /// The value of `key`, or `None` if it is absent (or expired).
    /// Linearizable, unless `Config::replica_read` is set (test-only).
    #[tracing::instrument(name = "raw_get", level = "debug", skip_all, fields(otel.kind = "client"))]
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>> {
        let key = key.into();
        let pick = if self.config.replica_read { Pick::AnyReplicaFirst } else { Pick::Leader };
        let (_, value) = self
            .exec
            .run_one_picking(Kind::Read, self.deadline(), Locate::Key(&key), pick, |t| {
                let req = t.request(kvrpcpb::RawGetRequest {
                    context: Some(t.context()),
                    key: key.clone(),
                    cf: String::new(),
                });
                async move {
                    let resp = t.call(t.raw_get(req)).await?;
                    Ok((!resp.not_found).then_some(resp.value))
                }
            })
            .await?;
        Ok(value)
    }

    /// The pairs of `keys` that exist, in the order the keys were given
    /// (each key once; absent keys are left out).
    #[tracing::instrument(name = "raw_batch_get", level = "debug", skip_all, fields(otel.kind = "client"))]
    pub async fn batch_get<K: Into<Vec<u8>>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<KvPair>> {
        let requested: Vec<Vec<u8>> = keys.into_iter().map(Into::into).collect();
        let unique = unique_sorted(requested.clone());
        let found = self
            .exec
            .run_batch(Kind::Read, self.deadline(), unique, |t, keys| {
                let req = t.request(kvrpcpb::RawBatchGetRequest {
                    context: Some(t.context()),
                    keys,
                    cf: String::new(),
                });
                async move {
                    let resp = t.call(t.client().raw_batch_get(req)).await?;
                    Ok(resp.pairs.into_iter().map(|p| (p.key, p.value)).collect::<Vec<KvPair>>())
                }
            })
            .await?;
        Ok(in_request_order(&requested, found))
    }

    /// Writes `value` under `key`, with no expiry.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<()> {
        self.put_with_ttl(key, value, 0).await
    }

    /// Writes `value` under `key`; it expires after `ttl_secs` seconds (0:
    /// never). A node without TTL support refuses a non-zero TTL with
    /// `InvalidArgument`.
    #[tracing::instrument(name = "raw_put", level = "debug", skip_all, fields(otel.kind = "client"))]
    pub async fn put_with_ttl(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        ttl_secs: u64,
    ) -> Result<()> {
        let (key, value) = (key.into(), value.into());
        self.exec
            .run_one(Kind::Write, self.deadline(), Locate::Key(&key), |t| {
                let req = t.request(kvrpcpb::RawPutRequest {
                    context: Some(t.context()),
                    key: key.clone(),
                    value: value.clone(),
                    cf: String::new(),
                    ttl: ttl_secs,
                    for_cas: true,
                });
                async move {
                    t.call(t.raw_put(req)).await?;
                    Ok(())
                }
            })
            .await?;
        Ok(())
    }

    /// Writes all `pairs` (no expiry). If a key repeats, its last pair wins.
    /// Atomic per region only: pairs in different regions are written by
    /// separate requests, so a failure after some of them were written is
    /// reported as `Undetermined`.
    #[tracing::instrument(name = "raw_batch_put", level = "debug", skip_all, fields(otel.kind = "client"))]
    pub async fn batch_put<K, V>(&self, pairs: impl IntoIterator<Item = (K, V)>) -> Result<()>
    where
        K: Into<Vec<u8>>,
        V: Into<Vec<u8>>,
    {
        let pairs = last_wins(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
        self.exec
            .run_batch(Kind::Write, self.deadline(), pairs, |t, chunk: Vec<KvPair>| {
                let ttls = vec![0; chunk.len()];
                let pairs = chunk
                    .into_iter()
                    .map(|(key, value)| kvrpcpb::KvPair { key, value, error: None })
                    .collect();
                let req = t.request(kvrpcpb::RawBatchPutRequest {
                    context: Some(t.context()),
                    pairs,
                    cf: String::new(),
                    ttl: 0,
                    for_cas: true,
                    ttls,
                });
                async move {
                    t.call(t.client().raw_batch_put(req)).await?;
                    Ok(Vec::<()>::new())
                }
            })
            .await?;
        Ok(())
    }

    /// Deletes `key` (deleting an absent key succeeds).
    #[tracing::instrument(name = "raw_delete", level = "debug", skip_all, fields(otel.kind = "client"))]
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<()> {
        let key = key.into();
        self.exec
            .run_one(Kind::Write, self.deadline(), Locate::Key(&key), |t| {
                let req = t.request(kvrpcpb::RawDeleteRequest {
                    context: Some(t.context()),
                    key: key.clone(),
                    cf: String::new(),
                    for_cas: true,
                });
                async move {
                    t.call(t.client().raw_delete(req)).await?;
                    Ok(())
                }
            })
            .await?;
        Ok(())
    }

    /// Deletes all `keys`. Atomic per region only (see [`RawClient::batch_put`]).
    #[tracing::instrument(name = "raw_batch_delete", level = "debug", skip_all, fields(otel.kind = "client"))]
    pub async fn batch_delete<K: Into<Vec<u8>>>(&self, keys: impl IntoIterator<Item = K>) -> Result<()> {
        let keys = unique_sorted(keys.into_iter().map(Into::into).collect());
        self.exec
            .run_batch(Kind::Write, self.deadline(), keys, |t, keys| {
                let req = t.request(kvrpcpb::RawBatchDeleteRequest {
                    context: Some(t.context()),
                    keys,
                    cf: String::new(),
                    for_cas: true,
                });
                async move {
                    t.call(t.client().raw_batch_delete(req)).await?;
                    Ok(Vec::<()>::new())
                }
            })
            .await?;
        Ok(())
    }

    /// Deletes every key in `[start, end)`; an empty `end` means +infinity.
    /// One request per region; atomic per region only (see
    /// [`RawClient::batch_put`]).
    #[tracing::instrument(name = "raw_delete_range", level = "debug", skip_all, fields(otel.kind = "client"))]
    pub async fn delete_range(&self, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Result<()> {
        let (start, end) = (start.into(), end.into());
        if !check_range(&start, &end)? {
            return Ok(());
        }
        // One range in, so each region gets exactly one piece of it: a retry
        // never resends a piece that already succeeded.
        self.exec
            .run_batch(Kind::Write, self.deadline(), vec![KeyRange { start, end }], |t, ranges| {
                let reqs: Vec<_> = ranges
                    .into_iter()
                    .map(|r| {
                        t.request(kvrpcpb::RawDeleteRangeRequest {
                            context: Some(t.context()),
                            start_key: r.start,
                            end_key: r.end,
                            cf: String::new(),
                        })
                    })
                    .collect();
                async move {
                    for req in reqs {
                        t.call(t.client().raw_delete_range(req)).await?;
                    }
                    Ok(Vec::<()>::new())
                }
            })
            .await?;
        Ok(())
    }

    /// Up to `limit` pairs with keys in `[start, end)` (empty `end`:
    /// +infinity), in ascending key order. Any `limit` works: the client
    /// pages through regions and asks each node for at most 10,240 keys.
    #[tracing::instrument(name = "raw_scan", level = "debug", skip_all, fields(otel.kind = "client"))]
    pub async fn scan(
        &self,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
        limit: u32,
    ) -> Result<Vec<KvPair>> {
        let (start, end) = (start.into(), end.into());
        if limit == 0 || !check_range(&start, &end)? {
            return Ok(Vec::new());
        }
        scan::forward(&self.exec, self.deadline(), start, end, limit).await
    }

    /// Up to `limit` pairs with keys in `[start, end)` (empty `end`:
    /// +infinity), in **descending** key order: the first pair is the largest
    /// key below `end`.
    #[tracing::instrument(name = "raw_scan_reverse", level = "debug", skip_all, fields(otel.kind = "client"))]
    pub async fn scan_reverse(
        &self,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
        limit: u32,
    ) -> Result<Vec<KvPair>> {
        let (start, end) = (start.into(), end.into());
        if limit == 0 || !check_range(&start, &end)? {
            return Ok(Vec::new());
        }
        scan::reverse(&self.exec, self.deadline(), start, end, limit).await
    }

    /// Scans each `(start, end)` range (as [`RawClient::scan`], up to
    /// `each_limit` pairs per range) and returns the results concatenated in
    /// the order of the ranges. Ranges are scanned concurrently, 16 at a time.
    #[tracing::instrument(name = "raw_batch_scan", level = "debug", skip_all, fields(otel.kind = "client"))]
    pub async fn batch_scan<K1, K2>(
        &self,
        ranges: impl IntoIterator<Item = (K1, K2)>,
        each_limit: u32,
    ) -> Result<Vec<KvPair>>
    where
        K1: Into<Vec<u8>>,
        K2: Into<Vec<u8>>,
    {
        let mut checked = Vec::new();
        for (start, end) in ranges {
            let (start, end) = (start.into(), end.into());
            if check_range(&start, &end)? && each_limit > 0 {
                checked.push((start, end));
            }
        }
        let deadline = self.deadline();
        let per_range: Vec<Vec<KvPair>> = futures::stream::iter(checked)
            .map(|(start, end)| scan::forward(&self.exec, deadline, start, end, each_limit))
            .buffered(BATCH_SCAN_PARALLELISM)
            .try_collect()
            .await?;
        Ok(per_range.into_iter().flatten().collect())
    }

    /// Atomically sets `key` to `new` if its current value is `expected`
    /// (`None`: the key must be absent). Returns the value before the call
    /// (`None`: absent) and whether the swap happened. A failed comparison is
    /// not an error.
    #[tracing::instrument(name = "raw_compare_and_swap", level = "debug", skip_all, fields(otel.kind = "client"))]
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
        new: impl Into<Vec<u8>>,
    ) -> Result<(Option<Vec<u8>>, bool)> {
        let (key, new) = (key.into(), new.into());
        let (_, outcome) = self
            .exec
            .run_one(Kind::Write, self.deadline(), Locate::Key(&key), |t| {
                let req = t.request(kvrpcpb::RawCasRequest {
                    context: Some(t.context()),
                    key: key.clone(),
                    value: new.clone(),
                    previous_not_exist: expected.is_none(),
                    previous_value: expected.clone().unwrap_or_default(),
                    cf: String::new(),
                    ttl: 0,
                });
                async move {
                    let resp = t.call(t.client().raw_compare_and_swap(req)).await?;
                    let previous = (!resp.previous_not_exist).then_some(resp.previous_value);
                    Ok((previous, resp.succeed))
                }
            })
            .await?;
        Ok(outcome)
    }

    /// The remaining time to live of `key` in seconds (`Some(0)`: the key
    /// never expires), or `None` if the key is absent.
    #[tracing::instrument(name = "raw_get_key_ttl", level = "debug", skip_all, fields(otel.kind = "client"))]
    pub async fn get_key_ttl(&self, key: impl Into<Vec<u8>>) -> Result<Option<u64>> {
        let key = key.into();
        let (_, ttl) = self
            .exec
            .run_one(Kind::Read, self.deadline(), Locate::Key(&key), |t| {
                let req = t.request(kvrpcpb::RawGetKeyTtlRequest {
                    context: Some(t.context()),
                    key: key.clone(),
                    cf: String::new(),
                });
                async move {
                    let resp = t.call(t.client().raw_get_key_ttl(req)).await?;
                    Ok((!resp.not_found).then_some(resp.ttl))
                }
            })
            .await?;
        Ok(ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        assert!(check_range(b"a", b"").unwrap());
        assert!(check_range(b"", b"").unwrap());
        assert!(check_range(b"a", b"b").unwrap());
        assert!(!check_range(b"b", b"b").unwrap());
        assert!(matches!(check_range(b"c", b"b"), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn default_config_matches_the_design() {
        let c = Config::default();
        assert_eq!((c.timeout, c.rpc_timeout), (Duration::from_secs(20), Duration::from_secs(2)));
        assert!(!c.replica_read, "stale replica reads must be asked for");
        assert!(c.validate().is_ok());
        assert!(Config { rpc_timeout: Duration::ZERO, ..c }.validate().is_err());
    }
}
