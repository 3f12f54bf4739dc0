"""The package's one logger. Everything in ``progrpo`` logs through ``logger``; nothing prints."""

from __future__ import annotations

import logging

logger = logging.getLogger("progrpo")
