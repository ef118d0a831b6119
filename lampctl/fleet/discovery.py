"""The node's MQTT topic tree, and Home Assistant discovery: the retained payloads that show each lamp there.

Topics follow `<discovery_prefix>/<component>/<node_id>/<object_id>/config` (node_id and
object_id of A-Z, a-z, 0-9, '_' and '-'); every entity has a stable unique_id, belongs to
one device per node and takes its availability from the node's status topic (last will).
"""

from __future__ import annotations

import json

# Every node's topics live under TOPIC_ROOT/<node>/ (the design's fleet contract).
TOPIC_ROOT = "lampctl"


def base(node: str) -> str:
    return f"{TOPIC_ROOT}/{node}"


def records_topic(node: str, kind: str) -> str:
    """Where the node sends its records: kind "sessions" or "events"."""
    return f"{base(node)}/{kind}"


def status_topic(node: str) -> str:
    return f"{base(node)}/status"


def state_topic(node: str, lamp_id: str) -> str:
    return f"{base(node)}/lamp/{lamp_id}/state"


def lamp_cmd_topic(node: str, lamp_id: str) -> str:
    return f"{base(node)}/lamp/{lamp_id}/cmd"


def node_cmd_topic(node: str) -> str:
    return f"{base(node)}/cmd"


def _device(node: str) -> dict:
    return {
        "identifiers": [f"lampctl_{node}"],
        "name": f"Heat lamps {node}",
        "manufacturer": "lampctl",
        "model": "lampctl relay controller",
    }


def _slug(text: str) -> str:
    """An entity id's object part: lower case, digits and '_' only."""
    return "".join(c if c.isalnum() and c.isascii() else "_" for c in text.lower())


def _common(component: str, node: str, object_id: str, name: str) -> dict:
    # default_entity_id (domain.slug) replaced object_id in Home Assistant 2025.10; object_id
    # stopped working in 2026.4.
    return {
        "name": name,
        "unique_id": f"lampctl_{node}_{object_id}",
        "default_entity_id": f"{component}.{_slug(f'lampctl_{node}_{object_id}')}",
        "device": _device(node),
        "availability_topic": status_topic(node),
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def _press(action: str, user: str, **more) -> str:
    return json.dumps({"action": action, "user": user, **more}, separators=(",", ":"))


def configs(mqtt_cfg, lamps, user: str = "homeassistant") -> list[tuple[str, str]]:
    """(topic, payload) pairs to publish retained. A preset button while commands are off gets an
    empty payload, which removes an entity Home Assistant may have kept from an earlier run."""
    node, prefix = mqtt_cfg.node, mqtt_cfg.discovery_prefix
    out: list[tuple[str, str]] = []

    def add(component: str, object_id: str, payload: dict | None) -> None:
        topic = f"{prefix}/{component}/lampctl_{node}/{object_id}/config"
        out.append((topic, "" if payload is None else json.dumps(payload, separators=(",", ":"))))

    for lamp in lamps:
        state = state_topic(node, lamp.id)
        add(
            "sensor",
            f"{lamp.id}_state",
            {
                **_common("sensor", node, f"{lamp.id}_state", f"{lamp.name} state"),
                "state_topic": state,
                "value_template": "{{ value_json.state }}",
                "json_attributes_topic": state,
                "icon": "mdi:heat-wave",
            },
        )
        add(
            "sensor",
            f"{lamp.id}_remaining",
            {
                **_common("sensor", node, f"{lamp.id}_remaining", f"{lamp.name} remaining"),
                "state_topic": state,
                "value_template": "{{ (value_json.remaining_s or 0) | round(0) }}",
                "device_class": "duration",
                "unit_of_measurement": "s",
            },
        )
        # A timestamp sensor Home Assistant counts down to by itself, between the 10 s refreshes
        # of "remaining": ISO-8601 with its zone while on, "None" (unknown) otherwise.
        add(
            "sensor",
            f"{lamp.id}_ends",
            {
                **_common("sensor", node, f"{lamp.id}_ends", f"{lamp.name} ends"),
                "state_topic": state,
                "value_template": "{{ value_json.ends_at or 'None' }}",
                "device_class": "timestamp",
                "icon": "mdi:timer-sand",
            },
        )
        # S23: the firmware's readings, for the lamps that have the sensor.
        if getattr(lamp, "thermistor_adc", None) is not None:
            add(
                "sensor",
                f"{lamp.id}_temperature",
                {
                    **_common("sensor", node, f"{lamp.id}_temperature", f"{lamp.name} temperature"),
                    "state_topic": state,
                    "value_template": "{{ value_json.temperature_c if value_json.temperature_c is not none else 'None' }}",
                    "device_class": "temperature",
                    "unit_of_measurement": "°C",
                },
            )
        if getattr(lamp, "current_adc", None) is not None:
            add(
                "sensor",
                f"{lamp.id}_current",
                {
                    **_common("sensor", node, f"{lamp.id}_current", f"{lamp.name} current"),
                    "state_topic": state,
                    "value_template": "{{ value_json.current_a if value_json.current_a is not none else 'None' }}",
                    "device_class": "current",
                    "unit_of_measurement": "A",
                },
            )
        add(
            "button",
            f"{lamp.id}_stop",
            {
                **_common("button", node, f"{lamp.id}_stop", f"{lamp.name} Stop"),
                "command_topic": lamp_cmd_topic(node, lamp.id),
                "payload_press": _press("stop", user),
                "qos": 1,
                "icon": "mdi:stop",
            },
        )
        for minutes in lamp.presets:
            label = f"{minutes:g}"
            payload = None
            if mqtt_cfg.commands:
                payload = {
                    **_common("button", node, f"{lamp.id}_start_{label.replace('.', '_')}", f"{lamp.name} {label} min"),
                    "command_topic": lamp_cmd_topic(node, lamp.id),
                    "payload_press": _press("start", user, minutes=minutes),
                    "qos": 1,
                    "icon": "mdi:timer",
                }
            add("button", f"{lamp.id}_start_{label.replace('.', '_')}", payload)
    add(
        "button",
        "stop_all",
        {
            **_common("button", node, "stop_all", "Stop all"),
            "command_topic": node_cmd_topic(node),
            "payload_press": _press("stop-all", user),
            "qos": 1,
            "icon": "mdi:stop-circle",
        },
    )
    return out
