"""Times are UTC everywhere; SQLite hands back naive datetimes, which are UTC too."""

from datetime import datetime, timezone


def utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def iso(dt: datetime | None) -> str | None:
    d = utc(dt)
    return None if d is None else d.isoformat().replace("+00:00", "Z")
