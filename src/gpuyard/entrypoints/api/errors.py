"""Errors mapped to HTTP in one place, by class. Body: {"error": code, "detail": ...}."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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


HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
UNREADABLE_BODY = (
    "The request body is not readable JSON (not UTF-8, nested too deeply, or a number too long): send a JSON "
    "object encoded as UTF-8. See /docs for the expected request."
)


def status_of(error: e.GpuyardError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


# What a body that is not a JSON object gets told (FastAPI leaves a body of another type as raw bytes).
_NOT_AN_OBJECT = "must be a JSON object, sent with Content-Type: application/json"
_BODY_PROBLEMS = {
    "model_attributes_type": _NOT_AN_OBJECT,
    "missing": "missing; it " + _NOT_AN_OBJECT,
}


def _validation_problem(err: Mapping[str, Any]) -> str:
    loc = tuple(err.get("loc", ()))
    kind = err.get("type")
    if kind == "json_invalid":
        why = err.get("ctx", {}).get("error", "it cannot be decoded")
        return f"body: not valid JSON ({why}, at character {loc[-1]})"
    if loc == ("body",) and kind in _BODY_PROBLEMS:
        return f"body: {_BODY_PROBLEMS[kind]}"
    where = ".".join(str(x) for x in loc if x != "body") or "body"
    return f"{where}: {err.get('msg', 'invalid')}"


def _validation_detail(exc: RequestValidationError) -> str:
    problems = [_validation_problem(err) for err in exc.errors()[:10]]
    return "; ".join(problems) + ". See /docs for the expected request."


def _allowed_methods(request: Request, exc: StarletteHTTPException) -> str:
    """Every method the path takes, from the OpenAPI description. (Routing's 405 names the methods of one
    route only: PUT /jobs would be told POST and not GET, which is another route.)"""
    methods = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = "[^/]+".join(re.escape(part) for part in re.split(r"\{[^}]*\}", template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    return ", ".join(sorted(methods)) or (exc.headers or {}).get("Allow", "another method")


def _http_answer(request: Request, exc: StarletteHTTPException) -> tuple[str, Mapping[str, str] | None]:
    """Routing's own errors, in words that say what to do, and their headers."""
    if exc.status_code == 404 and exc.detail == "Not Found":
        return "There is no such path: the API's paths are listed at /docs.", exc.headers
    if exc.status_code == 405:
        allowed = _allowed_methods(request, exc)
        detail = f"This path does not take {request.method}: use {allowed} (see /docs)."
        return detail, {**(exc.headers or {}), "Allow": allowed}
    return exc.detail, exc.headers


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
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's only 400: a body that json.loads cannot read
            return JSONResponse({"error": "invalid_request", "detail": UNREADABLE_BODY}, status_code=422)
        code = HTTP_CODES.get(exc.status_code, "http_error")
        detail, headers = _http_answer(request, exc)
        return JSONResponse({"error": code, "detail": detail}, status_code=exc.status_code, headers=headers)
