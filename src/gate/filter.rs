//! What the gate does with each packet of one admitted connection (pure: no I/O, no clock, no
//! logging): forward it, answer it with a refusal, drop it, or end the connection. The
//! connection task in `gate/mod.rs` applies the step and does the counting and logging; the
//! fuzz target (`fuzzing::gate_packets`) drives this directly.

use super::codec::{self, Goodbye, Request, Version};
use super::policy::{Identity, Policy, Refusal};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};

/// Refusals one connection may collect before it is disconnected.
pub const MAX_REFUSALS: u32 = 20;

/// What to do with one packet from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send the client's bytes on to the broker, unchanged.
    Forward(Bytes),
    /// Send these bytes back to the client (a refusal), nothing to the broker.
    Answer(Bytes),
    Drop,
    End(Goodbye),
}

/// The state one connection's checks depend on.
#[derive(Debug)]
pub struct PacketFilter {
    version: Version,
    identity: Identity,
    /// Filters the client holds, so the per-connection cap counts each once.
    subscriptions: HashSet<String>,
    /// MQTT 5 topic aliases the client set up, so a publish by alias is checked by its topic.
    aliases: HashMap<u16, String>,
    refusals: u32,
}

impl PacketFilter {
    pub fn new(version: Version, identity: Identity) -> Self {
        Self {
            version,
            identity,
            subscriptions: HashSet::new(),
            aliases: HashMap::new(),
            refusals: 0,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Refusals so far on this connection.
    pub fn refusals(&self) -> u32 {
        self.refusals
    }

    /// Decides one packet (its bytes as they came, and what it asks for); the refusal, if it
    /// was refused, for the caller to count and log.
    pub fn check(
        &mut self,
        policy: &Policy,
        (raw, request): (Bytes, Request),
    ) -> (Step, Option<Refusal>) {
        match request {
            Request::Connect(_) => (Step::End(Goodbye::Malformed), None),
            Request::Other => (Step::Forward(raw), None),
            Request::Subscribe { pkid, filters } => {
                let mut held = self.subscriptions.len();
                let mut verdict = Ok(());
                for filter in &filters {
                    if !self.subscriptions.contains(filter) {
                        verdict = verdict.and(policy.check_subscribe(&self.identity, filter, held));
                        held += 1;
                    }
                }
                match verdict {
                    Ok(()) => {
                        self.subscriptions.extend(filters);
                        (Step::Forward(raw), None)
                    }
                    Err(e) => {
                        let step = self.refused().unwrap_or(Step::Answer(codec::suback_refused(
                            self.version,
                            pkid,
                            filters.len(),
                        )));
                        (step, Some(e))
                    }
                }
            }
            Request::Unsubscribe { filters } => {
                for f in &filters {
                    self.subscriptions.remove(f);
                }
                (Step::Forward(raw), None)
            }
            Request::Publish {
                topic,
                alias,
                retain,
                qos,
                pkid,
            } => {
                let topic = match (topic.is_empty(), alias) {
                    (true, Some(a)) => match self.aliases.get(&a) {
                        Some(t) => t.clone(),
                        None => return (Step::End(Goodbye::Malformed), None),
                    },
                    _ => topic,
                };
                match policy.check_publish(&self.identity, &topic, retain) {
                    Ok(()) => {
                        if let Some(a) = alias {
                            self.aliases.insert(a, topic);
                        }
                        (Step::Forward(raw), None)
                    }
                    Err(e) => {
                        let step = self.refused().unwrap_or(match qos {
                            0 => Step::Drop,
                            1 => Step::Answer(codec::puback_refused(self.version, pkid)),
                            // Exactly-once has a second round trip the broker would not know of.
                            _ => Step::End(Goodbye::NotAuthorized),
                        });
                        (step, Some(e))
                    }
                }
            }
        }
    }

    /// Counts a refusal; `Some(End)` once the client has had too many.
    fn refused(&mut self) -> Option<Step> {
        self.refusals += 1;
        (self.refusals >= MAX_REFUSALS).then_some(Step::End(Goodbye::NotAuthorized))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::policy::Rights;
    use bytes::BytesMut;
    use rumqttc::v5::mqttbytes::v5;

    fn policy() -> Policy {
        Policy::new("rtcam/cam1", "homeassistant", "rtcam-cam1", 4)
    }

    fn viewer() -> PacketFilter {
        PacketFilter::new(
            Version::V5,
            Identity {
                client_id: "abc".into(),
                rights: Rights::VIEWER,
            },
        )
    }

    fn publish(topic: &str, alias: Option<u16>, qos: u8) -> (Bytes, Request) {
        (
            Bytes::from_static(b"raw"),
            Request::Publish {
                topic: topic.into(),
                alias,
                retain: false,
                qos,
                pkid: 1,
            },
        )
    }

    #[test]
    fn a_topic_alias_is_checked_as_the_topic_it_stands_for() {
        let p = policy();
        let mut f = viewer();
        let own = "rtcam/cam1/session/abc/in";
        assert!(matches!(
            f.check(&p, publish(own, Some(3), 0)).0,
            Step::Forward(_)
        ));
        assert!(matches!(
            f.check(&p, publish("", Some(3), 0)).0,
            Step::Forward(_)
        ));
        // An alias set up for a refused topic is not recorded, so using it ends the connection.
        let (step, why) = f.check(&p, publish("rtcam/cam1/command", Some(4), 0));
        assert_eq!(step, Step::Drop);
        assert!(why.is_some());
        assert_eq!(
            f.check(&p, publish("", Some(4), 0)).0,
            Step::End(Goodbye::Malformed)
        );
    }

    #[test]
    fn refusals_answer_per_qos_and_end_the_connection_at_the_limit() {
        let p = policy();
        let mut f = viewer();
        let (step, _) = f.check(&p, publish("rtcam/cam1/command", None, 1));
        let Step::Answer(ack) = step else {
            panic!("a PUBACK: {step:?}");
        };
        let mut ack = BytesMut::from(&ack[..]);
        assert!(matches!(
            v5::Packet::read(&mut ack, None).unwrap(),
            v5::Packet::PubAck(a) if a.reason == v5::PubAckReason::NotAuthorized
        ));
        assert_eq!(
            f.check(&p, publish("rtcam/cam1/command", None, 2)).0,
            Step::End(Goodbye::NotAuthorized)
        );
        while f.refusals() < MAX_REFUSALS - 1 {
            assert_eq!(f.check(&p, publish("x", None, 0)).0, Step::Drop);
        }
        assert_eq!(
            f.check(&p, publish("x", None, 0)).0,
            Step::End(Goodbye::NotAuthorized)
        );
    }
}
