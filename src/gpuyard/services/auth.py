"""Users and bearer tokens: random 256-bit tokens, stored as SHA-256 hashes, shown once."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from gpuyard.adapters.db import repo
from gpuyard.adapters.db.engine import Database
from gpuyard.domain.errors import InvalidJobSpec, NotAuthenticated
from gpuyard.domain.text import quote
from gpuyard.services.ports import Clock

TOKEN_PREFIX = "gy_"
_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    is_admin: bool


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_user_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidJobSpec(
            f"User name {quote(name)} is invalid: use up to 64 lower-case letters, digits, '.', '-' or '_', "
            "starting with a letter or '_'."
        )
    return name


class AuthService:
    def __init__(self, db: Database, *, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._cache: dict[str, User] = {}

    async def authenticate(self, token: str | None) -> User:
        if not token:
            raise NotAuthenticated(
                "No token given: send 'Authorization: Bearer <token>' (the CLI reads GPUYARD_TOKEN or the "
                "token file that `gpuyard up` wrote)."
            )
        digest = hash_token(token)
        user = self._cache.get(digest)
        if user is not None:
            return user
        async with self._db.read() as conn:
            row = await repo.user_by_token_hash(conn, digest)
        if row is None:
            raise NotAuthenticated(
                "The token is not valid: ask an admin for a token (`gpuyard admin user add`)."
            )
        user = User(row["id"], row["name"], bool(row["is_admin"]))
        self._cache[digest] = user
        return user

    async def add_user(self, name: str, *, is_admin: bool) -> tuple[User, str]:
        """Create a user and its first token; the token is returned once and never stored in clear."""
        check_user_name(name)
        token = new_token()
        now = self._clock()
        async with self._db.write() as conn:
            user_id = await repo.add_user(conn, name=name, is_admin=is_admin, now=now)
            await repo.add_token(conn, user_id=user_id, token_hash=hash_token(token), now=now)
        return User(user_id, name, is_admin), token

    async def ensure_admin(self, name: str, token_file: Path) -> bool:
        """On first start, create the admin and write its token to a file only its owner can read.

        A deleted token file is replaced by a new token for that admin."""
        have_file = token_file.exists()  # noqa: ASYNC240 - once, at start-up
        async with self._db.read() as conn:
            if have_file and await repo.count_users(conn) > 0:
                return False
            existing = await repo.user_by_name(conn, name)
        if existing is not None and have_file:
            return False
        if existing is None:
            _, token = await self.add_user(name, is_admin=True)
        else:
            token = new_token()
            async with self._db.write() as conn:
                await repo.add_token(
                    conn, user_id=existing["id"], token_hash=hash_token(token), now=self._clock()
                )
        write_secret(token_file, token)
        return True


def write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        f.write(secret + "\n")
    tmp.replace(path)
