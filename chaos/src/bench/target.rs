//! The systems `mnemo-bench` drives, behind one trait so every workload
//! means the same on each: Mnemosyne through its client, etcd through the
//! `etcd-client` crate (linearizable reads, the default), and RocksDB in
//! process through the node's own engine with every write fsynced (the
//! ceiling a replicated store on this disk can approach).

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use mnemo_client::{Config, RawClient};
use mnemo_engine::{Cf, Engine, EngineError, RocksEngine, ScanRange, WriteBatch};

/// Why one operation failed. `undetermined`: a write that may or may not
/// have happened (timed out after it was sent).
#[derive(Debug)]
pub struct OpError {
    pub message: String,
    pub undetermined: bool,
}

impl OpError {
    fn plain(e: impl std::fmt::Display) -> Self {
        OpError { message: e.to_string(), undetermined: false }
    }
}

pub type OpResult<T> = Result<T, OpError>;

/// One key-value system under load. Every call is one client request.
pub trait Target: Send + Sync {
    /// Writes `pairs` (loading; large batches allowed).
    fn load(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> BoxFuture<'_, OpResult<()>>;
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, OpResult<()>>;
    /// Whether the key exists.
    fn get(&self, key: Vec<u8>) -> BoxFuture<'_, OpResult<bool>>;
    /// How many of `keys` exist, read in one request.
    fn batch_get(&self, keys: Vec<Vec<u8>>) -> BoxFuture<'_, OpResult<usize>>;
    /// How many pairs of `[start, end)` (at most `limit`) were read. The
    /// end bounds the work on every system alike (etcd counts the whole
    /// range of a request, whatever its limit).
    fn scan(&self, start: Vec<u8>, end: Vec<u8>, limit: usize) -> BoxFuture<'_, OpResult<usize>>;
    /// Sets `key` to `new` if it holds `expected`; whether it did.
    fn cas(&self, key: Vec<u8>, expected: Vec<u8>, new: Vec<u8>) -> BoxFuture<'_, OpResult<bool>>;
}

/// Mnemosyne through its own client (region cache, leader routing).
pub struct Mnemosyne(pub RawClient);

impl Mnemosyne {
    pub async fn connect(pd: Vec<String>, config: Config) -> Result<Self, String> {
        RawClient::with_config(pd, config).await.map(Mnemosyne).map_err(|e| e.to_string())
    }
}

fn client_error(e: mnemo_client::Error) -> OpError {
    OpError { undetermined: e.is_undetermined(), message: e.to_string() }
}

impl Target for Mnemosyne {
    fn load(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> BoxFuture<'_, OpResult<()>> {
        Box::pin(async move { self.0.batch_put(pairs).await.map_err(client_error) })
    }
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, OpResult<()>> {
        Box::pin(async move { self.0.put(key, value).await.map_err(client_error) })
    }
    fn get(&self, key: Vec<u8>) -> BoxFuture<'_, OpResult<bool>> {
        Box::pin(async move { self.0.get(key).await.map(|v| v.is_some()).map_err(client_error) })
    }
    fn batch_get(&self, keys: Vec<Vec<u8>>) -> BoxFuture<'_, OpResult<usize>> {
        Box::pin(async move { self.0.batch_get(keys).await.map(|v| v.len()).map_err(client_error) })
    }
    fn scan(&self, start: Vec<u8>, end: Vec<u8>, limit: usize) -> BoxFuture<'_, OpResult<usize>> {
        Box::pin(
            async move { self.0.scan(start, end, limit as u32).await.map(|v| v.len()).map_err(client_error) },
        )
    }
    fn cas(&self, key: Vec<u8>, expected: Vec<u8>, new: Vec<u8>) -> BoxFuture<'_, OpResult<bool>> {
        Box::pin(async move {
            self.0
                .compare_and_swap(key, Some(expected), new)
                .await
                .map(|(_, swapped)| swapped)
                .map_err(client_error)
        })
    }
}

/// etcd through `etcd-client`: reads are linearizable (etcd's default),
/// batch reads one transaction of gets, CAS a transaction comparing the
/// value.
pub struct Etcd(pub etcd_client::Client);

/// Most operations etcd accepts in one transaction (its `--max-txn-ops`).
const ETCD_MAX_TXN_OPS: usize = 128;

impl Etcd {
    pub async fn connect(endpoints: Vec<String>) -> Result<Self, String> {
        etcd_client::Client::connect(endpoints, None).await.map(Etcd).map_err(|e| e.to_string())
    }
}

fn etcd_error(e: etcd_client::Error) -> OpError {
    // A request that reached etcd and timed out may still commit.
    let undetermined = matches!(&e, etcd_client::Error::GRpcStatus(s)
        if matches!(s.code(), tonic::Code::DeadlineExceeded | tonic::Code::Unavailable | tonic::Code::Unknown));
    OpError { message: e.to_string(), undetermined }
}

impl Target for Etcd {
    fn load(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> BoxFuture<'_, OpResult<()>> {
        use etcd_client::{Txn, TxnOp};
        Box::pin(async move {
            let mut kv = self.0.kv_client();
            for chunk in pairs.chunks(ETCD_MAX_TXN_OPS) {
                let ops: Vec<TxnOp> =
                    chunk.iter().map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None)).collect();
                kv.txn(Txn::new().and_then(ops)).await.map_err(etcd_error)?;
            }
            Ok(())
        })
    }
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, OpResult<()>> {
        Box::pin(async move { self.0.kv_client().put(key, value, None).await.map(drop).map_err(etcd_error) })
    }
    fn get(&self, key: Vec<u8>) -> BoxFuture<'_, OpResult<bool>> {
        Box::pin(async move {
            let resp = self.0.kv_client().get(key, None).await.map_err(etcd_error)?;
            Ok(!resp.kvs().is_empty())
        })
    }
    fn batch_get(&self, keys: Vec<Vec<u8>>) -> BoxFuture<'_, OpResult<usize>> {
        use etcd_client::{Txn, TxnOp, TxnOpResponse};
        Box::pin(async move {
            let mut kv = self.0.kv_client();
            let mut found = 0;
            for chunk in keys.chunks(ETCD_MAX_TXN_OPS) {
                let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.clone(), None)).collect();
                let resp = kv.txn(Txn::new().and_then(ops)).await.map_err(etcd_error)?;
                found += resp
                    .op_responses()
                    .iter()
                    .filter(|r| matches!(r, TxnOpResponse::Get(g) if !g.kvs().is_empty()))
                    .count();
            }
            Ok(found)
        })
    }
    fn scan(&self, start: Vec<u8>, end: Vec<u8>, limit: usize) -> BoxFuture<'_, OpResult<usize>> {
        use etcd_client::GetOptions;
        Box::pin(async move {
            let options = GetOptions::new().with_range(end).with_limit(limit as i64);
            let resp = self.0.kv_client().get(start, Some(options)).await.map_err(etcd_error)?;
            Ok(resp.kvs().len())
        })
    }
    fn cas(&self, key: Vec<u8>, expected: Vec<u8>, new: Vec<u8>) -> BoxFuture<'_, OpResult<bool>> {
        use etcd_client::{Compare, CompareOp, Txn, TxnOp};
        Box::pin(async move {
            let txn = Txn::new()
                .when([Compare::value(key.clone(), CompareOp::Equal, expected)])
                .and_then([TxnOp::put(key, new, None)]);
            let resp = self.0.kv_client().txn(txn).await.map_err(etcd_error)?;
            Ok(resp.succeeded())
        })
    }
}

/// RocksDB in this process, opened as a node opens its engine, every write
/// fsynced (`sync = true`): no network, no replication, no raft log.
/// CAS holds a lock (one of [`CAS_STRIPES`], by key) across its read and
/// write, as a node serialises commands on one key.
pub struct Rocks {
    engine: Arc<RocksEngine>,
    cas_locks: Arc<Vec<std::sync::Mutex<()>>>,
}

const CAS_STRIPES: usize = 64;

impl Rocks {
    pub fn open(dir: &Path) -> Result<Self, String> {
        let engine = Arc::new(RocksEngine::open(dir).map_err(|e| e.to_string())?);
        let cas_locks = Arc::new((0..CAS_STRIPES).map(|_| Default::default()).collect());
        Ok(Rocks { engine, cas_locks })
    }

    /// Runs `f` on the blocking pool (RocksDB calls block, fsync above all).
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RocksEngine) -> Result<T, EngineError> + Send + 'static,
    ) -> BoxFuture<'_, OpResult<T>> {
        let engine = self.engine.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&engine))
                .await
                .map_err(OpError::plain)?
                .map_err(OpError::plain)
        })
    }
}

impl Target for Rocks {
    fn load(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> BoxFuture<'_, OpResult<()>> {
        self.blocking(move |e| {
            let mut wb = WriteBatch::new();
            for (k, v) in pairs {
                wb.put(Cf::Default, k, v);
            }
            e.write(&wb, true)
        })
    }
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, OpResult<()>> {
        self.blocking(move |e| {
            let mut wb = WriteBatch::new();
            wb.put(Cf::Default, key, value);
            e.write(&wb, true)
        })
    }
    fn get(&self, key: Vec<u8>) -> BoxFuture<'_, OpResult<bool>> {
        self.blocking(move |e| e.get(Cf::Default, &key).map(|v| v.is_some()))
    }
    fn batch_get(&self, keys: Vec<Vec<u8>>) -> BoxFuture<'_, OpResult<usize>> {
        self.blocking(move |e| {
            let snap = e.snapshot();
            let mut found = 0;
            for k in &keys {
                found += usize::from(snap.get(Cf::Default, k)?.is_some());
            }
            Ok(found)
        })
    }
    fn scan(&self, start: Vec<u8>, end: Vec<u8>, limit: usize) -> BoxFuture<'_, OpResult<usize>> {
        self.blocking(move |e| {
            let range = ScanRange { start: &start, end: &end, reverse: false };
            mnemo_engine::scan_collect(e, Cf::Default, range, limit).map(|v| v.len())
        })
    }
    fn cas(&self, key: Vec<u8>, expected: Vec<u8>, new: Vec<u8>) -> BoxFuture<'_, OpResult<bool>> {
        let locks = self.cas_locks.clone();
        self.blocking(move |e| {
            let stripe =
                key.iter().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(*b as usize)) % CAS_STRIPES;
            let _held = locks[stripe].lock().unwrap_or_else(|p| p.into_inner());
            if e.get(Cf::Default, &key)?.as_deref() != Some(&expected[..]) {
                return Ok(false);
            }
            let mut wb = WriteBatch::new();
            wb.put(Cf::Default, key, new);
            e.write(&wb, true).map(|()| true)
        })
    }
}
