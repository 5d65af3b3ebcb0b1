"""SQL for users, tokens, nodes, the outbox and logs. Functions take a connection inside a transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gpuyard.adapters.db.tables import log_chunks, nodes, outbox, tokens, users
from gpuyard.domain.errors import UserExists

Row = dict[str, Any]


def insert_ignore(conn: AsyncConnection, table: Any) -> Any:
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    return dialect.insert(table).on_conflict_do_nothing()


# users and tokens


async def add_user(conn: AsyncConnection, *, name: str, is_admin: bool, now: datetime) -> int:
    try:
        async with conn.begin_nested():
            query = insert(users).values(name=name, is_admin=is_admin, created_at=now).returning(users.c.id)
            user_id = (await conn.execute(query)).scalar_one()
    except IntegrityError as e:
        raise UserExists(f"A user named {name!r} exists already: pick another name.") from e
    return int(user_id)


async def add_token(conn: AsyncConnection, *, user_id: int, token_hash: str, now: datetime) -> None:
    await conn.execute(insert(tokens).values(user_id=user_id, token_hash=token_hash, created_at=now))


async def user_by_token_hash(conn: AsyncConnection, token_hash: str) -> Row | None:
    query = (
        select(users).join(tokens, tokens.c.user_id == users.c.id).where(tokens.c.token_hash == token_hash)
    )
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row else None


async def user_by_name(conn: AsyncConnection, name: str) -> Row | None:
    row = (await conn.execute(select(users).where(users.c.name == name))).mappings().first()
    return dict(row) if row else None


async def count_users(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(users))).scalar_one())


# nodes


async def upsert_node(
    conn: AsyncConnection, *, name: str, backend: str, gpus: list[Row], now: datetime, draining: bool = False
) -> tuple[Row, bool]:
    """Record a heartbeat. Returns the node's row and whether it is new, or its GPUs or draining changed."""
    current = (await conn.execute(select(nodes).where(nodes.c.name == name))).mappings().first()
    values = {"name": name, "backend": backend, "gpus": gpus, "last_seen_at": now, "draining": draining}
    if current is None:
        row = {**values, "first_seen_at": now}
        await conn.execute(insert(nodes).values(**row))
        return row, True
    await conn.execute(update(nodes).where(nodes.c.name == name).values(**values))
    changed = _gpu_shape(current["gpus"]) != _gpu_shape(gpus) or bool(current["draining"]) != draining
    return {**current, **values}, changed


def _gpu_shape(gpus: list[Row]) -> list[tuple[Any, ...]]:
    return [(g.get("index"), g.get("uuid"), bool(g.get("outside"))) for g in gpus]


async def list_nodes(conn: AsyncConnection) -> list[Row]:
    return [dict(r) for r in (await conn.execute(select(nodes).order_by(nodes.c.name))).mappings()]


# outbox


async def add_outbox(conn: AsyncConnection, *, routing_key: str, body: Row, now: datetime) -> int:
    query = insert(outbox).values(routing_key=routing_key, body=body, created_at=now).returning(outbox.c.id)
    return int((await conn.execute(query)).scalar_one())


async def unpublished_outbox(conn: AsyncConnection, *, limit: int = 500) -> list[Row]:
    query = select(outbox).where(outbox.c.published_at.is_(None)).order_by(outbox.c.id).limit(limit)
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def mark_published(conn: AsyncConnection, ids: Sequence[int], now: datetime) -> None:
    if ids:
        await conn.execute(update(outbox).where(outbox.c.id.in_(list(ids))).values(published_at=now))


# logs


async def add_log_chunk(
    conn: AsyncConnection, *, job_id: int, attempt: int, offset: int, data: bytes
) -> None:
    """Idempotent: a chunk delivered twice is stored once (key: job, attempt, offset)."""
    values = {
        "job_id": job_id,
        "attempt": attempt,
        "offset": offset,
        "end_offset": offset + len(data),
        "data": data,
    }
    await conn.execute(insert_ignore(conn, log_chunks).values(**values))


async def read_log(
    conn: AsyncConnection, *, job_id: int, attempt: int, offset: int, limit_bytes: int
) -> tuple[bytes, int]:
    """Bytes of the attempt's log from `offset` (at most about `limit_bytes`), and the offset after them."""
    query = (
        select(log_chunks.c.offset, log_chunks.c.data)
        .where(
            log_chunks.c.job_id == job_id, log_chunks.c.attempt == attempt, log_chunks.c.end_offset > offset
        )
        .order_by(log_chunks.c.offset)
    )
    out = bytearray()
    position = offset
    for chunk_offset, data in (await conn.execute(query)).all():
        if chunk_offset > position:
            break  # a gap: a chunk still on its way; stop before it so the reader retries from here
        out += data[position - chunk_offset :]
        position = chunk_offset + len(data)
        if len(out) >= limit_bytes:
            break
    return bytes(out), position
