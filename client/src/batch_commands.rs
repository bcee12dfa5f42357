//! Requests to one node multiplexed on one `BatchCommands` stream.
//!
//! With [`crate::Config::batch_commands`], gets and puts to a node go on a
//! single long-lived gRPC stream instead of one HTTP/2 stream per call: the
//! requests queued while the previous message was being sent leave together
//! in one message, each under its own id, and the node answers them
//! batched the same way (see the node's `batch_commands` module). Fewer
//! frames, headers and wake-ups per request on both sides.
//!
//! One task per node address owns the stream: it numbers and sends what
//! callers queue, hands each answer to the caller waiting on its id, and,
//! when the stream fails, fails every request in flight with the stream's
//! status (a failure to open the stream is a connect failure: nothing was
//! sent, so a write may be retried; a stream that breaks later leaves the
//! writes in flight undetermined, as a broken unary call would), then opens
//! a new stream for the next request. A caller that gives up (its RPC
//! timeout) just stops waiting.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use mnemo_proto::kvrpcpb;
use mnemo_proto::tikvpb::batch_commands_request::request::Cmd as Ask;
use mnemo_proto::tikvpb::batch_commands_request::Request as BatchAsk;
use mnemo_proto::tikvpb::batch_commands_response::response::Cmd as Answer;
use mnemo_proto::tikvpb::tikv_client::TikvClient;
use mnemo_proto::tikvpb::BatchCommandsRequest;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Response, Status};

/// Most requests sent in one message.
const MAX_BATCH: usize = 256;

/// Bytes of requests past which a message goes without more (a larger
/// request goes alone): far below the gRPC message limit.
const MAX_BATCH_BYTES: usize = 1 << 20;

type Waiter = oneshot::Sender<Result<Option<Answer>, Status>>;

/// A handle on one node's batch stream (cheap to clone).
#[derive(Clone)]
pub(crate) struct BatchConn {
    queue: mpsc::UnboundedSender<(Ask, Waiter)>,
}

impl BatchConn {
    /// Starts the task that owns the stream to the node behind `client`
    /// (opened on the first request; an opening that takes longer than
    /// `open_timeout` fails the requests waiting as maybe sent). It ends
    /// when every handle is dropped.
    pub(crate) fn start(client: TikvClient<Channel>, open_timeout: Duration) -> BatchConn {
        let (queue, asks) = mpsc::unbounded_channel();
        tokio::spawn(drive(client, asks, open_timeout));
        BatchConn { queue }
    }

    async fn ask(&self, ask: Ask) -> Result<Option<Answer>, Status> {
        let (tx, rx) = oneshot::channel();
        self.queue.send((ask, tx)).map_err(|_| Status::unavailable("batch stream task ended"))?;
        rx.await.map_err(|_| Status::unavailable("batch stream task ended"))?
    }

    pub(crate) async fn raw_get(
        &self,
        r: kvrpcpb::RawGetRequest,
    ) -> Result<Response<kvrpcpb::RawGetResponse>, Status> {
        match self.ask(Ask::RawGet(r)).await? {
            Some(Answer::RawGet(a)) => Ok(Response::new(a)),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn raw_put(
        &self,
        r: kvrpcpb::RawPutRequest,
    ) -> Result<Response<kvrpcpb::RawPutResponse>, Status> {
        match self.ask(Ask::RawPut(r)).await? {
            Some(Answer::RawPut(a)) => Ok(Response::new(a)),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(a: Option<Answer>) -> Status {
    match a {
        None => Status::internal("the node answered a batched command with no answer"),
        Some(_) => Status::internal("the node answered a batched command with another kind"),
    }
}

/// The stream's task: see the module doc.
async fn drive(
    mut client: TikvClient<Channel>,
    mut asks: mpsc::UnboundedReceiver<(Ask, Waiter)>,
    open_timeout: Duration,
) {
    let mut next_id = 0u64;
    // Wait for a request before opening a stream; end when every handle is gone.
    while let Some(first) = asks.recv().await {
        // Unbounded: the task must never block sending while answers wait
        // to be read (the node would stop reading too). What it holds is
        // bounded by the callers waiting.
        let (out, out_rx) = mpsc::unbounded_channel::<BatchCommandsRequest>();
        let mut waiting: HashMap<u64, Waiter> = HashMap::new();
        let mut batch = vec![first];
        // Sent before the stream opens: the node reads it once it does.
        send_batch(&out, &mut batch, &mut waiting, &mut next_id);
        let opening = client.batch_commands(UnboundedReceiverStream::new(out_rx));
        let mut answers = match tokio::time::timeout(open_timeout, opening).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                fail_all(&mut waiting, &status);
                continue;
            }
            // The requests may have left: not a connect failure.
            Err(_) => {
                fail_all(&mut waiting, &Status::deadline_exceeded("the batch stream did not open in time"));
                continue;
            }
        };
        let broke = loop {
            tokio::select! {
                ask = asks.recv() => match ask {
                    Some(ask) => {
                        let mut bytes = size_of(&ask.0);
                        batch.push(ask);
                        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                            match asks.try_recv() {
                                Ok(more) => {
                                    bytes += size_of(&more.0);
                                    batch.push(more);
                                }
                                Err(_) => break,
                            }
                        }
                        send_batch(&out, &mut batch, &mut waiting, &mut next_id);
                    }
                    // Every handle dropped: close our side, take the answers
                    // in flight, then end (the node ends its side).
                    None => {
                        drop(out);
                        while !waiting.is_empty() {
                            match answers.next().await {
                                Some(Ok(resp)) => deliver(&mut waiting, resp),
                                _ => break,
                            }
                        }
                        fail_all(&mut waiting, &Status::unavailable("batch stream closed"));
                        return;
                    }
                },
                answer = answers.next() => match answer {
                    Some(Ok(resp)) => deliver(&mut waiting, resp),
                    Some(Err(status)) => break status,
                    None => break Status::unavailable("the node closed the batch stream"),
                },
            }
        };
        fail_all(&mut waiting, &broke);
    }
}

fn send_batch(
    out: &mpsc::UnboundedSender<BatchCommandsRequest>,
    batch: &mut Vec<(Ask, Waiter)>,
    waiting: &mut HashMap<u64, Waiter>,
    next_id: &mut u64,
) {
    let mut req = BatchCommandsRequest::default();
    for (ask, waiter) in batch.drain(..) {
        // Its caller gave up (timed out) before it left: never send it.
        if waiter.is_closed() {
            continue;
        }
        *next_id += 1;
        req.request_ids.push(*next_id);
        req.requests.push(BatchAsk { cmd: Some(ask) });
        waiting.insert(*next_id, waiter);
    }
    // A closed stream shows up on the answer side, which fails these.
    if !req.requests.is_empty() {
        let _ = out.send(req);
    }
}

fn size_of(ask: &Ask) -> usize {
    ask.encoded_len()
}

fn deliver(waiting: &mut HashMap<u64, Waiter>, resp: mnemo_proto::tikvpb::BatchCommandsResponse) {
    for (id, answer) in resp.request_ids.into_iter().zip(resp.responses) {
        if let Some(w) = waiting.remove(&id) {
            let _ = w.send(Ok(answer.cmd));
        }
    }
}

fn fail_all(waiting: &mut HashMap<u64, Waiter>, status: &Status) {
    for (_, w) in waiting.drain() {
        let _ = w.send(Err(copy_status(status)));
    }
}

/// A status for one more waiter: same code and message, and a connect
/// failure stays one (what tells "never sent" from "maybe sent").
fn copy_status(s: &Status) -> Status {
    let mut copy = Status::new(s.code(), s.message());
    if let Some(src) = std::error::Error::source(s) {
        let msg = Box::new(Message(src.to_string()));
        if crate::transport::is_connect_failure(s) {
            copy.set_source(std::sync::Arc::new(tonic::ConnectError(msg)));
        } else {
            copy.set_source(std::sync::Arc::new(*msg));
        }
    }
    copy
}

/// The text of a status's source.
#[derive(Debug)]
struct Message(String);

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::is_connect_failure;

    #[test]
    fn each_waiter_gets_the_streams_failure_and_a_connect_failure_stays_one() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let refused = Status::from_error(Box::new(tonic::ConnectError(Box::new(io))));
        assert!(is_connect_failure(&refused));
        let copy = copy_status(&refused);
        assert!(is_connect_failure(&copy), "never sent: may be retried");
        assert_eq!((copy.code(), copy.message()), (refused.code(), refused.message()));
        let broken = Status::unavailable("connection reset");
        assert!(!is_connect_failure(&copy_status(&broken)), "maybe sent: undetermined");
    }
}
