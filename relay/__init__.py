"""Relay: turns monitoring alerts into DoiT support tickets, exactly once."""

from __future__ import annotations

__version__ = "0.1.0"
