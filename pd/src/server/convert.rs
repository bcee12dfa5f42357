//! Wire ⇄ domain conversions that only the gRPC edge needs.

use mnemo_proto::types::{Peer, PeerRole, Region};
use mnemo_proto::{eraftpb, metapb, pdpb};

use crate::cluster::{RegionHeartbeat, ScheduleOrder};
use crate::region_map::{DownPeer, RegionInfo, RegionRuntime};
use crate::schedule::Step;

/// A region heartbeat request in domain terms.
pub(super) fn heartbeat_from_wire(req: &pdpb::RegionHeartbeatRequest) -> RegionHeartbeat {
    let region = req.region.as_ref().map(Region::from).unwrap_or_default();
    let runtime = RegionRuntime {
        leader: req.leader.as_ref().map(Peer::from),
        pending_peers: req.pending_peers.iter().map(Peer::from).collect(),
        down_peers: req
            .down_peers
            .iter()
            .filter_map(|d| {
                d.peer.as_ref().map(|p| DownPeer { peer: Peer::from(p), down_seconds: d.down_seconds })
            })
            .collect(),
        approximate_size: req.approximate_size,
        approximate_keys: req.approximate_keys,
        bytes_written: req.bytes_written,
        bytes_read: req.bytes_read,
        keys_written: req.keys_written,
        keys_read: req.keys_read,
        term: req.term,
        last_heartbeat: None,
    };
    RegionHeartbeat { region, runtime }
}

/// The kvproto response carrying one operator step.
pub(super) fn order_to_wire(
    order: &ScheduleOrder,
    header: Option<pdpb::ResponseHeader>,
) -> pdpb::RegionHeartbeatResponse {
    let (change_type, peer) = match order.step {
        Step::AddLearner(p) => {
            (eraftpb::ConfChangeType::AddLearnerNode, Peer { role: PeerRole::Learner, ..p })
        }
        Step::PromoteLearner(p) => (eraftpb::ConfChangeType::AddNode, Peer { role: PeerRole::Voter, ..p }),
        Step::RemovePeer(p) => (eraftpb::ConfChangeType::RemoveNode, p),
    };
    pdpb::RegionHeartbeatResponse {
        header,
        change_peer: Some(pdpb::ChangePeer { peer: Some(peer.into()), change_type: change_type as i32 }),
        region_id: order.region_id.0,
        region_epoch: Some(order.epoch.into()),
        target_peer: Some(order.leader.into()),
        ..Default::default()
    }
}

/// The parts of a region answer: metadata, leader, down and pending peers.
pub(super) struct RegionParts {
    pub(super) region: metapb::Region,
    pub(super) leader: Option<metapb::Peer>,
    pub(super) down_peers: Vec<pdpb::PeerStats>,
    pub(super) pending_peers: Vec<metapb::Peer>,
}

pub(super) fn region_parts(info: &RegionInfo) -> RegionParts {
    RegionParts {
        region: metapb::Region::from(&info.region),
        leader: info.leader().map(metapb::Peer::from),
        down_peers: info
            .runtime
            .down_peers
            .iter()
            .map(|d| pdpb::PeerStats { peer: Some(d.peer.into()), down_seconds: d.down_seconds })
            .collect(),
        pending_peers: info.runtime.pending_peers.iter().map(|p| (*p).into()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnemo_proto::types::{PeerId, RegionEpoch, RegionId, StoreId};

    #[test]
    fn an_add_learner_step_in_kvproto_shape() {
        let leader = Peer { id: PeerId(3), store_id: StoreId(1), role: PeerRole::Voter };
        let learner = Peer { id: PeerId(9), store_id: StoreId(2), role: PeerRole::Learner };
        let order = ScheduleOrder {
            region_id: RegionId(2),
            epoch: RegionEpoch { conf_ver: 1, version: 1 },
            leader,
            step: Step::AddLearner(learner),
        };
        let resp = order_to_wire(&order, None);
        assert_eq!(resp.region_id, 2);
        assert_eq!(resp.target_peer.unwrap().id, 3);
        let change = resp.change_peer.unwrap();
        assert_eq!(change.change_type, eraftpb::ConfChangeType::AddLearnerNode as i32);
        let peer = change.peer.unwrap();
        assert_eq!((peer.id, peer.store_id, peer.role), (9, 2, metapb::PeerRole::Learner as i32));
    }
}
