"""Brokers carry room batches and DMs between nodes; see base.Broker."""

from server.broker.base import Broker, RoomState
from server.broker.memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "RoomState"]
