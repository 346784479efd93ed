"""Console logins: a token, entered once, becomes a session cookie with a CSRF token.

The admin token logs in as `admin` (may act), the viewer token as `viewer` (reads). A
session is a random id in an HttpOnly, SameSite=Strict cookie scoped to /ui, with an
expiry; it carries its own CSRF token, which every state-changing form must send back.
Sessions live in memory, at most `max_sessions` (the oldest goes first): a restart logs
everyone out, which is the safe direction. Tokens and session ids are compared in
constant time. No clock reads: `now` is passed in.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "viewer"]
COOKIE = "mapek_session"
LOGIN_COOKIE = "mapek_login"  # the login form's own double-submit nonce (login CSRF)


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    role: Role
    csrf: str
    created_at: float
    expires_at: float

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())

    @property
    def label(self) -> str:
        """Who, for the journal: the role and a prefix of the session id (not the secret)."""
        return f"console {self.role} session {self.id[:8]}"


def token_role(token: str, *, admin: str | None, viewer: str | None) -> Role | None:
    """The role a presented token logs in as, or None (compared in constant time)."""
    given = token.encode()
    role: Role | None = None
    # Both comparisons always run: which one matched does not show in the timing.
    if admin is not None and hmac.compare_digest(given, admin.encode()):
        role = "admin"
    if viewer is not None and hmac.compare_digest(given, viewer.encode()) and role is None:
        role = "viewer"
    return role


class Sessions:
    """The open console sessions (one owner)."""

    def __init__(self, *, ttl_s: float, max_sessions: int) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._by_id: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, role: Role, *, now: float) -> Session:
        """A new session; at the bound the oldest of the same role goes (so logins with
        the viewer token can never log an admin out), else the oldest of all."""
        self._expire(now)
        while len(self._by_id) >= self.max_sessions:
            same = next((sid for sid, s in self._by_id.items() if s.role == role), None)
            del self._by_id[same if same is not None else next(iter(self._by_id))]
        session = Session(
            id=secrets.token_urlsafe(32),
            role=role,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + self.ttl_s,
        )
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None, *, now: float) -> Session | None:
        """The live session with this id, or None (unknown, or expired: then dropped)."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if now >= session.expires_at:
            del self._by_id[session_id]
            return None
        return session

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def _expire(self, now: float) -> None:
        for sid in [sid for sid, s in self._by_id.items() if now >= s.expires_at]:
            del self._by_id[sid]
