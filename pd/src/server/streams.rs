//! The region heartbeat streams, one per store: where operator steps go.
//!
//! A node opens one `RegionHeartbeat` stream and sends the heartbeats of all
//! the regions it leads on it. PD answers a region on the stream of the store
//! holding the region's leader. A newer stream of the same store (the node
//! reconnected) replaces the older one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mnemo_proto::pdpb::{self, RegionHeartbeatResponse};
use mnemo_proto::types::StoreId;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::debug;

use super::convert::order_to_wire;
use crate::cluster::ScheduleOrder;

/// What a heartbeat stream yields.
pub(super) type Reply = Result<RegionHeartbeatResponse, Status>;

/// Responses buffered per stream; when full, a response is dropped (the
/// step is re-sent on the next heartbeat anyway).
pub(super) const STREAM_BUFFER: usize = 256;

/// Store id → its current heartbeat stream.
#[derive(Default)]
pub(super) struct HeartbeatStreams {
    next_id: AtomicU64,
    by_store: Mutex<HashMap<StoreId, (u64, mpsc::Sender<Reply>)>>,
}

impl HeartbeatStreams {
    /// A fresh stream id.
    pub(super) fn new_stream_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes stream `id` the one for `store`.
    pub(super) fn register(&self, store: StoreId, id: u64, tx: mpsc::Sender<Reply>) {
        self.by_store.lock().insert(store, (id, tx));
    }

    /// Forgets stream `id` of `store`, unless a newer stream replaced it.
    pub(super) fn unregister(&self, store: StoreId, id: u64) {
        let mut map = self.by_store.lock();
        if map.get(&store).is_some_and(|(cur, _)| *cur == id) {
            map.remove(&store);
        }
    }

    /// Queues `resp` on `store`'s stream; false if there is none or it is full.
    pub(super) fn send(&self, store: StoreId, resp: RegionHeartbeatResponse) -> bool {
        let tx = self.by_store.lock().get(&store).map(|(_, tx)| tx.clone());
        tx.is_some_and(|tx| tx.try_send(Ok(resp)).is_ok())
    }

    /// Sends each order to its leader's store now, rather than waiting for
    /// the region's next heartbeat. An order that cannot be sent is not
    /// lost: the step goes out again with the next heartbeat.
    pub(super) fn push(&self, cluster_id: u64, orders: &[ScheduleOrder]) {
        for order in orders {
            let header = pdpb::ResponseHeader { cluster_id, error: None };
            if !self.send(order.leader.store_id, order_to_wire(order, Some(header))) {
                debug!(region_id = %order.region_id, "no heartbeat stream for the leader's store");
            }
        }
    }
}

/// Unregisters a stream when its request side ends or the response is dropped.
pub(super) struct Registration {
    pub(super) streams: Arc<HeartbeatStreams>,
    pub(super) id: u64,
    pub(super) store: Option<StoreId>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(store) = self.store {
            self.streams.unregister(store, self.id);
        }
    }
}
