//! Encoding and decoding what every raw write and read puts on the wire:
//! the client's `RawPut`/`RawGet`/`RawBatchGet` requests and responses, and
//! the `RaftCommand` a put becomes in the raft log (16 B keys, 256 B
//! values, as `make bench-compare`). `cargo bench -p mnemo-proto`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mnemo_proto::kvrpcpb::{
    Context, KvPair, RawBatchGetRequest, RawBatchGetResponse, RawGetRequest, RawGetResponse, RawPutRequest,
};
use mnemo_proto::metapb::{Peer, RegionEpoch};
use mnemo_proto::raft_serverpb::{Mutation, MutationOp, RaftCommand, RaftRequestHeader};
use prost::Message;

fn context() -> Context {
    Context {
        region_id: 1234,
        region_epoch: Some(RegionEpoch { conf_ver: 5, version: 17 }),
        peer: Some(Peer { id: 4321, store_id: 2, ..Default::default() }),
        ..Default::default()
    }
}

fn key(i: u8) -> Vec<u8> {
    let mut k = b"user-key-0000000".to_vec();
    k[15] = i;
    k
}

/// Encodes `msg`, then benchmarks encoding it and decoding the bytes.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(c: &mut Criterion, name: &str, msg: M) {
    let bytes = msg.encode_to_vec();
    assert_eq!(M::decode(bytes.as_slice()).unwrap(), msg);
    let mut group = c.benchmark_group(format!("codec/{name}"));
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode", |b| b.iter(|| std::hint::black_box(&msg).encode_to_vec()));
    group.bench_function("decode", |b| b.iter(|| M::decode(std::hint::black_box(bytes.as_slice())).unwrap()));
    group.finish();
}

fn codec(c: &mut Criterion) {
    let value = vec![b'v'; 256];
    round_trip(
        c,
        "raw_put_request",
        RawPutRequest { context: Some(context()), key: key(1), value: value.clone(), ..Default::default() },
    );
    round_trip(
        c,
        "raw_get_request",
        RawGetRequest { context: Some(context()), key: key(1), cf: String::new() },
    );
    round_trip(c, "raw_get_response", RawGetResponse { value: value.clone(), ..Default::default() });
    round_trip(
        c,
        "raw_batch_get_request_10",
        RawBatchGetRequest { context: Some(context()), keys: (0..10).map(key).collect(), cf: String::new() },
    );
    round_trip(
        c,
        "raw_batch_get_response_10",
        RawBatchGetResponse {
            region_error: None,
            pairs: (0..10).map(|i| KvPair { error: None, key: key(i), value: value.clone() }).collect(),
        },
    );
    round_trip(
        c,
        "raft_command_put",
        RaftCommand {
            header: Some(RaftRequestHeader {
                region_id: 1234,
                region_epoch: Some(RegionEpoch { conf_ver: 5, version: 17 }),
                ..Default::default()
            }),
            mutations: vec![Mutation { op: MutationOp::Put as i32, key: key(1), value, expire_at_ms: 0 }],
            proposed_at_ms: 1_796_000_000_000,
            ..Default::default()
        },
    );
}

criterion_group!(benches, codec);
criterion_main!(benches);
