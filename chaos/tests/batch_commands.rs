//! `BatchCommands`: many RawKV requests on one stream, against a real
//! 3-node cluster — through the client (`Config::batch_commands`), and
//! straight on the wire to check ids, batching and errors.

use std::sync::Arc;
use std::time::Duration;

use mnemo_chaos::cluster::{Cluster, ClusterConfig};
use mnemo_client::raw::Config;
use mnemo_client::{Error, RawClient};
use mnemo_proto::kvrpcpb;
use mnemo_proto::tikvpb::batch_commands_request::request::Cmd as Ask;
use mnemo_proto::tikvpb::batch_commands_request::Request as BatchAsk;
use mnemo_proto::tikvpb::batch_commands_response::response::Cmd as Answer;
use mnemo_proto::tikvpb::tikv_client::TikvClient;
use mnemo_proto::tikvpb::{BatchCommandsEmptyRequest, BatchCommandsRequest};

async fn batching_client(cluster: &Cluster) -> Arc<RawClient> {
    let config = Config { batch_commands: true, ..Config::default() };
    Arc::new(RawClient::with_config(vec![cluster.pd_endpoint()], config).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_gets_and_puts_answer_each_caller_and_survive_a_leader_kill() {
    let mut cluster = Cluster::start(ClusterConfig::default());
    cluster.wait_replicated(3, Duration::from_secs(60));
    let client = batching_client(&cluster).await;
    // 64 callers at once: their requests share stream messages, and every
    // caller gets its own answer.
    let writers: Vec<_> = (0..64u32)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                for j in 0..20u32 {
                    let (k, v) = (format!("k{i:02}-{j:02}"), format!("v{i}-{j}"));
                    c.put(k.clone().into_bytes(), v.clone().into_bytes()).await.unwrap();
                    assert_eq!(c.get(k.into_bytes()).await.unwrap(), Some(v.into_bytes()));
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    // They went on the stream: the nodes counted batched commands.
    let batched: f64 = (0..3).filter_map(|i| cluster.node_metric(i, "mnemo_batched_commands_total")).sum();
    assert!(batched >= 64.0 * 20.0 * 2.0, "gets and puts were batched ({batched} counted)");
    // Bad input gets the same clear error as without batching; nothing written.
    let huge = vec![b'k'; 64 << 10];
    match client.put(huge.clone(), b"v".to_vec()).await {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("key"), "{m}"),
        other => panic!("an oversized key must be refused: {other:?}"),
    }
    assert!(matches!(client.get(huge).await, Err(Error::InvalidArgument(_))));
    // The leader's node dies: its stream breaks, the client fails over to
    // the new leader on a new stream, and every acknowledged write is there.
    let leader = cluster.leader_node_of(b"k").expect("a leader");
    cluster.kill_node(leader);
    // A write that went on the old stream before the client saw it break
    // is `Undetermined` (it may have reached the node before it died): the
    // caller decides, and writing the same value again is safe here.
    let mut attempts = 0;
    while let Err(e) = client.put(b"after".to_vec(), b"kill".to_vec()).await {
        attempts += 1;
        assert!(matches!(e, Error::Undetermined(_)) && attempts < 3, "put after the kill: {e:?}");
    }
    for i in 0..64u32 {
        let k = format!("k{i:02}-19");
        assert_eq!(client.get(k.into_bytes()).await.unwrap(), Some(format!("v{i}-19").into_bytes()));
    }
    assert_eq!(client.get(b"after".to_vec()).await.unwrap(), Some(b"kill".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_answers_under_request_ids_in_completion_order() {
    let cluster = Cluster::start(ClusterConfig::default());
    cluster.wait_replicated(3, Duration::from_secs(60));
    // Any node answers an Empty command; an unknown command kind gets an
    // answer without a cmd.
    let node = format!("http://{}", cluster.node_addr(0));
    let mut tikv = TikvClient::connect(node).await.unwrap();
    let ask = |cmd: Option<Ask>| BatchAsk { cmd };
    let slow = Ask::Empty(BatchCommandsEmptyRequest { test_id: 1, delay_time: 300 });
    let fast = Ask::Empty(BatchCommandsEmptyRequest { test_id: 2, delay_time: 0 });
    let bad_put =
        Ask::RawPut(kvrpcpb::RawPutRequest { key: Vec::new(), value: b"v".to_vec(), ..Default::default() });
    let first = BatchCommandsRequest {
        requests: vec![ask(Some(slow)), ask(Some(fast)), ask(None), ask(Some(bad_put))],
        request_ids: vec![10, 20, 30, 40],
    };
    let requests = futures::stream::iter(vec![first]);
    let mut answers = tikv.batch_commands(requests).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while let Some(batch) = answers.message().await.unwrap() {
        assert_eq!(batch.request_ids.len(), batch.responses.len());
        seen.extend(batch.request_ids.into_iter().zip(batch.responses.into_iter().map(|r| r.cmd)));
    }
    let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 4, "one answer per request: {ids:?}");
    assert_eq!(ids.last(), Some(&10), "the slow command answers last: {ids:?}");
    for (id, cmd) in &seen {
        match (id, cmd) {
            (10, Some(Answer::Empty(e))) => assert_eq!(e.test_id, 1),
            (20, Some(Answer::Empty(e))) => assert_eq!(e.test_id, 2),
            (30, None) => {}
            (40, Some(Answer::RawPut(r))) => assert!(r.error.contains("key"), "empty key refused: {r:?}"),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // Ids and requests that do not pair up end the stream with an error.
    let broken = BatchCommandsRequest { requests: vec![ask(None)], request_ids: vec![] };
    let mut answers = tikv.batch_commands(futures::stream::iter(vec![broken])).await.unwrap().into_inner();
    let status = answers.message().await.expect_err("unpaired ids are refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}
