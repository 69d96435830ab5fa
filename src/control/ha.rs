//! Home Assistant MQTT discovery: retained config messages that make the camera, its sensors,
//! a streaming switch and a snapshot button appear under one device, with availability taken
//! from `R/status`. Pure: builds the messages from what the caller found out (the page's
//! address, the board's measurements); the MQTT adapter publishes them on every connect.
//!
//! The configs follow Home Assistant's single-component discovery schema: `default_entity_id`
//! (`<component>.<id>`) names each entity, `origin` says which software announced it, and the
//! device links to rtcam's page through `configuration_url`.

use super::Publication;
use crate::signalling::protocol::Topics;
use serde_json::{json, Value};

/// What the discovery messages say about this rtcam and its board.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Announcement<'a> {
    pub device_id: &'a str,
    pub version: &'a str,
    /// The viewer page: the device's "Visit" link in Home Assistant.
    pub page_url: Option<&'a str>,
    /// Where people find help with rtcam, from the package's metadata.
    pub support_url: Option<&'a str>,
    pub board: Board,
}

/// The optional measurements this board has. A sensor for a value the board lacks would stay
/// "unknown" forever, so it is not announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Board {
    /// A thermal zone gives the SoC temperature (`temperature_c` in telemetry).
    pub temperature: bool,
}

/// One discovery message: the entity's component type, its object id, its config, and whether
/// it is announced on this board.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub component: &'static str,
    pub object_id: &'static str,
    /// False for a sensor whose value the board lacks: its topic gets an empty retained
    /// config, which removes the entity if Home Assistant knew it.
    pub announced: bool,
    pub config: Value,
}

/// Every entity rtcam knows, each marked with whether this board announces it.
pub fn entities(topics: &Topics, about: &Announcement<'_>) -> Vec<Entity> {
    let device = Device::new(topics, about);
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
        device
            .entity(
                ("sensor", "temperature", "SoC temperature"),
                telemetry(
                    "{{ value_json.temperature_c }}",
                    json!({"unit_of_measurement": "°C", "device_class": "temperature"}),
                ),
            )
            .only_if(about.board.temperature),
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

impl Entity {
    fn only_if(self, announced: bool) -> Self {
        Self { announced, ..self }
    }
}

/// What every entity of the camera carries: the device it belongs to, the software that
/// announced it, and its availability, taken from `R/status`.
struct Device {
    node: String,
    device: Value,
    origin: Value,
    availability: Value,
}

impl Device {
    fn new(topics: &Topics, about: &Announcement<'_>) -> Self {
        let node = node_id(about.device_id);
        let mut device = json!({
            "identifiers": [node],
            "name": format!("rtcam {}", about.device_id),
            "manufacturer": "rtcam",
            "model": "rtcam camera agent",
            "sw_version": about.version,
        });
        if let Some(url) = about.page_url {
            device["configuration_url"] = url.into();
        }
        let mut origin = json!({"name": "rtcam", "sw_version": about.version});
        if let Some(url) = about.support_url {
            origin["support_url"] = url.into();
        }
        let availability = json!([{
            "topic": topics.status(),
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }]);
        Self {
            node,
            device,
            origin,
            availability,
        }
    }

    /// The entity `(component, object id, name)`: the shared fields, then its own. Its
    /// `default_entity_id` is `<component>.<unique id as a slug>`, so the entity id Home
    /// Assistant gives it names the device too (`sensor.rtcam_cam1_fps`).
    fn entity(
        &self,
        (component, object_id, name): (&'static str, &'static str, &str),
        own: Value,
    ) -> Entity {
        let unique_id = format!("{}_{object_id}", self.node);
        let config = json!({
            "name": name,
            "default_entity_id": format!("{component}.{}", slug(&unique_id)),
            "unique_id": unique_id,
            "device": self.device,
            "origin": self.origin,
            "availability": self.availability,
        });
        Entity {
            component,
            object_id,
            announced: true,
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
/// A sensor the board lacks gets the same empty payload, so Home Assistant drops one it knew.
pub fn publications(
    topics: &Topics,
    about: &Announcement<'_>,
    ha_prefix: &str,
    enabled: bool,
) -> Vec<Publication> {
    let node = node_id(about.device_id);
    entities(topics, about)
        .into_iter()
        .map(|e| {
            let topic = format!("{ha_prefix}/{}/{node}/{}/config", e.component, e.object_id);
            let payload = if enabled && e.announced {
                serde_json::to_vec(&e.config).expect("discovery JSON always serialises")
            } else {
                Vec::new()
            };
            Publication::new(topic, payload, true)
        })
        .collect()
}

/// Where people find help with rtcam: the package's homepage or repository, when its
/// metadata names one.
pub fn package_support_url() -> Option<&'static str> {
    [env!("CARGO_PKG_HOMEPAGE"), env!("CARGO_PKG_REPOSITORY")]
        .into_iter()
        .find(|url| !url.is_empty())
}

/// An entity id's part after the domain: Home Assistant allows only `[a-z0-9_]` there, while
/// device ids may hold capitals, `-` and `.`. Lower case, every other character and run of
/// them one `_`, none at the ends: the id Home Assistant derives from an `object_id` too, so an
/// entity keeps its id across the two keys.
fn slug(id: &str) -> String {
    id.to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

/// Home Assistant node ids allow `[a-zA-Z0-9_-]`; rtcam's device ids already do.
fn node_id(device_id: &str) -> String {
    format!("rtcam_{device_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "http://192.0.2.7:8080/";
    const SUPPORT: &str = "https://example.org/rtcam";

    fn about(temperature: bool) -> Announcement<'static> {
        Announcement {
            device_id: "cam1",
            version: "1.0",
            page_url: Some(PAGE),
            support_url: Some(SUPPORT),
            board: Board { temperature },
        }
    }

    fn announced(about: &Announcement<'_>) -> Vec<(String, Value)> {
        publications(&Topics::new("rtcam", "cam1"), about, "homeassistant", true)
            .into_iter()
            .filter(|p| !p.payload.is_empty())
            .map(|p| (p.topic, serde_json::from_slice(&p.payload).unwrap()))
            .collect()
    }

    const TEMPERATURE: &str = "homeassistant/sensor/rtcam_cam1/temperature/config";

    #[test]
    fn removal_publishes_empty_retained_configs_on_the_same_topics() {
        let t = Topics::new("rtcam", "cam1");
        let on = publications(&t, &about(true), "homeassistant", true);
        let off = publications(&t, &about(true), "homeassistant", false);
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

    #[test]
    fn entities_are_named_by_default_entity_id_not_the_deprecated_object_id() {
        for (topic, config) in announced(&about(true)) {
            let component = topic.split('/').nth(1).unwrap();
            let unique_id = config["unique_id"].as_str().unwrap();
            assert_eq!(
                config["default_entity_id"],
                format!("{component}.{}", slug(unique_id)),
                "{topic}"
            );
            assert!(config.get("object_id").is_none(), "{topic}: {config}");
        }
        let (_, fps) = announced(&about(true))
            .into_iter()
            .find(|(t, _)| t.ends_with("/fps/config"))
            .unwrap();
        assert_eq!(fps["default_entity_id"], "sensor.rtcam_cam1_fps");
    }

    #[test]
    fn entity_ids_are_slugs_whatever_the_device_id() {
        assert_eq!(slug("rtcam_cam1_fps"), "rtcam_cam1_fps");
        assert_eq!(
            slug("rtcam_Garden-Cam.2__x_fps"),
            "rtcam_garden_cam_2_x_fps"
        );
        let about = Announcement {
            device_id: "Garden-Cam",
            ..about(true)
        };
        let all = entities(&Topics::new("rtcam", "Garden-Cam"), &about);
        let button = all.iter().find(|e| e.component == "button").unwrap();
        assert_eq!(button.config["unique_id"], "rtcam_Garden-Cam_snapshot");
        assert_eq!(
            button.config["default_entity_id"],
            "button.rtcam_garden_cam_snapshot"
        );
    }

    #[test]
    fn every_config_names_its_origin_and_links_the_page() {
        for (topic, config) in announced(&about(true)) {
            assert_eq!(
                config["origin"],
                json!({"name": "rtcam", "sw_version": "1.0", "support_url": SUPPORT}),
                "{topic}"
            );
            assert_eq!(config["device"]["configuration_url"], PAGE, "{topic}");
        }
        // Without a page address or a support page, the keys are left out rather than empty.
        let bare = Announcement {
            page_url: None,
            support_url: None,
            ..about(true)
        };
        for (topic, config) in announced(&bare) {
            assert_eq!(
                config["origin"],
                json!({"name": "rtcam", "sw_version": "1.0"})
            );
            assert!(
                config["device"].get("configuration_url").is_none(),
                "{topic}"
            );
        }
    }

    #[test]
    fn a_board_with_a_thermal_zone_announces_its_temperature() {
        let configs = announced(&about(true));
        let (_, temperature) = configs.iter().find(|(t, _)| t == TEMPERATURE).unwrap();
        assert_eq!(temperature["device_class"], "temperature");
        assert_eq!(temperature["state_topic"], "rtcam/cam1/telemetry");
        assert_eq!(configs.len(), 7);
    }

    #[test]
    fn a_board_without_a_thermal_zone_removes_the_temperature_sensor() {
        let all = publications(
            &Topics::new("rtcam", "cam1"),
            &about(false),
            "homeassistant",
            true,
        );
        let temperature = all.iter().find(|p| p.topic == TEMPERATURE).unwrap();
        assert!(temperature.retain && temperature.payload.is_empty());
        // Every other entity is still announced.
        let configs = announced(&about(false));
        assert_eq!(configs.len(), 6);
        assert!(configs.iter().all(|(t, _)| t != TEMPERATURE));
        for needed in ["viewers", "fps", "bitrate"] {
            assert!(
                configs
                    .iter()
                    .any(|(t, _)| t.ends_with(&format!("/{needed}/config"))),
                "{needed}"
            );
        }
    }
}
