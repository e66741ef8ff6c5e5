"""Times are UTC everywhere; SQLite hands back naive datetimes, which are UTC too."""

from datetime import UTC, datetime
from typing import overload


@overload
def utc(dt: datetime) -> datetime: ...
@overload
def utc(dt: None) -> None: ...
def utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def iso(dt: datetime | None) -> str | None:
    d = utc(dt)
    return None if d is None else d.isoformat().replace("+00:00", "Z")


def process_now() -> datetime:
    """Process time: the real UTC wall clock. Leases and the age of idempotency claims are
    measured on it, never on the business clock (Settings.now), which may be pinned to replay
    recorded chains and then never moves. Call it through the module
    (`timeutil.process_now()`), so a test can stand in for the time passing."""
    return datetime.now(UTC)


def epoch_of(value: object) -> float | None:
    """A transfer time from evidence as epoch seconds: Solana and the fake rail record epoch
    seconds, the EVM/Tron adapters an ISO-8601 string; anything else is unknown (None)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return utc(datetime.fromisoformat(value.replace("Z", "+00:00"))).timestamp()
        except ValueError:
            return None
    return None
