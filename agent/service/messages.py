"""The unit every sink delivers: one MQTT message. Events, presence and state all become these."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    topic: str  # full topic, e.g. facelite/<device_id>/events
    payload: bytes
    qos: int = 1
    retain: bool = False
    # Set for messages that must survive a broker outage (events): the spool keeps these on disk in order.
    # Retained state/presence is re-published on reconnect instead, so it is not spooled.
    durable: bool = False
