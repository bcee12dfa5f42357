//! Where the metadata lives in the engine (`Cf::Meta`), and its encoding.
//!
//! ```text
//! pd/cluster_id            u64 big-endian
//! pd/bootstrapped          [1]
//! pd/id_window_end         u64 big-endian
//! pd/tso_bound_ms          u64 big-endian
//! pd/config_overrides      JSON object: dotted config key → value as JSON text
//! pd/schedulers            JSON array of active scheduler names (absent: the defaults)
//! pd/removed_stores        JSON array of the ids of Tombstone stores forgotten (never to return)
//! pd/member/<id u64 BE>    JSON: name, member id, peer and client URL
//! pd/store/<id u64 BE>     metapb.Store (protobuf)
//! pd/region/<id u64 BE>    metapb.Region (protobuf)
//! ```
//!
//! The `pd/` prefix keeps PD's records apart should the engine ever be
//! shared; protobuf keeps the records readable by kvproto tooling.

use std::collections::BTreeMap;

use mnemo_engine::{Cf, Engine, ScanRange, WriteBatch};
use mnemo_proto::metapb;
use mnemo_proto::types::{Region, RegionId, StoreId};
use prost::Message;

use crate::error::{Error, Result};
use crate::member::Member;
use crate::store::StoreMeta;

pub(super) const CLUSTER_ID: &[u8] = b"pd/cluster_id";
pub(super) const BOOTSTRAPPED: &[u8] = b"pd/bootstrapped";
pub(super) const ID_WINDOW_END: &[u8] = b"pd/id_window_end";
pub(super) const TSO_BOUND: &[u8] = b"pd/tso_bound_ms";
pub(super) const CONFIG_OVERRIDES: &[u8] = b"pd/config_overrides";
pub(super) const SCHEDULERS: &[u8] = b"pd/schedulers";
pub(super) const REMOVED_STORES: &[u8] = b"pd/removed_stores";
const STORE_PREFIX: &[u8] = b"pd/store/";
const MEMBER_PREFIX: &[u8] = b"pd/member/";
const REGION_PREFIX: &[u8] = b"pd/region/";

pub(super) fn store_key(id: StoreId) -> Vec<u8> {
    [STORE_PREFIX, &id.0.to_be_bytes()].concat()
}

pub(super) fn region_key(id: RegionId) -> Vec<u8> {
    [REGION_PREFIX, &id.0.to_be_bytes()].concat()
}

pub(super) fn put_u64(wb: &mut WriteBatch, key: &[u8], v: u64) {
    wb.put(Cf::Meta, key, v.to_be_bytes());
}

pub(super) fn put_store(wb: &mut WriteBatch, s: &StoreMeta) {
    wb.put(Cf::Meta, store_key(s.id), metapb::Store::from(s).encode_to_vec());
}

pub(super) fn delete_store(wb: &mut WriteBatch, id: StoreId) {
    wb.delete(Cf::Meta, store_key(id));
}

pub(super) fn put_region(wb: &mut WriteBatch, r: &Region) {
    wb.put(Cf::Meta, region_key(r.id), metapb::Region::from(r).encode_to_vec());
}

pub(super) fn delete_region(wb: &mut WriteBatch, id: RegionId) {
    wb.delete(Cf::Meta, region_key(id));
}

fn corrupt(key: &[u8], reason: impl ToString) -> Error {
    Error::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: reason.to_string() }
}

pub(super) fn get_u64(engine: &dyn Engine, key: &[u8]) -> Result<Option<u64>> {
    engine.get(Cf::Meta, key)?.map(|v| decode_u64(key, &v)).transpose()
}

pub(super) fn decode_u64(key: &[u8], v: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = v.try_into().map_err(|_| corrupt(key, "expected 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

pub(super) fn put_overrides(wb: &mut WriteBatch, overrides: &BTreeMap<String, String>) {
    wb.put(Cf::Meta, CONFIG_OVERRIDES, serde_json::to_vec(overrides).expect("a string map serializes"));
}

pub(super) fn get_overrides(engine: &dyn Engine) -> Result<BTreeMap<String, String>> {
    engine
        .get(Cf::Meta, CONFIG_OVERRIDES)?
        .map(|v| decode_overrides(&v))
        .transpose()
        .map(Option::unwrap_or_default)
}

pub(super) fn decode_overrides(v: &[u8]) -> Result<BTreeMap<String, String>> {
    serde_json::from_slice(v).map_err(|e| corrupt(CONFIG_OVERRIDES, e))
}

pub(super) fn put_schedulers(wb: &mut WriteBatch, names: &[String]) {
    wb.put(Cf::Meta, SCHEDULERS, serde_json::to_vec(names).expect("a string list serializes"));
}

pub(super) fn get_schedulers(engine: &dyn Engine) -> Result<Option<Vec<String>>> {
    engine.get(Cf::Meta, SCHEDULERS)?.map(|v| decode_schedulers(&v)).transpose()
}

pub(super) fn put_removed_stores(wb: &mut WriteBatch, ids: &std::collections::BTreeSet<StoreId>) {
    let ids: Vec<u64> = ids.iter().map(|s| s.0).collect();
    wb.put(Cf::Meta, REMOVED_STORES, serde_json::to_vec(&ids).expect("an id list serializes"));
}

pub(super) fn get_removed_stores(engine: &dyn Engine) -> Result<std::collections::BTreeSet<StoreId>> {
    Ok(engine
        .get(Cf::Meta, REMOVED_STORES)?
        .map(|v| decode_removed_stores(&v))
        .transpose()?
        .unwrap_or_default())
}

pub(super) fn decode_removed_stores(v: &[u8]) -> Result<std::collections::BTreeSet<StoreId>> {
    let ids: Vec<u64> = serde_json::from_slice(v).map_err(|e| corrupt(REMOVED_STORES, e))?;
    Ok(ids.into_iter().map(StoreId).collect())
}

pub(super) fn decode_schedulers(v: &[u8]) -> Result<Vec<String>> {
    serde_json::from_slice(v).map_err(|e| corrupt(SCHEDULERS, e))
}

pub(super) fn is_set(engine: &dyn Engine, key: &[u8]) -> Result<bool> {
    Ok(engine.get(Cf::Meta, key)?.is_some())
}

fn member_key(id: u64) -> Vec<u8> {
    [MEMBER_PREFIX, &id.to_be_bytes()].concat()
}

pub(super) fn put_member(wb: &mut WriteBatch, m: &Member) {
    wb.put(Cf::Meta, member_key(m.member_id), serde_json::to_vec(m).expect("a member serializes"));
}

pub(super) fn delete_member(wb: &mut WriteBatch, id: u64) {
    wb.delete(Cf::Meta, member_key(id));
}

/// Every published member.
pub(super) fn load_members(engine: &dyn Engine) -> Result<Vec<Member>> {
    scan_prefix(engine, MEMBER_PREFIX, decode_member)
}

/// Every persisted store.
pub(super) fn load_stores(engine: &dyn Engine) -> Result<Vec<StoreMeta>> {
    scan_prefix(engine, STORE_PREFIX, decode_store)
}

/// Every persisted region.
pub(super) fn load_regions(engine: &dyn Engine) -> Result<Vec<Region>> {
    scan_prefix(engine, REGION_PREFIX, decode_region)
}

fn decode_member(k: &[u8], v: &[u8]) -> Result<Member> {
    serde_json::from_slice(v).map_err(|e| corrupt(k, e))
}

fn decode_store(k: &[u8], v: &[u8]) -> Result<StoreMeta> {
    metapb::Store::decode(v).map(|s| StoreMeta::from(&s)).map_err(|e| corrupt(k, e))
}

fn decode_region(k: &[u8], v: &[u8]) -> Result<Region> {
    metapb::Region::decode(v).map(|r| Region::from(&r)).map_err(|e| corrupt(k, e))
}

/// One record as another writer left it (`value` `None`: deleted), by
/// what it holds; see [`super::StateMachine::apply_record`].
pub(super) enum Record {
    ClusterId(u64),
    Bootstrapped(bool),
    IdWindowEnd(u64),
    TsoBound(u64),
    ConfigOverrides(BTreeMap<String, String>),
    Schedulers(Option<Vec<String>>),
    RemovedStores(std::collections::BTreeSet<StoreId>),
    Member(u64, Option<Member>),
    Store(StoreId, Option<StoreMeta>),
    Region(RegionId, Option<Region>),
    /// A key this version does not know (a newer member wrote it).
    Unknown,
}

/// Decodes the record at `key` (see the layout above).
pub(super) fn decode_record(key: &[u8], value: Option<&[u8]>) -> Result<Record> {
    let u64_or_0 =
        |v: Option<&[u8]>| v.map(|v| decode_u64(key, v)).transpose().map(Option::unwrap_or_default);
    let id = |prefix: &[u8]| -> Result<u64> {
        let bytes: [u8; 8] =
            key[prefix.len()..].try_into().map_err(|_| corrupt(key, "expected an 8-byte id"))?;
        Ok(u64::from_be_bytes(bytes))
    };
    Ok(match key {
        CLUSTER_ID => Record::ClusterId(u64_or_0(value)?),
        BOOTSTRAPPED => Record::Bootstrapped(value.is_some()),
        ID_WINDOW_END => Record::IdWindowEnd(u64_or_0(value)?),
        TSO_BOUND => Record::TsoBound(u64_or_0(value)?),
        CONFIG_OVERRIDES => {
            Record::ConfigOverrides(value.map(decode_overrides).transpose()?.unwrap_or_default())
        }
        SCHEDULERS => Record::Schedulers(value.map(decode_schedulers).transpose()?),
        REMOVED_STORES => {
            Record::RemovedStores(value.map(decode_removed_stores).transpose()?.unwrap_or_default())
        }
        k if k.starts_with(MEMBER_PREFIX) => {
            Record::Member(id(MEMBER_PREFIX)?, value.map(|v| decode_member(k, v)).transpose()?)
        }
        k if k.starts_with(STORE_PREFIX) => {
            Record::Store(StoreId(id(STORE_PREFIX)?), value.map(|v| decode_store(k, v)).transpose()?)
        }
        k if k.starts_with(REGION_PREFIX) => {
            Record::Region(RegionId(id(REGION_PREFIX)?), value.map(|v| decode_region(k, v)).transpose()?)
        }
        _ => Record::Unknown,
    })
}

fn scan_prefix<T>(
    engine: &dyn Engine,
    prefix: &[u8],
    mut decode: impl FnMut(&[u8], &[u8]) -> Result<T>,
) -> Result<Vec<T>> {
    // The prefixes end in '/', so replacing it with the next byte bounds the scan.
    let mut end = prefix.to_vec();
    *end.last_mut().expect("prefix is not empty") += 1;
    let mut out = Vec::new();
    let mut failure = None;
    engine.scan(Cf::Meta, ScanRange { start: prefix, end: &end, reverse: false }, &mut |k, v| {
        match decode(k, v) {
            Ok(item) => out.push(item),
            Err(e) => failure = Some(e),
        }
        failure.is_none()
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
