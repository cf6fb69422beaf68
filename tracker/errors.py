"""The one exception tree of the project.

Every error the product raises on purpose derives from :class:`TrackerError`, so callers can catch
the product's failures without catching programming errors.
"""

from __future__ import annotations


class TrackerError(Exception):
    """Root of every deliberate Touchpoint Tracker error."""


class ConfigError(TrackerError):
    """A setting or configuration file is invalid; ``field`` names what is wrong."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BrokerError(TrackerError):
    """The embedded Kafka broker could not be prepared or started."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class ValidationError(TrackerError):
    """Input was rejected; ``reason`` is a short machine-readable code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class WarehouseError(TrackerError):
    """ClickHouse refused or failed a statement; ``retriable``: may trying again help."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class UnavailableError(TrackerError):
    """A dependency (Kafka, ClickHouse) is not reachable now; try again after ``retry_after`` s."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
