//! Home Assistant MQTT discovery: retained config messages that make the camera, its sensors,
//! a streaming switch and a snapshot button appear under one device, with availability taken
//! from `R/status`. Pure: builds the messages; the MQTT adapter publishes them on every connect.

use super::Publication;
use crate::signalling::protocol::Topics;
use serde_json::{json, Value};

/// One discovery message: the entity's component type, its object id, and its config.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub component: &'static str,
    pub object_id: &'static str,
    pub config: Value,
}

/// The entities rtcam announces.
pub fn entities(topics: &Topics, device_id: &str, version: &str) -> Vec<Entity> {
    let node = node_id(device_id);
    let root = topics.root();
    let device = json!({
        "identifiers": [node],
        "name": format!("rtcam {device_id}"),
        "manufacturer": "rtcam",
        "model": "rtcam camera agent",
        "sw_version": version,
    });
    let availability = json!([{
        "topic": topics.status(),
        "value_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }]);
    let base = |name: &str, object: &str| {
        json!({
            "name": name,
            "unique_id": format!("{node}_{object}"),
            "object_id": format!("{node}_{object}"),
            "device": device,
            "availability": availability,
        })
    };
    let with = |mut v: Value, extra: Value| {
        if let (Some(a), Some(b)) = (v.as_object_mut(), extra.as_object()) {
            a.extend(b.clone());
        }
        v
    };
    let command = |name: &str, args: Value| {
        json!({"id": format!("ha-{name}"), "command": name, "args": args}).to_string()
    };
    vec![
        Entity {
            component: "camera",
            object_id: "camera",
            config: with(
                base("Camera", "camera"),
                json!({"topic": topics.snapshot()}),
            ),
        },
        Entity {
            component: "sensor",
            object_id: "viewers",
            config: with(
                base("Viewers", "viewers"),
                json!({"state_topic": topics.status(), "value_template": "{{ value_json.viewers | default(0) }}",
                       "state_class": "measurement", "icon": "mdi:eye"}),
            ),
        },
        Entity {
            component: "sensor",
            object_id: "fps",
            config: with(
                base("Frame rate", "fps"),
                json!({"state_topic": topics.telemetry(), "value_template": "{{ value_json.fps_in }}",
                       "unit_of_measurement": "fps", "state_class": "measurement"}),
            ),
        },
        Entity {
            component: "sensor",
            object_id: "bitrate",
            config: with(
                base("Bitrate", "bitrate"),
                json!({"state_topic": topics.telemetry(), "value_template": "{{ value_json.bitrate_kbps }}",
                       "unit_of_measurement": "kbit/s", "device_class": "data_rate", "state_class": "measurement"}),
            ),
        },
        Entity {
            component: "sensor",
            object_id: "temperature",
            config: with(
                base("SoC temperature", "temperature"),
                json!({"state_topic": topics.telemetry(), "value_template": "{{ value_json.temperature_c }}",
                       "unit_of_measurement": "°C", "device_class": "temperature", "state_class": "measurement"}),
            ),
        },
        Entity {
            component: "switch",
            object_id: "stream",
            config: with(
                base("Streaming", "stream"),
                json!({"command_topic": format!("{root}/command"),
                       "payload_on": command("stream", json!({"on": true})),
                       "payload_off": command("stream", json!({"on": false})),
                       "state_topic": topics.status(),
                       "value_template": "{{ 'ON' if value_json.streaming else 'OFF' }}",
                       "state_on": "ON", "state_off": "OFF", "icon": "mdi:cctv"}),
            ),
        },
        Entity {
            component: "button",
            object_id: "snapshot",
            config: with(
                base("Take snapshot", "snapshot"),
                json!({"command_topic": format!("{root}/command"),
                       "payload_press": command("snapshot", json!({})), "icon": "mdi:camera"}),
            ),
        },
    ]
}

/// Discovery messages for the broker: the configs, or, when discovery is off, empty retained
/// payloads that remove entities an earlier run announced.
pub fn publications(
    topics: &Topics,
    device_id: &str,
    version: &str,
    ha_prefix: &str,
    enabled: bool,
) -> Vec<Publication> {
    let node = node_id(device_id);
    entities(topics, device_id, version)
        .into_iter()
        .map(|e| {
            let topic = format!("{ha_prefix}/{}/{node}/{}/config", e.component, e.object_id);
            let payload = if enabled {
                serde_json::to_vec(&e.config).expect("discovery JSON always serialises")
            } else {
                Vec::new()
            };
            Publication::new(topic, payload, true)
        })
        .collect()
}

/// Home Assistant node ids allow `[a-zA-Z0-9_-]`; rtcam's device ids already do.
fn node_id(device_id: &str) -> String {
    format!("rtcam_{device_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_publishes_empty_retained_configs_on_the_same_topics() {
        let t = Topics::new("rtcam", "cam1");
        let on = publications(&t, "cam1", "1.0", "homeassistant", true);
        let off = publications(&t, "cam1", "1.0", "homeassistant", false);
        assert_eq!(on.len(), off.len());
        for (a, b) in on.iter().zip(&off) {
            assert_eq!(a.topic, b.topic);
            assert!(a.retain && b.retain);
            assert!(!a.payload.is_empty() && b.payload.is_empty());
        }
        assert!(on
            .iter()
            .any(|p| p.topic == "homeassistant/camera/rtcam_cam1/camera/config"));
    }
}
