"""Dependency aliases for the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gpuyard.entrypoints.api.controller import Controller
from gpuyard.services.auth import User

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
