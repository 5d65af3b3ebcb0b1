"""/api/v1/gpus, /api/v1/users, /api/v1/me, /healthz and /readyz."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from gpuyard.domain.errors import PermissionDenied
from gpuyard.entrypoints.api.deps import ControllerDep, CurrentUser
from gpuyard.entrypoints.api.routes_jobs import BODY_ERRORS, ERRORS
from gpuyard.entrypoints.api.schemas import (
    GpuProcessPublic,
    GpuPublic,
    GpusPublic,
    Health,
    NodePublic,
    UserCreate,
    UserCreated,
    UserPublic,
)
from gpuyard.services.auth import User
from gpuyard.services.scheduler import node_online

router = APIRouter(prefix="/api/v1", tags=["system"])
health_router = APIRouter(tags=["health"])


@router.get("/gpus", response_model=GpusPublic, responses=ERRORS)
async def gpus(_user: CurrentUser, controller: ControllerDep) -> GpusPublic:
    """Every GPU of every node: which job holds it, its load, and processes outside gpuyard on it."""
    nodes, holders = await controller.jobs.gpus()
    now = controller.clock()
    node_list, gpu_list = [], []
    for node in nodes:
        online = node_online(node, now=now, node_lease_s=controller.settings.node_lease_s)
        node_list.append(
            NodePublic(
                name=node["name"],
                backend=node["backend"],
                online=online,
                last_seen_at=node["last_seen_at"],
                gpus=len(node["gpus"]),
            )
        )
        for gpu in node["gpus"]:
            holder: dict[str, Any] | None = holders.get((node["name"], gpu["index"]))
            gpu_list.append(
                GpuPublic(
                    node=node["name"],
                    index=gpu["index"],
                    uuid=gpu["uuid"],
                    name=gpu["name"],
                    memory_total_mib=gpu["memory_total_mib"],
                    memory_used_mib=gpu["memory_used_mib"],
                    utilization_pct=gpu.get("utilization_pct"),
                    job_id=holder["id"] if holder else None,
                    job_user=holder["user"] if holder else None,
                    job_name=holder["name"] if holder else None,
                    job_idle_since=holder.get("gpu_idle_since") if holder else None,
                    outside_processes=[GpuProcessPublic(**p) for p in gpu.get("outside", [])],
                    node_online=online,
                    links=gpu.get("links", []),
                )
            )
    return GpusPublic(nodes=node_list, gpus=gpu_list)


def _require_admin(user: User) -> None:
    if not user.is_admin:
        raise PermissionDenied("Only admins can manage users: ask an admin.")


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserCreated, responses=BODY_ERRORS)
async def add_user(body: UserCreate, user: CurrentUser, controller: ControllerDep) -> UserCreated:
    """Create a user and its token (admins). The token is shown once."""
    _require_admin(user)
    created, token = await controller.auth.add_user(body.name, is_admin=body.is_admin)
    return UserCreated(id=created.id, name=created.name, is_admin=created.is_admin, token=token)


@router.get("/me", response_model=UserPublic, responses=ERRORS)
async def me(user: CurrentUser) -> UserPublic:
    """Who the token belongs to."""
    return UserPublic(id=user.id, name=user.name, is_admin=user.is_admin)


@health_router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@health_router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(controller: ControllerDep, response: Response) -> Health:
    """Ready when the database answers and RabbitMQ is connected."""
    checks = {"database": "ok", "broker": "ok"}
    try:
        async with controller.db.read() as conn:
            await conn.exec_driver_sql("SELECT 1")
    except Exception as e:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"error: {e!r}"
    if not (controller.broker_ready.is_set() and controller.broker.is_connected):
        checks["broker"] = "not connected (jobs are accepted and wait in the database)"
    ok = all(v == "ok" for v in checks.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if ok else "degraded", checks=checks)
