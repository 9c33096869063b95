"""The one error telemetry raises, below every telemetry module (the
sampler refuses a bad interval, the timeline reader an unreadable file)."""

from autotune.errors import AutotuneError


class TelemetryError(AutotuneError):
    """Bad telemetry input: an unreadable timeline, a bad interval, a command
    that cannot start, an output another daemon already writes."""
