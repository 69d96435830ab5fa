//! The ICE part of the viewer's stats report: for failure messages, and which pair ICE chose.

use crate::Viewer;
use std::collections::HashMap;
use std::time::Instant;
use webrtc::peer_connection::{RTCStatsReportEntry, StatsSelector};

impl Viewer {
    /// The ICE part of the stats report, for failure messages.
    pub async fn ice_stats(&self) -> String {
        let report = self.pc.get_stats(Instant::now(), StatsSelector::None).await;
        let mut out = String::new();
        for entry in report.iter() {
            match entry {
                RTCStatsReportEntry::LocalCandidate(_)
                | RTCStatsReportEntry::RemoteCandidate(_)
                | RTCStatsReportEntry::IceCandidatePair(_)
                | RTCStatsReportEntry::Transport(_) => out.push_str(&format!("{entry:?}\n")),
                _ => {}
            }
        }
        out
    }

    /// The pair ICE selected (the transport's selected pair, or else the nominated one): its
    /// local candidate's type, and its remote candidate's type and address. For a reflexive
    /// local candidate ICE pairs its base, so the local type shows as `host` then.
    pub async fn selected_pair(&self) -> Option<(String, String, String)> {
        let report = self.pc.get_stats(Instant::now(), StatsSelector::None).await;
        let mut local = HashMap::new();
        let mut remote = HashMap::new();
        let mut pairs = HashMap::new();
        let mut selected = None;
        let mut nominated = None;
        for entry in report.iter() {
            match entry {
                // The crate prefixes candidate stats ids but not the ids pairs refer to them by.
                RTCStatsReportEntry::LocalCandidate(c) => {
                    let id = c.stats.id.trim_start_matches("RTCLocalIceCandidate_");
                    local.insert(id.to_string(), c.candidate_type.to_string());
                }
                RTCStatsReportEntry::RemoteCandidate(c) => {
                    let id = c.stats.id.trim_start_matches("RTCRemoteIceCandidate_");
                    let address = c.address.clone().unwrap_or_default();
                    remote.insert(id.to_string(), (c.candidate_type.to_string(), address));
                }
                RTCStatsReportEntry::IceCandidatePair(p) => {
                    let ids = (p.local_candidate_id.clone(), p.remote_candidate_id.clone());
                    if p.nominated {
                        nominated = Some(ids.clone());
                    }
                    pairs.insert(p.stats.id.clone(), ids);
                }
                RTCStatsReportEntry::Transport(t) if !t.selected_candidate_pair_id.is_empty() => {
                    selected = Some(t.selected_candidate_pair_id.clone());
                }
                _ => {}
            }
        }
        let (l, r) = selected
            .and_then(|id| pairs.get(&id).cloned())
            .or(nominated)?;
        // A remote candidate learned from the peer's checks (peer-reflexive) is left out of
        // the crate's stats: its type is all that is known.
        let (remote_type, remote_address) = remote
            .get(&r)
            .cloned()
            .unwrap_or_else(|| ("prflx".to_string(), String::new()));
        Some((local.get(&l)?.clone(), remote_type, remote_address))
    }
}
