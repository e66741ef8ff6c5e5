"""What never changes about a payment session once it is open: its owner and its rail. A
submission to a session this process has seen can send its proof's statements with the
session's own read, in one round trip (services.proofs), and checks the guess against the
row that read returns before it uses any of their answers."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol


class _Session(Protocol):
    id: str
    owner_id: str
    rail_id: str
    network: str
    asset: str


@dataclass(frozen=True)
class SessionKey:
    id: str
    owner_id: str
    rail_id: str
    network: str
    asset: str

    @classmethod
    def of(cls, ps: _Session) -> SessionKey:
        return cls(ps.id, ps.owner_id, ps.rail_id, ps.network, ps.asset)

    def fits(self, ps: _Session) -> bool:
        """Whether `ps` (the row as read) is the session this key describes."""
        return self == SessionKey.of(ps)


class KnownSessions:
    """The last `size` sessions opened or read here, by id (least recently seen dropped)."""

    def __init__(self, size: int = 10_000):
        self.size = size
        self._keys: OrderedDict[str, SessionKey] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str) -> SessionKey | None:
        with self._lock:
            return self._keys.get(session_id)

    def remember(self, ps: _Session) -> None:
        key = SessionKey.of(ps)
        with self._lock:
            self._keys[key.id] = key
            self._keys.move_to_end(key.id)
            while len(self._keys) > self.size:
                self._keys.popitem(last=False)

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._keys.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._keys)
