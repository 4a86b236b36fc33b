"""The SQL of API tokens and the audit log, one named function per query (see queries.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    any_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Text

from checkmate.db.queries import uuid_array
from checkmate.db.tables import api_tokens, audit_log

TOKEN_LISTING = (
    api_tokens.c.name,
    api_tokens.c.role,
    api_tokens.c.created_at,
    api_tokens.c.last_used_at,
    api_tokens.c.revoked_at,
)


async def insert_token(conn: AsyncConnection, name: str, role: str, token_hash: str) -> Row[Any]:
    result = await conn.execute(
        insert(api_tokens)
        .values(name=name, role=role, token_hash=token_hash)
        .returning(*TOKEN_LISTING)
    )
    return result.one()


async def select_tokens(conn: AsyncConnection, *, include_revoked: bool) -> Sequence[Row[Any]]:
    query: Select[Any] = select(*TOKEN_LISTING).order_by(api_tokens.c.created_at, api_tokens.c.id)
    if not include_revoked:
        query = query.where(api_tokens.c.revoked_at.is_(None))
    rows: Sequence[Row[Any]] = (await conn.execute(query)).all()
    return rows


async def revoke_token(conn: AsyncConnection, name: str) -> bool:
    result = await conn.execute(
        update(api_tokens)
        .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return result.rowcount > 0


async def select_active_token_hashes(conn: AsyncConnection) -> Sequence[Row[Any]]:
    """(token_hash, name, role) of every token not revoked: the verify cache's snapshot."""
    columns = (api_tokens.c.token_hash, api_tokens.c.name, api_tokens.c.role)
    query: Select[Any] = select(*columns).where(api_tokens.c.revoked_at.is_(None))
    rows: Sequence[Row[Any]] = (await conn.execute(query)).all()
    return rows


async def any_token_exists(conn: AsyncConnection) -> bool:
    """Whether a token was ever created (revoked ones count: revoking the last token must not
    open access)."""
    return bool(await conn.scalar(select(exists().where(true()).select_from(api_tokens))))


async def touch_tokens(conn: AsyncConnection, token_hashes: Sequence[str]) -> None:
    """last_used_at := now() for the tokens used since the last snapshot (one statement)."""
    hashes = bindparam(None, list(token_hashes), type_=ARRAY(Text()))
    await conn.execute(
        update(api_tokens)
        .where(api_tokens.c.token_hash == any_(hashes))
        .values(last_used_at=func.now())
    )


async def insert_audit(conn: AsyncConnection, values: dict[str, Any]) -> int:
    result = await conn.execute(insert(audit_log).values(**values).returning(audit_log.c.id))
    return int(result.scalar_one())


async def append_audit_ids(
    conn: AsyncConnection, entry_id: int, succeeded: Sequence[UUID], failed: Sequence[UUID]
) -> None:
    await conn.execute(
        update(audit_log)
        .where(audit_log.c.id == entry_id)
        .values(
            succeeded=audit_log.c.succeeded.concat(uuid_array(succeeded)),
            failed=audit_log.c.failed.concat(uuid_array(failed)),
        )
    )



async def select_audit_page(
    conn: AsyncConnection,
    *,
    since: datetime | None,
    until: datetime | None,
    action: str | None,
    actor: str | None,
    after: tuple[datetime, int] | None,
    limit: int,
) -> Sequence[Row[Any]]:
    """Newest first by (at, id), keyset-paged like tasks."""
    terms: list[ColumnElement[bool]] = [true()]
    if since is not None:
        terms.append(audit_log.c.at >= since)
    if until is not None:
        terms.append(audit_log.c.at < until)
    if action is not None:
        terms.append(audit_log.c.action == action)
    if actor is not None:
        terms.append(audit_log.c.actor == actor)
    if after is not None:
        at, entry_id = after
        terms.append(
            or_(audit_log.c.at < at, and_(audit_log.c.at == at, audit_log.c.id < entry_id))
        )
    query = (
        select(*audit_log.c)
        .where(and_(*terms))
        .order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
        .limit(limit)
    )
    rows: Sequence[Row[Any]] = (await conn.execute(query)).all()
    return rows
