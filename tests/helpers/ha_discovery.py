"""Home Assistant's MQTT discovery schema, as its documentation states it, for checking what rlivs announces.

Written from the Home Assistant docs (integrations/mqtt "MQTT Discovery", and the "Configuration Variables" of
sensor.mqtt, event.mqtt and image.mqtt): the keys each component accepts (full names; rlivs uses no abbreviations),
the required ones, the device and origin keys, and the rules between keys that the docs state. Templates are rendered
with Jinja2 (Home Assistant's template engine) on the payloads a test received.

    problems = check_discovery(topic, config, published_topics)   # [] when Home Assistant would take it
    render(template, payload_bytes)                                 # a value_template's result, as HA computes it
"""

from __future__ import annotations

import json
import re

# Every MQTT entity (the "Configuration Variables" shared by the components' pages) plus `origin` (discovery only).
COMMON = {
    "availability", "availability_mode", "availability_template", "availability_topic", "default_entity_id",
    "device", "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id", "origin", "payload_available",
    "payload_not_available", "qos", "unique_id",
}
COMPONENTS = {
    "sensor": {"keys": {"device_class", "expire_after", "force_update", "last_reset_value_template", "options",
                        "state_class", "state_topic", "suggested_display_precision", "unit_of_measurement",
                        "value_template"},
               "required": {"state_topic"}},
    "event": {"keys": {"device_class", "event_types", "state_topic", "value_template"},
              "required": {"state_topic", "event_types"}},
    "image": {"keys": {"content_type", "image_encoding", "image_topic", "url_template", "url_topic"},
              "required": set(),  # exactly one of image_topic and url_topic (checked below)
              "one_of": {"image_topic", "url_topic"}},
}
DEVICE = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id",
          "name", "serial_number", "suggested_area", "sw_version", "via_device"}
ORIGIN = {"name", "sw_version", "support_url"}
ENTITY_CATEGORIES = {"config", "diagnostic"}
HA_STATE_MAX = 255  # a state longer than this is refused (the entity's state is set to unknown)
EVENT_DEVICE_CLASSES = {"button", "doorbell", "motion"}
# keys whose value is a topic Home Assistant subscribes to
SUBSCRIBED = ("state_topic", "json_attributes_topic", "availability_topic", "image_topic", "url_topic")
TOPIC_RE = re.compile(r"^(?P<prefix>.+)/(?P<component>[^/]+)/(?:(?P<node>[A-Za-z0-9_-]+)/)?"
                      r"(?P<object>[A-Za-z0-9_-]+)/config$")


def topic_matches(sub: str, topic: str) -> bool:
    import paho.mqtt.client as mqtt

    return mqtt.topic_matches_sub(sub, topic)


def check_discovery(topic: str, config: dict, published: set[str], prefix: str = "homeassistant") -> list[str]:
    """What Home Assistant would refuse or never fill in a discovery message: the topic's form, unknown or missing
    keys, the device and origin blocks, and every subscribed topic being one that rlivs publishes (`published`:
    the topics a subscriber saw)."""
    problems = []
    m = TOPIC_RE.match(topic)
    if not m or m["prefix"] != prefix:
        return [f"{topic}: not <{prefix}>/<component>/[<node_id>/]<object_id>/config with ids of [A-Za-z0-9_-]"]
    component = m["component"]
    if component not in COMPONENTS:
        return [f"{topic}: component {component!r} is not one this checker knows"]
    spec = COMPONENTS[component]
    allowed = COMMON | spec["keys"]
    problems += [f"{topic}: unknown key {k!r}" for k in sorted(set(config) - allowed)]
    problems += [f"{topic}: missing required key {k!r}" for k in sorted(spec["required"] - set(config))]
    if "one_of" in spec and len(spec["one_of"] & set(config)) != 1:
        problems.append(f"{topic}: exactly one of {sorted(spec['one_of'])} is required")
    if not config.get("unique_id"):
        problems.append(f"{topic}: no unique_id (the device block only works with one)")
    if "availability" in config and "availability_topic" in config:
        problems.append(f"{topic}: availability and availability_topic must not be used together")
    dev = config.get("device")
    if not isinstance(dev, dict) or not (dev.get("identifiers") or dev.get("connections")):
        problems.append(f"{topic}: device needs identifiers or connections")
    else:
        problems += [f"{topic}: unknown device key {k!r}" for k in sorted(set(dev) - DEVICE)]
        if not isinstance(dev.get("identifiers", []), list):
            problems.append(f"{topic}: device identifiers must be a list")
    origin = config.get("origin")
    if origin is not None:
        if not isinstance(origin, dict) or not origin.get("name"):
            problems.append(f"{topic}: origin needs a name")
        else:
            problems += [f"{topic}: unknown origin key {k!r}" for k in sorted(set(origin) - ORIGIN)]
    if "entity_category" in config and config["entity_category"] not in ENTITY_CATEGORIES:
        problems.append(f"{topic}: entity_category must be one of {sorted(ENTITY_CATEGORIES)}")
    if component == "event":
        types = config.get("event_types")
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            problems.append(f"{topic}: event_types must be a non-empty list of strings")
        if "device_class" in config and config["device_class"] not in EVENT_DEVICE_CLASSES:
            problems.append(f"{topic}: an event's device_class must be one of {sorted(EVENT_DEVICE_CLASSES)}")
    if config.get("qos", 0) not in (0, 1, 2):
        problems.append(f"{topic}: qos must be 0, 1 or 2")
    for key in SUBSCRIBED:
        sub = config.get(key)
        if sub is not None and not any(topic_matches(sub, t) for t in published):
            problems.append(f"{topic}: {key} {sub!r} matches no topic rlivs published")
    return problems


def render(template: str, payload: bytes) -> str:
    """A value_template rendered as Home Assistant renders it for an MQTT message: `value` is the payload text and
    `value_json` its JSON, in a sandboxed Jinja2 environment."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    text = payload.decode()
    return ImmutableSandboxedEnvironment().from_string(template).render(value=text, value_json=json.loads(text))
