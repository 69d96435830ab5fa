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
    let device = Device::new(topics, device_id, version);
    let command_topic = format!("{}/command", topics.root());
    let telemetry = |template: &str, own: Value| measurement(topics.telemetry(), template, own);
    vec![
        device.entity(
            ("camera", "camera", "Camera"),
            json!({"topic": topics.snapshot()}),
        ),
        device.entity(
            ("sensor", "viewers", "Viewers"),
            measurement(
                topics.status(),
                "{{ value_json.viewers | default(0) }}",
                json!({"icon": "mdi:eye"}),
            ),
        ),
        device.entity(
            ("sensor", "fps", "Frame rate"),
            telemetry(
                "{{ value_json.fps_in }}",
                json!({"unit_of_measurement": "fps"}),
            ),
        ),
        device.entity(
            ("sensor", "bitrate", "Bitrate"),
            telemetry(
                "{{ value_json.bitrate_kbps }}",
                json!({"unit_of_measurement": "kbit/s", "device_class": "data_rate"}),
            ),
        ),
        device.entity(
            ("sensor", "temperature", "SoC temperature"),
            telemetry(
                "{{ value_json.temperature_c }}",
                json!({"unit_of_measurement": "°C", "device_class": "temperature"}),
            ),
        ),
        device.entity(
            ("switch", "stream", "Streaming"),
            json!({"command_topic": command_topic,
                   "payload_on": command("stream", json!({"on": true})),
                   "payload_off": command("stream", json!({"on": false})),
                   "state_topic": topics.status(),
                   "value_template": "{{ 'ON' if value_json.streaming else 'OFF' }}",
                   "state_on": "ON", "state_off": "OFF", "icon": "mdi:cctv"}),
        ),
        device.entity(
            ("button", "snapshot", "Take snapshot"),
            json!({"command_topic": command_topic,
                   "payload_press": command("snapshot", json!({})), "icon": "mdi:camera"}),
        ),
    ]
}

/// What every entity of the camera carries: the device it belongs to and its availability,
/// taken from `R/status`.
struct Device {
    node: String,
    device: Value,
    availability: Value,
}

impl Device {
    fn new(topics: &Topics, device_id: &str, version: &str) -> Self {
        let node = node_id(device_id);
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
        Self {
            node,
            device,
            availability,
        }
    }

    /// The entity `(component, object id, name)`: the shared fields, then its own.
    fn entity(
        &self,
        (component, object_id, name): (&'static str, &'static str, &str),
        own: Value,
    ) -> Entity {
        let node = &self.node;
        let config = json!({
            "name": name,
            "unique_id": format!("{node}_{object_id}"),
            "object_id": format!("{node}_{object_id}"),
            "device": self.device,
            "availability": self.availability,
        });
        Entity {
            component,
            object_id,
            config: with(config, own),
        }
    }
}

/// A sensor's state: `template` applied to `state_topic`'s JSON, a measurement, and `own`.
fn measurement(state_topic: String, template: &str, own: Value) -> Value {
    with(
        json!({"state_topic": state_topic, "value_template": template, "state_class": "measurement"}),
        own,
    )
}

/// `base` with the fields of `extra` added (or replaced).
fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (base.as_object_mut(), extra) {
        a.extend(b);
    }
    base
}

/// The command payload Home Assistant publishes for a switch or button.
fn command(name: &str, args: Value) -> String {
    json!({"id": format!("ha-{name}"), "command": name, "args": args}).to_string()
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
