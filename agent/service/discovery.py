"""Home Assistant MQTT discovery for a facelite device: its status, last-person and fps sensors, the ``Visit``
event entity and one ``device_tracker`` per enrolled person (the retained ``config`` messages;
agent/service/events.py has
the topics and payloads they point at).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from facelite import __version__
from facelite.recognition.names import slugify
from facelite.service.events import OFFLINE, ONLINE, Topics, compact_json
from facelite.service.messages import Message


# --------------------------------------------------------------------
def _ha_device(topics: Topics) -> dict[str, Any]:
    return {
        "identifiers": [topics.node_id],
        "name": f"facelite {topics.device_id}",
        "manufacturer": "facelite",
        "model": "facelite agent",
        "sw_version": __version__,
    }


def _ha_availability(topics: Topics) -> dict[str, Any]:
    return {"availability_topic": topics.availability, "payload_available": ONLINE, "payload_not_available": OFFLINE}


def _config(topics: Topics, component: str, object_id: str, config: dict[str, Any]) -> Message:
    body = {**config, "unique_id": f"{topics.node_id}_{object_id}", "device": _ha_device(topics)}
    return Message(topics.discovery(component, object_id), compact_json(body), qos=1, retain=True)


LAST_PERSON_TEMPLATE = "{{ value_json.person if value_json is defined else 'None' }}"


def discovery_messages(topics: Topics, people: Iterable[str]) -> list[Message]:
    """Retained discovery configs: device status, last recognized person, fps, and one tracker per person."""
    out = [
        # No availability on this one: when the agent is offline it should read "off", not "unavailable".
        _config(
            topics,
            "binary_sensor",
            "status",
            {
                "name": "Status",
                "state_topic": topics.availability,
                "payload_on": ONLINE,
                "payload_off": OFFLINE,
                "device_class": "connectivity",
                "entity_category": "diagnostic",
            },
        ),
        _config(
            topics,
            "sensor",
            "last_person",
            {
                "name": "Last recognized person",
                "state_topic": topics.last_person,
                # Emptied when that person is forgotten: no JSON then, and "None" reads as unknown in HA.
                "value_template": LAST_PERSON_TEMPLATE,
                "json_attributes_topic": topics.last_person,
                "icon": "mdi:face-recognition",
                **_ha_availability(topics),
            },
        ),
        _config(
            topics,
            "sensor",
            "fps",
            {
                "name": "Frames per second",
                "state_topic": topics.state,
                "value_template": "{{ value_json.fps }}",
                "unit_of_measurement": "fps",
                "state_class": "measurement",
                "entity_category": "diagnostic",
                **_ha_availability(topics),
            },
        ),
    ]
    out.append(event_discovery_message(topics))
    out.extend(person_discovery_message(topics, name) for name in people)
    return out


EVENT_TYPES = ("recognized", "unknown", "left")
# HA's MQTT event entity wants {"event_type": ..., other keys become attributes}: the contract's event renamed,
# without the (large, optional) face crop.
_EVENT_TEMPLATE = (
    "{{ {'event_type': value_json.type, 'person': value_json.person, 'camera': value_json.camera, "
    "'similarity': value_json.similarity, 'decision': value_json.decision, 'track_id': value_json.track_id, "
    "'event_id': value_json.event_id, 'timestamp': value_json.timestamp} | tojson }}"
)


def event_discovery_message(topics: Topics) -> Message:
    """An HA ``event`` entity fed by the events topic: automations trigger on recognized / unknown / left."""
    return _config(
        topics,
        "event",
        "visit",
        {
            "name": "Visit",
            "state_topic": topics.events,
            "event_types": list(EVENT_TYPES),
            "value_template": _EVENT_TEMPLATE,
            "icon": "mdi:account-eye",
            **_ha_availability(topics),
        },
    )


def person_discovery_message(topics: Topics, name: str) -> Message:
    """A device_tracker (home / not_home) per enrolled person, so HA's person integration can use it."""
    return _config(
        topics,
        "device_tracker",
        f"person_{slugify(name)}",
        {
            "name": name,
            "state_topic": topics.person(name),
            "value_template": "{{ value_json.state }}",
            "payload_home": "home",
            "payload_not_home": "away",
            # A fixed camera is a stationary tracker, like a router: HA ranks it above GPS when home.
            "source_type": "router",
            "json_attributes_topic": topics.person(name),
            "icon": "mdi:account",
            **_ha_availability(topics),
        },
    )
