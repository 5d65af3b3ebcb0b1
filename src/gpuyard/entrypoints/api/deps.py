"""Dependency aliases for the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gpuyard.entrypoints.api.controller import Controller
from gpuyard.services.auth import User

# Ids and attempt numbers are INTEGER columns (32 bits on PostgreSQL), log offsets BIGINT. A number past
# them names nothing, and the database driver would fail on it: such a request is refused with 422 here.
MAX_ID = 2**31 - 1
MAX_OFFSET = 2**63 - 1

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="The job's id.")]
WebhookId = Annotated[int, Path(ge=1, le=MAX_ID, description="The webhook's id.")]
DeadLetterId = Annotated[int, Path(ge=1, le=MAX_ID, description="The dead letter's id.")]
AttemptQuery = Annotated[int | None, Query(ge=1, le=MAX_ID, description="Default: the current attempt.")]
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Byte offset to read from.")]

_bearer = HTTPBearer(auto_error=False, description="A gpuyard token: `Authorization: Bearer gy_…`.")


def get_controller(request: Request) -> Controller:
    controller: Controller = request.app.state.controller
    return controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


async def get_current_user(
    controller: ControllerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    token = credentials.credentials if credentials is not None else None
    return await controller.auth.authenticate(token)


CurrentUser = Annotated[User, Depends(get_current_user)]
