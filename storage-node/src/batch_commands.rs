//! `BatchCommands`: many RawKV requests on one gRPC stream (TiKV's batch
//! commands, which TiKV's Go client uses by default).
//!
//! A unary call costs an HTTP/2 stream, headers and trailers, a task wake-up
//! and a `writev` for its answer; under load those, not raft, were most of a
//! node's CPU (`docs/performance.md`). On the stream each message carries any
//! number of requests, each under a request id; the node runs them
//! concurrently through the same handlers as the unary RPCs and sends the
//! answers back batched: every answer ready when one completes goes in the
//! same message, under its request's id, in completion order.
//!
//! Errors: a region error is in the answer, as for unary calls. Bad input,
//! which a unary call answers with `INVALID_ARGUMENT`, goes into the
//! answer's `error` string where the message has one (puts, gets, deletes);
//! any other failure (the store loop stopping, an engine error), and bad
//! input to a batch get or scan (no `error` field), is answered with no
//! `cmd`, as is a command kind the node does not serve: the client treats
//! that as the internal error it is.
//!
//! An answer message holds at most [`MAX_ANSWER_BYTES`] (more wait for the
//! next), so large values never push one past the gRPC message limit.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use mnemo_proto::kvrpcpb;
use mnemo_proto::tikvpb::batch_commands_request::request::Cmd as Ask;
use mnemo_proto::tikvpb::batch_commands_response::response::Cmd as Answer;
use mnemo_proto::tikvpb::batch_commands_response::Response as BatchAnswer;
use mnemo_proto::tikvpb::tikv_server::Tikv;
use mnemo_proto::tikvpb::{BatchCommandsEmptyResponse, BatchCommandsRequest, BatchCommandsResponse};
use prost::Message as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::service::KvService;

/// The answer stream of one `BatchCommands` call.
pub type AnswerStream = Pin<Box<dyn Stream<Item = Result<BatchCommandsResponse, Status>> + Send>>;

/// Answer messages queued for the client before the node stops reading
/// more requests from it (back-pressure).
const ANSWERS_QUEUED: usize = 64;

/// Commands of one stream running at once; past it the node reads no more
/// of the client's messages until some are answered (HTTP/2 flow control
/// then holds the client back).
const MAX_RUNNING: usize = 4096;

/// Bytes of answers past which a message is sent without waiting for more.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Longest wait an `Empty` test command may ask for.
const MAX_EMPTY_DELAY: Duration = Duration::from_secs(10);

/// An answer type's `error` string, where it has one.
trait ErrorField: Sized + Default {
    /// The answer carrying `msg`, or `None` if the type has no error field.
    fn with_error(msg: String) -> Option<Self>;
}

macro_rules! error_field {
    (with: $($t:ty),*) => {$(
        impl ErrorField for $t {
            fn with_error(msg: String) -> Option<Self> {
                Some(Self { error: msg, ..Default::default() })
            }
        }
    )*};
    (without: $($t:ty),*) => {$(
        impl ErrorField for $t {
            fn with_error(_: String) -> Option<Self> {
                None
            }
        }
    )*};
}
error_field!(with: kvrpcpb::RawGetResponse, kvrpcpb::RawPutResponse, kvrpcpb::RawBatchPutResponse,
    kvrpcpb::RawDeleteResponse, kvrpcpb::RawBatchDeleteResponse, kvrpcpb::RawDeleteRangeResponse);
error_field!(without: kvrpcpb::RawBatchGetResponse, kvrpcpb::RawScanResponse, kvrpcpb::RawBatchScanResponse);

fn answer<T: ErrorField>(r: Result<Response<T>, Status>, wrap: fn(T) -> Answer) -> Option<Answer> {
    match r {
        Ok(resp) => Some(wrap(resp.into_inner())),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            T::with_error(status.message().to_string()).map(wrap)
        }
        Err(_) => None,
    }
}

/// Runs one batched command through the unary handler of its kind.
async fn run(svc: Arc<KvService>, id: u64, ask: Option<Ask>) -> (u64, BatchAnswer) {
    let cmd = match ask {
        Some(Ask::RawGet(r)) => answer(svc.raw_get(Request::new(r)).await, Answer::RawGet),
        Some(Ask::RawBatchGet(r)) => answer(svc.raw_batch_get(Request::new(r)).await, Answer::RawBatchGet),
        Some(Ask::RawPut(r)) => answer(svc.raw_put(Request::new(r)).await, Answer::RawPut),
        Some(Ask::RawBatchPut(r)) => answer(svc.raw_batch_put(Request::new(r)).await, Answer::RawBatchPut),
        Some(Ask::RawDelete(r)) => answer(svc.raw_delete(Request::new(r)).await, Answer::RawDelete),
        Some(Ask::RawBatchDelete(r)) => {
            answer(svc.raw_batch_delete(Request::new(r)).await, Answer::RawBatchDelete)
        }
        Some(Ask::RawScan(r)) => answer(svc.raw_scan(Request::new(r)).await, Answer::RawScan),
        Some(Ask::RawDeleteRange(r)) => {
            answer(svc.raw_delete_range(Request::new(r)).await, Answer::RawDeleteRange)
        }
        Some(Ask::RawBatchScan(r)) => answer(svc.raw_batch_scan(Request::new(r)).await, Answer::RawBatchScan),
        Some(Ask::Empty(e)) => {
            tokio::time::sleep(Duration::from_millis(e.delay_time).min(MAX_EMPTY_DELAY)).await;
            Some(Answer::Empty(BatchCommandsEmptyResponse { test_id: e.test_id }))
        }
        None => None,
    };
    (id, BatchAnswer { cmd })
}

/// Serves one `BatchCommands` stream: requests run as they arrive, answers
/// leave as they complete, batched. The stream ends once the client closed
/// its side and every request it sent was answered (or the client is gone).
pub fn serve(svc: Arc<KvService>, mut requests: Streaming<BatchCommandsRequest>) -> AnswerStream {
    let (tx, rx) = tokio::sync::mpsc::channel(ANSWERS_QUEUED);
    tokio::spawn(async move {
        let mut running = FuturesUnordered::new();
        let mut open = true;
        let mut failed: Option<Status> = None;
        loop {
            tokio::select! {
                next = requests.message(), if open && running.len() < MAX_RUNNING => match next {
                    Ok(Some(batch)) => {
                        if batch.request_ids.len() != batch.requests.len() {
                            let msg = format!(
                                "{} request ids for {} requests",
                                batch.request_ids.len(),
                                batch.requests.len()
                            );
                            let _ = tx.send(Err(Status::invalid_argument(msg))).await;
                            return;
                        }
                        svc.metrics().batched_commands.add(batch.requests.len() as u64);
                        for (id, r) in batch.request_ids.into_iter().zip(batch.requests) {
                            running.push(run(svc.clone(), id, r.cmd));
                        }
                    }
                    // Closed: answer what runs, then end.
                    Ok(None) => open = false,
                    // Broken (or undecodable: its requests never ran):
                    // answer what runs, then end with the error.
                    Err(status) => {
                        open = false;
                        failed = Some(status);
                    }
                },
                Some((id, first)) = running.next(), if !running.is_empty() => {
                    let mut out = BatchCommandsResponse::default();
                    let mut bytes = first.encoded_len();
                    out.request_ids.push(id);
                    out.responses.push(first);
                    while bytes < MAX_ANSWER_BYTES {
                        let Some(Some((id, more))) = running.next().now_or_never() else { break };
                        bytes += more.encoded_len();
                        out.request_ids.push(id);
                        out.responses.push(more);
                    }
                    if tx.send(Ok(out)).await.is_err() {
                        return;
                    }
                }
                else => {
                    if let Some(status) = failed {
                        let _ = tx.send(Err(status)).await;
                    }
                    return;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
