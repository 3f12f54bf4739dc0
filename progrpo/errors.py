"""Error types. Every message names the offending input and says how to fix it."""

from __future__ import annotations


class ProGRPOConfigError(ValueError):
    """A configuration or input value is invalid (the message names the input and the fix)."""
