"""Who may do what: API tokens, their roles and the rule that decides each operation.

Tokens are `cm_` + 32 random bytes (secrets.token_urlsafe), shown once, stored only as their
SHA-256. A fast hash is right here: with 256 bits of entropy no guess can find a token from its
hash, so a slow password hash (bcrypt, argon2) would only cost CPU on every request; SHA-256
lets the hash itself be the lookup key.

Verification costs no query per request: each process holds a snapshot of the active tokens'
hashes, reloaded when older than `ttl` seconds (and at most every MISS_REFRESH seconds when an
unknown token is presented, so a just-created token works within 0.1 s). A revoked token therefore
stops working everywhere within `ttl`; open websockets are re-checked on the same clock
(schema.access). last_used_at is written in one statement per reload, not per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from checkmate.db import access as access_queries

log = logging.getLogger("checkmate.access")

TOKEN_PREFIX = "cm_"
TOKEN_BYTES = 32
# Seconds between reloads caused by unknown tokens: a new token works within this, and a flood
# of bad tokens costs at most 1/MISS_REFRESH small queries per second, not one per request.
MISS_REFRESH = 0.1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)
LOCAL_ACTOR = "local"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


class Action(StrEnum):
    """What an operation does, for the access rule and the audit log."""

    READ = "READ"
    SUBSCRIBE = "SUBSCRIBE"
    READ_AUDIT = "READ_AUDIT"
    CREATE = "CREATE"
    CANCEL = "CANCEL"
    UNLOCK = "UNLOCK"
    CLEAN = "CLEAN"
    INVOKE = "INVOKE"


_VIEWER_ALWAYS = frozenset({Action.READ, Action.SUBSCRIBE})
# Mutations a viewer may preview: every batch action's dry run (createTask has none).
_VIEWER_DRY_RUN = frozenset({Action.CANCEL, Action.UNLOCK, Action.CLEAN, Action.INVOKE})


def may(role: Role, action: Action, dry_run: bool = False) -> bool:
    """The access rule: operators do everything; viewers read, subscribe and dry-run."""
    if role is Role.OPERATOR:
        return True
    return action in _VIEWER_ALWAYS or (dry_run and action in _VIEWER_DRY_RUN)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's name and role, or `local` while access is open."""

    name: str
    role: Role
    # None for the open (no token exists) principal.
    token_hash: str | None = None


LOCAL = Principal(LOCAL_ACTOR, Role.OPERATOR)


class AccessError(Exception):
    """A request that cannot be authenticated: no, malformed, unknown or revoked token."""

    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"

    def __init__(self, message: str, code: str = UNAUTHENTICATED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class TokenError(ValueError):
    """A token command that cannot be done (bad name or role, name taken, unknown name)."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` value; AccessError otherwise."""
    if not header:
        raise AccessError("authentication required: send Authorization: Bearer <token>")
    match = _BEARER.match(header)
    if match is None:
        raise AccessError("malformed Authorization header: expected 'Bearer <token>'")
    return match.group(1)


class AccessControl:
    """Tokens in the database and the snapshot every request is verified against."""

    def __init__(
        self,
        engine: AsyncEngine,
        ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.ttl = ttl
        self._clock = clock
        self._tokens: dict[str, Principal] | None = None
        self._open = False
        self._loaded_at = float("-inf")
        self._used: set[str] = set()
        self._reload_lock = asyncio.Lock()
        self.reloads = 0

    # --- token commands ---------------------------------------------------------------------

    async def create(self, name: str, role: Role | str) -> str:
        """A new token; the returned secret is the only time it exists outside the caller."""
        if not _NAME.match(name):
            raise TokenError(
                "a token name is 1-64 letters, digits, '.', '_', '@' or '-', starting with a "
                f"letter or digit (got {name!r})"
            )
        try:
            role = Role(role)
        except ValueError:
            raise TokenError(f"role must be viewer or operator (got {role!r})") from None
        secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        try:
            async with self.engine.begin() as conn:
                await access_queries.insert_token(conn, name, role.value, hash_token(secret))
        except IntegrityError:
            raise TokenError(f"a token named {name!r} exists; revoke it first") from None
        self._loaded_at = float("-inf")
        return secret

    async def list_tokens(self, *, include_revoked: bool = False) -> list[TokenInfo]:
        async with self.engine.connect() as conn:
            rows = await access_queries.select_tokens(conn, include_revoked=include_revoked)
        return [
            TokenInfo(row.name, Role(row.role), row.created_at, row.last_used_at, row.revoked_at)
            for row in rows
        ]

    async def revoke(self, name: str) -> None:
        async with self.engine.begin() as conn:
            revoked = await access_queries.revoke_token(conn, name)
        if not revoked:
            raise TokenError(f"no active token named {name!r}")
        self._loaded_at = float("-inf")

    # --- verification -----------------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller of a request with this Authorization value; AccessError if refused.

        Until the first token is created, access is open and everyone is LOCAL. It stays closed
        from then on, even with every token revoked."""
        tokens = await self._snapshot()
        if self._open:
            return LOCAL
        token_hash = hash_token(bearer_token(authorization))
        principal = tokens.get(token_hash)
        if principal is None and self._clock() - self._loaded_at >= MISS_REFRESH:
            principal = (await self._reload()).get(token_hash)
        if principal is None:
            raise AccessError("unknown or revoked token")
        self._used.add(token_hash)
        return principal

    async def is_open(self) -> bool:
        await self._snapshot()
        return self._open

    async def still_valid(self, principal: Principal) -> bool:
        """Whether a principal authenticated earlier may go on (open websockets ask this)."""
        tokens = await self._snapshot()
        if principal.token_hash is None:
            return self._open
        return principal.token_hash in tokens

    async def _snapshot(self) -> dict[str, Principal]:
        if self._tokens is not None and self._clock() - self._loaded_at < self.ttl:
            return self._tokens
        return await self._reload()

    async def _reload(self) -> dict[str, Principal]:
        started = self._clock()
        async with self._reload_lock:
            if self._tokens is not None and self._loaded_at >= started:
                return self._tokens  # another caller reloaded while this one waited
            used, self._used = self._used, set()
            try:
                async with self.engine.begin() as conn:
                    if used:
                        await access_queries.touch_tokens(conn, sorted(used))
                    rows = await access_queries.select_active_token_hashes(conn)
                    is_open = not rows and not await access_queries.any_token_exists(conn)
            except (DBAPIError, OSError) as error:
                self._used |= used
                # Never fall back to "open": without the tokens, nobody gets in.
                raise AccessError(
                    "the token store is unreachable; retry shortly", code="UNAVAILABLE"
                ) from error
            self._tokens = {
                row.token_hash: Principal(row.name, Role(row.role), row.token_hash)
                for row in rows
            }
            self._open = is_open
            self._loaded_at = self._clock()
            self.reloads += 1
            return self._tokens
