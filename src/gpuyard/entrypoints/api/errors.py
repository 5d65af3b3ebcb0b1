"""Errors mapped to HTTP in one place, by class. Body: {"error": code, "detail": ...}."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpuyard.domain import errors as e

STATUS: dict[type[e.GpuyardError], int] = {
    e.InvalidJobSpec: 422,
    e.NoNodeFits: 422,
    e.InvalidWebhook: 422,
    e.JobNotFound: 404,
    e.WebhookNotFound: 404,
    e.DeadLetterNotFound: 404,
    e.InvalidTransition: 409,
    e.UserExists: 409,
    e.NotAuthenticated: 401,
    e.PermissionDenied: 403,
    e.QuotaExceeded: 429,
    e.BrokerUnavailable: 503,
    e.ConfigurationError: 500,
}


def status_of(error: e.GpuyardError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) + ". See /docs for the expected request."


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(e.GpuyardError)
    async def _gpuyard_error(_request: Request, exc: e.GpuyardError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, e.NotAuthenticated) else None
        return JSONResponse(
            {"error": exc.code, "detail": exc.detail}, status_code=status_of(exc), headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_request", "detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": exc.detail}, status_code=exc.status_code)
