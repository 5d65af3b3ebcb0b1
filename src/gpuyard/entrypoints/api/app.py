"""The FastAPI app factory. The controller (database, broker, scheduler) lives in the app's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gpuyard import __version__
from gpuyard.entrypoints.api import routes_dead, routes_jobs, routes_observe, routes_system
from gpuyard.entrypoints.api.controller import Controller
from gpuyard.entrypoints.api.errors import install_error_handlers
from gpuyard.entrypoints.api.limits import BodySizeLimit
from gpuyard.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    controller = Controller(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await controller.start()
        try:
            yield
        finally:
            await controller.stop()

    app = FastAPI(
        title="gpuyard",
        version=__version__,
        description="Training jobs on shared GPU workstations: queue, schedule, run, observe.",
        lifespan=lifespan,
    )
    app.state.controller = controller
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit)
    app.include_router(routes_jobs.router)
    app.include_router(routes_system.router)
    app.include_router(routes_system.health_router)
    app.include_router(routes_observe.router)
    app.include_router(routes_dead.router)
    app.include_router(routes_observe.metrics_router)
    return app
