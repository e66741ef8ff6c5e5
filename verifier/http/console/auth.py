"""Console sessions and CSRF tokens, verifiable by any API process without a table.

A staff member exchanges a staff token for a session cookie: a signed, expiring document
`{"sid", "sub", "th", "auth", "exp"}` (base64url JSON + "." + HMAC-SHA256). The key is derived
from the deployment's secrets (the audit key and the staff token table), so every process of
one deployment accepts the cookies of the others, and rotating either secret ends every
session. Each request re-checks that:

- the signature is right and `exp` has not passed (wall-clock time, never the engine's pinned
  clock: a fixed RAILPROOF_CLOCK would otherwise make cookies immortal);
- the staff token it was issued for (`th`, a hash of it) is still configured for the same
  staff name: removing a token from RAILPROOF_STAFF_TOKENS ends its sessions;
- the session was not logged out: logout appends `console.logout` to the audit log with the
  session id as its subject, and the check reads that (indexed) row.

CSRF: every form carries HMAC(key, "csrf:" + session id); the login form, before there is a
session, carries HMAC(key, "login:" + nonce) where the nonce is in a short-lived cookie of its
own. The cookies are HttpOnly and SameSite=Strict, scoped to /console.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SESSION_COOKIE = "railproof_console"
LOGIN_COOKIE = "railproof_console_login"
COOKIE_PATH = "/console"
SESSION_TTL_S = 3600  # idle lifetime; each page visit in the second half renews it
SESSION_MAX_S = 12 * 3600  # absolute lifetime from login, whatever the renewals
LOGIN_TTL_S = 1800
_KEY_INFO = b"railproof console session v1\x00"


def derive_key(audit_key: bytes | None, staff_tokens: dict[str, str]) -> bytes:
    """The signing key of console cookies: bound to the audit key (when set) and to the staff
    token table, both secrets every API process of a deployment shares."""
    table = json.dumps(sorted(staff_tokens.items()), separators=(",", ":")).encode()
    return hmac.digest(audit_key or b"railproof-console", _KEY_INFO + table, "sha256")


def token_hash(token: str) -> str:
    return hashlib.sha256(b"railproof console token\x00" + token.encode()).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class ConsoleSession:
    sid: str
    staff: str  # the staff name (the audit actor), as for a staff bearer token
    token_hash: str
    auth_at: int  # when the staff token was exchanged
    expires_at: int

    def doc(self) -> dict[str, Any]:
        return {
            "v": 1,
            "sid": self.sid,
            "sub": self.staff,
            "th": self.token_hash,
            "auth": self.auth_at,
            "exp": self.expires_at,
        }


class Signer:
    def __init__(
        self,
        key: bytes,
        clock: Callable[[], float] = time.time,
        ttl_s: int = SESSION_TTL_S,
        max_s: int = SESSION_MAX_S,
    ):
        self.key = key
        self.clock = clock
        self.ttl_s = ttl_s
        self.max_s = max_s

    def _mac(self, purpose: str, text: str) -> str:
        return hmac.digest(self.key, f"{purpose}:{text}".encode(), "sha256").hex()

    # -- sessions -----------------------------------------------------------------------
    def new_session(self, staff: str, token: str) -> ConsoleSession:
        now = int(self.clock())
        return ConsoleSession(
            "cs_" + secrets.token_hex(16),
            staff,
            token_hash(token),
            now,
            min(now + self.ttl_s, now + self.max_s),
        )

    def renewed(self, cs: ConsoleSession) -> ConsoleSession | None:
        """A later expiry for a session past half its idle lifetime (None: keep the cookie)."""
        now = int(self.clock())
        if cs.expires_at - now > self.ttl_s // 2:
            return None
        exp = min(now + self.ttl_s, cs.auth_at + self.max_s)
        if exp <= cs.expires_at:
            return None
        return ConsoleSession(cs.sid, cs.staff, cs.token_hash, cs.auth_at, exp)

    def dump(self, cs: ConsoleSession) -> str:
        body = _b64(json.dumps(cs.doc(), separators=(",", ":"), sort_keys=True).encode())
        return body + "." + self._mac("session", body)

    def load(self, cookie: str | None) -> ConsoleSession | None:
        """The session a cookie holds, or None when it is missing, forged or expired."""
        if not cookie or len(cookie) > 1024 or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac("session", body).encode()):
            return None
        try:
            doc = json.loads(_unb64(body))
            cs = ConsoleSession(
                str(doc["sid"]), str(doc["sub"]), str(doc["th"]), int(doc["auth"]), int(doc["exp"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        now = self.clock()
        if doc.get("v") != 1 or now >= cs.expires_at or now >= cs.auth_at + self.max_s:
            return None
        return cs

    # -- CSRF ---------------------------------------------------------------------------
    def csrf_token(self, cs: ConsoleSession) -> str:
        return self._mac("csrf", cs.sid)

    def csrf_ok(self, cs: ConsoleSession, given: str | None) -> bool:
        if not given:
            return False
        return hmac.compare_digest(given.encode(), self.csrf_token(cs).encode())

    # -- what an action did -------------------------------------------------------------
    def done_mark(self, cs: ConsoleSession, done: str) -> str:
        """`done` for the page an action redirects to, bound to the session: a link from
        anyone else cannot make the console say something was done."""
        return f"{done}.{self._mac('done', f'{cs.sid}:{done}')[:32]}"

    def done_of(self, cs: ConsoleSession, mark: str | None) -> str | None:
        done, _, mac = (mark or "").rpartition(".")
        expected = self.done_mark(cs, done)[-32:]
        return done if done and hmac.compare_digest(mac.encode(), expected.encode()) else None

    def login_nonce(self) -> str:
        # The nonce cookie carries its own issue time, signed, so an old one is refused.
        body = f"{secrets.token_hex(16)}.{int(self.clock())}"
        return body + "." + self._mac("login-nonce", body)[:32]

    def login_csrf(self, nonce: str) -> str:
        return self._mac("login", nonce)

    def login_csrf_ok(self, nonce: str | None, given: str | None) -> bool:
        if not nonce or not given or nonce.count(".") != 2:
            return False
        rand, issued, mac = nonce.split(".")
        body = f"{rand}.{issued}"
        if not hmac.compare_digest(mac.encode(), self._mac("login-nonce", body)[:32].encode()):
            return False
        if not issued.isdigit() or self.clock() - int(issued) > LOGIN_TTL_S:
            return False
        return hmac.compare_digest(given.encode(), self.login_csrf(nonce).encode())


def staff_for(staff_tokens: dict[str, str], cs: ConsoleSession) -> bool:
    """True while the token the session was issued for is still configured for its staff
    name (constant-time over the whole table, as token lookups are)."""
    found = False
    want = cs.token_hash.encode()
    for token, name in staff_tokens.items():
        if hmac.compare_digest(token_hash(token).encode(), want) and name == cs.staff:
            found = True
    return found
