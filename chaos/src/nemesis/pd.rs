//! The PD faults: on the PD raft group's leader (three members or more).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;

use super::{done, Done, Fault, Nemesis};

impl Nemesis {
    /// `pd-kill-leader`, `pd-pause-leader`, `pd-partition-leader`,
    /// `pd-kill-majority`: starts the fault on the serving PD leader, holds
    /// it until `hold_until` while watching for another member to serve,
    /// heals it, and waits for a PD that serves again.
    pub(super) fn pd_fault(&mut self, fault: Fault, hold_until: Instant, stop: &AtomicBool) -> Done {
        let Some(leader) = self.cluster.pd_leader() else {
            self.hold(hold_until, stop);
            return done("no PD leader", false);
        };
        let mut victims = vec![leader];
        match fault {
            Fault::PdKillLeader | Fault::PdKillMajority => {
                if fault == Fault::PdKillMajority {
                    let members = self.cluster.pd_member_count();
                    let mut others: Vec<usize> = (0..members).filter(|&m| m != leader).collect();
                    others.shuffle(&mut self.rng);
                    victims.extend(others.into_iter().take(members / 2));
                }
                for &m in &victims {
                    self.cluster.kill_pd_member(m);
                    self.killed_pds.push(m);
                }
            }
            Fault::PdPauseLeader => {
                self.cluster.pause_pd_member(leader, true);
                self.paused_pds.push(leader);
            }
            _ => {
                if let Err(e) = self.cluster.cut_pd_member(leader) {
                    panic!("cannot cut pd{}: {e}", leader + 1);
                }
            }
        }
        // How long until another member serves (none for a
        // majority); a cut-off leader must at least stop serving.
        let since = Instant::now();
        let mut failover = None;
        let mut deposed = fault != Fault::PdPartitionLeader;
        while Instant::now() < hold_until && !stop.load(Ordering::Relaxed) {
            if failover.is_none() && self.cluster.pd_leader().is_some_and(|l| !victims.contains(&l)) {
                failover = Some(since.elapsed());
            }
            deposed |= self.cluster.pd_member_serving(leader) == Some(false);
            std::thread::sleep(Duration::from_millis(50));
        }
        self.heal_pd();
        self.heal_network();
        // The next fault starts with a PD that serves.
        self.wait_pd_serving();
        let names: Vec<String> = victims.iter().map(|m| format!("pd{}", m + 1)).collect();
        let desc = match failover {
            Some(d) => format!("{} (new PD leader after {} ms)", names.join(","), d.as_millis()),
            None => format!("{} (no new PD leader while held)", names.join(",")),
        };
        done(desc, deposed || failover.is_some())
    }

    /// PD's crash point: PD restarts with `pd_region_heartbeat` armed, dies
    /// at the first region heartbeat it handles, and is restarted clean.
    pub(super) fn pd_crash_point(&mut self, hold_until: Instant, stop: &AtomicBool) -> Done {
        self.cluster.kill_pd();
        self.cluster.restart_pd_with_failpoints("pd_region_heartbeat=panic");
        // Nodes reconnect to a restarted PD within a few seconds: give it
        // at least 8 s to see a region heartbeat.
        let until = hold_until.max(Instant::now() + Duration::from_secs(8));
        // `hold` reaps PD when it exits (see `restart_crashed`): exit 86 is
        // this point firing, anything else a crash.
        self.pd_point_fired = false;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) && !self.pd_point_fired {
            self.hold(Instant::now() + Duration::from_millis(100), stop);
        }
        let fired = std::mem::take(&mut self.pd_point_fired);
        // Restart clean: an unfired point dies with the process (the member
        // that fired was restarted clean by `restart_crashed`; the others
        // are still armed and would fire whenever they come to lead).
        if self.cluster.pd_running() {
            self.cluster.kill_pd();
        }
        self.cluster.restart_pd();
        let desc = if fired {
            "pd_region_heartbeat fired on PD"
        } else {
            "pd_region_heartbeat armed on PD, did not fire"
        };
        done(desc, fired)
    }

    /// Waits (at most 20 s) until a PD member serves as leader.
    fn wait_pd_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.cluster.pd_leader().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Restarts the PD members killed and resumes those stopped.
    pub(super) fn heal_pd(&mut self) {
        for m in std::mem::take(&mut self.paused_pds) {
            self.cluster.pause_pd_member(m, false);
        }
        for m in std::mem::take(&mut self.killed_pds) {
            self.cluster.restart_pd_member(m);
        }
    }
}
