"""Message passing between ranks: one traced API (Comm), pluggable transports."""
from .base import TAGS, Comm, byte_view, tag_for

__all__ = ["Comm", "TAGS", "byte_view", "tag_for"]
