//! The kinds of fault the nemesis injects, their names (as in `--nemesis`
//! and the report) and groups, and what each needs (namespaces, a PD group).
//! How each is injected and healed is in the parent module.

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// One node isolated.
    PartitionOne,
    /// Random minority/majority halves.
    PartitionHalves,
    /// The node with the most leaders isolated.
    PartitionLeader,
    /// Two halves joined by one node.
    PartitionBridge,
    /// Ring of overlapping majorities.
    PartitionRing,
    /// SIGKILL one node.
    KillOne,
    /// SIGKILL a minority of nodes.
    KillMinority,
    /// SIGKILL the node of a region leader.
    KillLeader,
    /// SIGSTOP one node.
    Pause,
    /// PD's shuffle-leader scheduler.
    ShuffleLeader,
    /// PD's shuffle-region scheduler.
    ShuffleRegion,
    /// Forced splits.
    Split,
    /// Lease clock skew.
    ClockSkew,
    /// A crash point armed on a node.
    CrashPoint,
    /// One node partitioned while another is killed.
    PartitionKill,
    /// The leaders' node partitioned with a slowed lease clock.
    SkewPartitionLeader,
    /// A node killed during shuffle-region.
    KillShuffle,
    /// A region leader killed during forced splits.
    KillSplit,
    /// A majority killed.
    KillMajority,
    /// Every node killed.
    KillAll,
    /// One node hears nobody; everybody hears it.
    PartitionOneWay,
    /// Nodes cut off from PD.
    PdCut,
    /// Nodes the clients cannot reach.
    ClientCut,
    /// Raft messages delayed.
    Delay,
    /// Messages to a leader delayed while its leadership moves away.
    DelayTransfer,
    /// Forced splits at live keys while every link is slow.
    DelaySplit,
    /// SIGKILL the PD leader, restart it at the heal.
    PdKillLeader,
    /// SIGSTOP the PD leader, SIGCONT at the heal.
    PdPauseLeader,
    /// The PD leader cut off from the other members' raft messages.
    PdPartitionLeader,
    /// SIGKILL a majority of the PD members (the leader among them).
    PdKillMajority,
}

/// The classic faults (`all`).
const CLASSIC: [Fault; 13] = [
    Fault::PartitionOne,
    Fault::PartitionHalves,
    Fault::PartitionLeader,
    Fault::PartitionBridge,
    Fault::PartitionRing,
    Fault::KillOne,
    Fault::KillMinority,
    Fault::KillLeader,
    Fault::Pause,
    Fault::ShuffleLeader,
    Fault::ShuffleRegion,
    Fault::Split,
    Fault::ClockSkew,
];

/// The compound faults (`compound`).
const COMPOUND: [Fault; 12] = [
    Fault::PartitionKill,
    Fault::SkewPartitionLeader,
    Fault::KillShuffle,
    Fault::KillSplit,
    Fault::KillMajority,
    Fault::KillAll,
    Fault::PartitionOneWay,
    Fault::PdCut,
    Fault::ClientCut,
    Fault::Delay,
    Fault::DelayTransfer,
    Fault::DelaySplit,
];

/// The PD faults (`pd`): on the PD raft group (three members or more).
const PD: [Fault; 4] =
    [Fault::PdKillLeader, Fault::PdPauseLeader, Fault::PdPartitionLeader, Fault::PdKillMajority];

/// Every fault kind.
pub fn every_fault() -> Vec<Fault> {
    CLASSIC.iter().chain(&COMPOUND).chain(&PD).copied().chain([Fault::CrashPoint]).collect()
}

impl Fault {
    /// The fault's name (as in `--nemesis` and the report).
    pub fn name(self) -> &'static str {
        match self {
            Fault::PartitionOne => "partition-one",
            Fault::PartitionHalves => "partition-halves",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionBridge => "partition-bridge",
            Fault::PartitionRing => "partition-ring",
            Fault::KillOne => "kill-one",
            Fault::KillMinority => "kill-minority",
            Fault::KillLeader => "kill-leader",
            Fault::Pause => "pause",
            Fault::ShuffleLeader => "shuffle-leader",
            Fault::ShuffleRegion => "shuffle-region",
            Fault::Split => "split",
            Fault::ClockSkew => "clock-skew",
            Fault::CrashPoint => "crash-point",
            Fault::PartitionKill => "partition-kill",
            Fault::SkewPartitionLeader => "skew-partition-leader",
            Fault::KillShuffle => "kill-shuffle",
            Fault::KillSplit => "kill-split",
            Fault::KillMajority => "kill-majority",
            Fault::KillAll => "kill-all",
            Fault::PartitionOneWay => "partition-oneway",
            Fault::PdCut => "pd-cut",
            Fault::ClientCut => "client-cut",
            Fault::Delay => "delay",
            Fault::DelayTransfer => "delay-transfer",
            Fault::DelaySplit => "delay-split",
            Fault::PdKillLeader => "pd-kill-leader",
            Fault::PdPauseLeader => "pd-pause-leader",
            Fault::PdPartitionLeader => "pd-partition-leader",
            Fault::PdKillMajority => "pd-kill-majority",
        }
    }

    /// True for partitions that leave a majority connected (the report's
    /// "majority side" availability is measured during these).
    pub fn is_minority_partition(self) -> bool {
        matches!(self, Fault::PartitionOne | Fault::PartitionHalves | Fault::PartitionLeader)
    }

    /// True for faults that cut links with iptables (they need namespaces).
    pub fn is_partition(self) -> bool {
        matches!(
            self,
            Fault::PartitionOne
                | Fault::PartitionHalves
                | Fault::PartitionLeader
                | Fault::PartitionBridge
                | Fault::PartitionRing
                | Fault::PartitionKill
                | Fault::SkewPartitionLeader
                | Fault::PdCut
                | Fault::ClientCut
                | Fault::PdPartitionLeader
        )
    }

    /// True for faults on the PD raft group (they need three members).
    pub fn is_pd(self) -> bool {
        PD.contains(&self)
    }

    /// Parses `--nemesis`: `all` (alias `mixed`: the classic faults),
    /// `compound`, `everything`, `none`, or a comma list of fault names and
    /// groups (`partition`, `kill`, `churn`, `crash-point`).
    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        let every = every_fault();
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let group: Vec<Fault> = match part {
                "all" | "mixed" => CLASSIC.to_vec(),
                "compound" => COMPOUND.to_vec(),
                "everything" => every.clone(),
                "none" => Vec::new(),
                "partition" => every.iter().copied().filter(|f| f.is_partition()).collect(),
                "kill" => vec![Fault::KillOne, Fault::KillMinority, Fault::KillLeader],
                "churn" => vec![Fault::ShuffleLeader, Fault::ShuffleRegion, Fault::Split],
                "pd" => PD.to_vec(),
                name => vec![*every.iter().find(|f| f.name() == name).ok_or_else(|| {
                    let names: Vec<&str> = every.iter().map(|f| f.name()).collect();
                    format!(
                        "unknown nemesis {name:?}: all, mixed, compound, everything, none, partition, kill, churn, pd, {}",
                        names.join(", ")
                    )
                })?],
            };
            for f in group {
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemesis_names_parse() {
        assert_eq!(Fault::parse_list("all").unwrap().len(), CLASSIC.len());
        assert_eq!(Fault::parse_list("compound").unwrap().len(), COMPOUND.len());
        assert_eq!(Fault::parse_list("pd").unwrap().len(), PD.len());
        assert!(Fault::parse_list("pd").unwrap().iter().all(|f| f.is_pd()));
        assert_eq!(
            Fault::parse_list("everything").unwrap().len(),
            CLASSIC.len() + COMPOUND.len() + PD.len() + 1
        );
        assert!(Fault::parse_list("none").unwrap().is_empty());
        let p = Fault::parse_list("partition,kill-leader,partition-one").unwrap();
        let partitions = every_fault().iter().filter(|f| f.is_partition()).count();
        assert_eq!(p.len(), partitions + 1, "groups expand, duplicates collapse: {p:?}");
        assert!(p.iter().take(partitions).all(|f| f.is_partition()));
        assert!(Fault::parse_list("meteor").unwrap_err().contains("unknown nemesis"));
        for f in every_fault() {
            assert_eq!(Fault::parse_list(f.name()).unwrap(), vec![f]);
        }
    }
}
