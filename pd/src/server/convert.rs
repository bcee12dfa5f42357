//! Wire ⇄ domain conversions that only the gRPC edge needs.

use mnemo_proto::types::{Peer, Region};
use mnemo_proto::{eraftpb, metapb, pdpb};

use crate::cluster::{RegionHeartbeat, ScheduleOrder};
use crate::region_map::{DownPeer, RegionInfo, RegionRuntime};
use crate::schedule::{PeerChange, SplitPolicy, Step};

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
        interval_secs: crate::store::interval_secs(req.interval.as_ref()),
        term: req.term,
        last_heartbeat: None,
        pending_since: Default::default(),
    };
    RegionHeartbeat { region, runtime }
}

/// The kvproto response carrying one operator step.
pub(super) fn order_to_wire(
    order: &ScheduleOrder,
    header: Option<pdpb::ResponseHeader>,
) -> pdpb::RegionHeartbeatResponse {
    let mut resp = pdpb::RegionHeartbeatResponse {
        header,
        region_id: order.region_id.0,
        region_epoch: Some(order.epoch.into()),
        target_peer: Some(order.leader.into()),
        ..Default::default()
    };
    match &order.step {
        Step::AddLearner(_) | Step::PromoteLearner(_) | Step::RemovePeer(_) => {
            resp.change_peer = order.step.changes().first().map(change_to_wire);
        }
        Step::ChangePeerV2(changes) => {
            resp.change_peer_v2 =
                Some(pdpb::ChangePeerV2 { changes: changes.iter().map(change_to_wire).collect() });
        }
        Step::TransferLeader { to, .. } => {
            resp.transfer_leader =
                Some(pdpb::TransferLeader { peer: Some((*to).into()), peers: vec![(*to).into()] });
        }
        Step::SplitRegion(policy) => {
            let (policy, keys) = match policy {
                SplitPolicy::Approximate => (pdpb::CheckPolicy::Approximate, Vec::new()),
                SplitPolicy::UseKeys(keys) => (pdpb::CheckPolicy::Usekey, keys.clone()),
            };
            resp.split_region = Some(pdpb::SplitRegion { policy: policy as i32, keys });
        }
    }
    resp
}

/// One membership change: `AddLearnerNode` (role Learner), `AddNode` (role
/// Voter: a promotion) or `RemoveNode`.
fn change_to_wire(change: &PeerChange) -> pdpb::ChangePeer {
    let kind = match change {
        PeerChange::AddLearner(_) => eraftpb::ConfChangeType::AddLearnerNode,
        PeerChange::Promote(_) => eraftpb::ConfChangeType::AddNode,
        PeerChange::Remove(_) => eraftpb::ConfChangeType::RemoveNode,
    };
    pdpb::ChangePeer { peer: Some(change.peer().into()), change_type: kind as i32 }
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
    use mnemo_proto::types::{PeerId, PeerRole, RegionEpoch, RegionId, StoreId};

    fn order(step: Step) -> ScheduleOrder {
        let leader = Peer { id: PeerId(3), store_id: StoreId(1), role: PeerRole::Voter };
        ScheduleOrder { region_id: RegionId(2), epoch: RegionEpoch { conf_ver: 4, version: 5 }, leader, step }
    }

    #[test]
    fn a_joint_swap_in_kvproto_shape() {
        let new = Peer { id: PeerId(9), store_id: StoreId(2), role: PeerRole::Learner };
        let old = Peer { id: PeerId(4), store_id: StoreId(3), role: PeerRole::Voter };
        let step = Step::ChangePeerV2(vec![PeerChange::Promote(new), PeerChange::Remove(old)]);
        let resp = order_to_wire(&order(step), None);
        assert!(resp.change_peer.is_none());
        let changes = resp.change_peer_v2.unwrap().changes;
        assert_eq!(changes[0].change_type, eraftpb::ConfChangeType::AddNode as i32);
        let promoted = changes[0].peer.unwrap();
        assert_eq!((promoted.id, promoted.role), (9, metapb::PeerRole::Voter as i32));
        assert_eq!(changes[1].change_type, eraftpb::ConfChangeType::RemoveNode as i32);
        assert_eq!(changes[1].peer.unwrap().id, 4);
        assert_eq!(resp.region_epoch.unwrap(), metapb::RegionEpoch { conf_ver: 4, version: 5 });
    }

    #[test]
    fn transfers_and_splits_in_kvproto_shape() {
        let from = Peer { id: PeerId(3), store_id: StoreId(1), role: PeerRole::Voter };
        let to = Peer { id: PeerId(7), store_id: StoreId(5), role: PeerRole::Voter };
        let resp = order_to_wire(&order(Step::TransferLeader { from, to }), None);
        assert_eq!(resp.transfer_leader.unwrap().peer.unwrap().id, 7);

        let resp = order_to_wire(&order(Step::SplitRegion(SplitPolicy::UseKeys(vec![b"k".to_vec()]))), None);
        let split = resp.split_region.unwrap();
        assert_eq!((split.policy, split.keys), (pdpb::CheckPolicy::Usekey as i32, vec![b"k".to_vec()]));
        let resp = order_to_wire(&order(Step::SplitRegion(SplitPolicy::Approximate)), None);
        assert_eq!(resp.split_region.unwrap().policy, pdpb::CheckPolicy::Approximate as i32);
    }

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
