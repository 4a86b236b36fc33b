"""API tokens on real PostgreSQL: create/list/revoke, the stored hash, the verify snapshot and
the role rule."""

from __future__ import annotations

import asyncpg
import pytest

from checkmate.access import (
    LOCAL,
    AccessControl,
    AccessError,
    Action,
    Role,
    TokenError,
    bearer_token,
    hash_token,
    may,
)
from checkmate.service import CheckMateService


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def access(service: CheckMateService, clock: Clock) -> AccessControl:
    return AccessControl(service.engine, ttl=2.0, clock=clock)


async def test_open_until_a_token_exists(access: AccessControl) -> None:
    assert await access.authenticate(None) is LOCAL
    assert await access.is_open()
    await access.create("ci-bot", "operator")
    assert not await access.is_open()
    with pytest.raises(AccessError) as refused:
        await access.authenticate(None)
    assert refused.value.code == "UNAUTHENTICATED"


async def test_tokens_are_random_and_stored_only_as_hash(
    access: AccessControl, raw_conn: asyncpg.Connection
) -> None:
    first = await access.create("a", Role.OPERATOR)
    second = await access.create("b", Role.VIEWER)
    assert first != second
    assert first.startswith("cm_")
    assert len(first) >= 3 + 43
    stored = await raw_conn.fetch("SELECT name, role, token_hash FROM api_tokens ORDER BY name")
    assert [(row["name"], row["role"]) for row in stored] == [("a", "operator"), ("b", "viewer")]
    assert stored[0]["token_hash"] == hash_token(first)
    dump = str(await raw_conn.fetch("SELECT * FROM api_tokens"))
    assert first not in dump
    assert second not in dump

    principal = await access.authenticate(f"Bearer {first}")
    assert (principal.name, principal.role) == ("a", Role.OPERATOR)
    assert (await access.authenticate(f"bearer  {second} ")).role is Role.VIEWER


async def test_bad_names_roles_and_duplicates(access: AccessControl) -> None:
    for name in ["", "has space", "x" * 65, "-dash-first", "nul\x00"]:
        with pytest.raises(TokenError):
            await access.create(name, "viewer")
    with pytest.raises(TokenError):
        await access.create("ok", "admin")
    await access.create("ok", "viewer")
    with pytest.raises(TokenError, match="exists"):
        await access.create("ok", "operator")
    with pytest.raises(TokenError, match="no active token"):
        await access.revoke("missing")
    # After revocation the name is free again; the revoked row stays for the audit trail.
    await access.revoke("ok")
    await access.create("ok", "operator")
    listed = await access.list_tokens(include_revoked=True)
    assert [(token.name, token.revoked_at is None) for token in listed] == [
        ("ok", False), ("ok", True)
    ]
    assert [token.name for token in await access.list_tokens()] == ["ok"]


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer a b", "Token cm_x"]
)
def test_malformed_headers(header: str | None) -> None:
    with pytest.raises(AccessError):
        bearer_token(header)


async def test_snapshot_costs_no_query_per_request_and_revocation_lands_within_ttl(
    service: CheckMateService, access: AccessControl, clock: Clock
) -> None:
    secret = await access.create("ci-bot", "viewer")
    other = AccessControl(service.engine, ttl=2.0, clock=clock)  # another server process
    principal = await other.authenticate(f"Bearer {secret}")
    reloads = other.reloads
    for _ in range(100):
        await other.authenticate(f"Bearer {secret}")
    assert other.reloads == reloads  # 100 requests, no query

    await access.revoke("ci-bot")
    assert await other.still_valid(principal)  # within the TTL the snapshot still holds it
    clock.now += 2.0
    assert not await other.still_valid(principal)
    with pytest.raises(AccessError):
        await other.authenticate(f"Bearer {secret}")


async def test_unknown_tokens_reload_at_most_every_tenth_of_a_second(
    service: CheckMateService, access: AccessControl, clock: Clock
) -> None:
    await access.create("a", "viewer")
    await access.authenticate(f"Bearer {await access.create('b', 'viewer')}")
    reloads = access.reloads
    for _ in range(50):
        with pytest.raises(AccessError):
            await access.authenticate("Bearer cm_guess")
    assert access.reloads == reloads
    clock.now += 0.1
    with pytest.raises(AccessError):
        await access.authenticate("Bearer cm_guess")
    assert access.reloads == reloads + 1
    # A token created by another process works on first use (the miss reloads).
    fresh = await AccessControl(service.engine).create("c", "operator")
    clock.now += 0.1
    assert (await access.authenticate(f"Bearer {fresh}")).name == "c"


async def test_last_used_is_written_on_reload(
    access: AccessControl, clock: Clock
) -> None:
    secret = await access.create("a", "viewer")
    await access.authenticate(f"Bearer {secret}")
    [token] = await access.list_tokens()
    assert token.last_used_at is None
    clock.now += 2.0
    await access.is_open()
    [token] = await access.list_tokens()
    assert token.last_used_at is not None


def test_the_role_rule() -> None:
    batch = [Action.CANCEL, Action.UNLOCK, Action.CLEAN, Action.INVOKE]
    for action in Action:
        assert may(Role.OPERATOR, action, dry_run=False)
    assert may(Role.VIEWER, Action.READ)
    assert may(Role.VIEWER, Action.SUBSCRIBE)
    assert not may(Role.VIEWER, Action.READ_AUDIT)
    assert not may(Role.VIEWER, Action.CREATE)
    assert not may(Role.VIEWER, Action.CREATE, True)
    for action in batch:
        assert may(Role.VIEWER, action, dry_run=True)
        assert not may(Role.VIEWER, action, dry_run=False)
