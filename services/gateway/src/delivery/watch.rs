//! The watch on `DELIVERY`'s leader.
//!
//! The live push is core NATS: the stream's leader republishes each record
//! as it stores it. A record stored while the route from the leader to this
//! gateway's server is down (a paused or cut-off majority coming back, a new
//! leader elected elsewhere) never arrives, and a session would find the
//! gap only when its user's next record does. Once a second the gateway asks
//! the stream for its info, which the leader answers over that very route:
//! when the leader stops answering and then answers again, or another node
//! answers as leader, every session re-reads its log.

use super::Hub;
use super::log::DeliveryLog;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the leader is asked.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long an answer may take before the leader counts as out of reach.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The stream answered; `leader` names its leader (none on a single
    /// server without clustering).
    Answered { leader: Option<String> },
    /// No answer in time, or an error: no leader reachable from here.
    Failed,
}

/// Why sessions must re-read their logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// The leader answered again after failing to.
    BackInReach,
    /// Another node answered as leader.
    NewLeader,
}

impl Resync {
    pub fn as_str(self) -> &'static str {
        match self {
            Resync::BackInReach => "leader_back_in_reach",
            Resync::NewLeader => "new_leader",
        }
    }
}

/// The watch's memory: the leader last seen, and whether it is out of reach.
#[derive(Debug, Default)]
pub struct LeaderWatch {
    leader: Option<String>,
    out_of_reach: bool,
    /// Whether any probe was answered yet (the first answer only sets the
    /// baseline: sessions read their logs when they start).
    answered: bool,
}

impl LeaderWatch {
    /// Takes one probe's result; says whether sessions must re-read their
    /// logs now.
    pub fn observe(&mut self, probe: Probe) -> Option<Resync> {
        match probe {
            Probe::Failed => {
                self.out_of_reach = true;
                None
            }
            Probe::Answered { leader } => {
                let resync = if !self.answered {
                    None
                } else if self.out_of_reach {
                    Some(Resync::BackInReach)
                } else if leader != self.leader {
                    Some(Resync::NewLeader)
                } else {
                    None
                };
                self.answered = true;
                self.out_of_reach = false;
                self.leader = leader;
                resync
            }
        }
    }

    /// Whether the last probe failed.
    pub fn out_of_reach(&self) -> bool {
        self.out_of_reach
    }
}

/// Probes `DELIVERY`'s leader every second until `shutdown`, and makes every
/// session of `hub` re-read its log when [`LeaderWatch`] says so.
pub async fn run(log: DeliveryLog, hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut watch = LeaderWatch::default();
    let mut every = tokio::time::interval(PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let probe = match tokio::time::timeout(PROBE_TIMEOUT, log.leader()).await {
            Ok(Ok(leader)) => Probe::Answered { leader },
            Ok(Err(_)) | Err(_) => Probe::Failed,
        };
        let was_out_of_reach = watch.out_of_reach();
        match watch.observe(probe) {
            Some(resync) => {
                tracing::info!(
                    cause = resync.as_str(),
                    "DELIVERY's leader is back in reach or new; live sessions re-read their logs"
                );
                crate::metrics::live_resync(resync.as_str());
                hub.resync_all();
            }
            None if watch.out_of_reach() && !was_out_of_reach => {
                tracing::warn!("DELIVERY's leader does not answer; live records may be missed");
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(leader: &str) -> Probe {
        Probe::Answered {
            leader: Some(leader.to_owned()),
        }
    }

    #[test]
    fn a_steady_leader_never_makes_sessions_re_read() {
        let mut watch = LeaderWatch::default();
        for _ in 0..5 {
            assert_eq!(watch.observe(answered("n1")), None);
        }
    }

    #[test]
    fn the_first_answer_is_a_baseline_even_after_failures() {
        // Sessions read their logs when they start; a gateway that starts
        // while NATS elects has nothing to re-read yet.
        let mut watch = LeaderWatch::default();
        assert_eq!(watch.observe(Probe::Failed), None);
        assert_eq!(watch.observe(answered("n1")), None);
    }

    #[test]
    fn a_leader_back_in_reach_makes_sessions_re_read_once() {
        let mut watch = LeaderWatch::default();
        watch.observe(answered("n1"));
        assert_eq!(watch.observe(Probe::Failed), None);
        assert!(watch.out_of_reach());
        assert_eq!(watch.observe(Probe::Failed), None);
        assert_eq!(watch.observe(answered("n1")), Some(Resync::BackInReach));
        assert!(!watch.out_of_reach());
        assert_eq!(watch.observe(answered("n1")), None);
    }

    #[test]
    fn a_new_leader_makes_sessions_re_read() {
        let mut watch = LeaderWatch::default();
        watch.observe(answered("n1"));
        assert_eq!(watch.observe(answered("n2")), Some(Resync::NewLeader));
        assert_eq!(watch.observe(answered("n2")), None);
        // Out of reach, and back under yet another leader: one re-read.
        watch.observe(Probe::Failed);
        assert_eq!(watch.observe(answered("n3")), Some(Resync::BackInReach));
    }

    #[test]
    fn a_single_server_without_a_named_leader_is_steady() {
        let mut watch = LeaderWatch::default();
        assert_eq!(watch.observe(Probe::Answered { leader: None }), None);
        assert_eq!(watch.observe(Probe::Answered { leader: None }), None);
    }
}
