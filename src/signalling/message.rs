//! The MQTT messages rtcam's control plane exchanges, as plain values: the MQTT adapter
//! ([`super::mqtt`]) turns them into packets, and `control` never sees the client library.

use bytes::Bytes;

/// A command as it arrived over MQTT, with the MQTT 5 reply routing if the request had it.
#[derive(Debug, Clone)]
pub struct ControlRequest {
    pub payload: Bytes,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
}

/// Something to publish. The MQTT adapter sends these as they come.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    /// MQTT 5 correlation data echoed on a reply.
    pub correlation_data: Option<Bytes>,
}

impl Publication {
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, retain: bool) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            retain,
            correlation_data: None,
        }
    }
}
