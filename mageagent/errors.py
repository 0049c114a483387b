"""The one error contract: {"error": {"code", "message", "details"}} for every 4xx/5xx.

Services raise DomainError subclasses; DRF and plain Django views render them here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
import redis
from django.core.exceptions import DisallowedHost, PermissionDenied, RequestDataTooBig
from django.db import InterfaceError as DbInterfaceError
from django.db import OperationalError as DbOperationalError
from django.db import connection
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class DomainError(Exception):
    code = "error"
    status = 400

    def __init__(self, message: str = "", *, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code.replace("_", " ")
        self.details = details or {}
        self.headers = headers or {}


class ValidationFailed(DomainError):
    code, status = "validation_error", 400


class AuthenticationFailed(DomainError):
    code, status = "authentication_failed", 401


class CsrfFailed(DomainError):
    """A staff session's unsafe request without the page's CSRF token (a key needs none)."""

    code, status = "csrf_failed", 403


class NotFound(DomainError):
    code, status = "not_found", 404


class Conflict(DomainError):
    code, status = "conflict", 409


class PayloadTooLarge(DomainError):
    code, status = "payload_too_large", 413


class StorageQuotaExceeded(DomainError):
    code, status = "storage_quota_exceeded", 413


class RateLimited(DomainError):
    code, status = "rate_limited", 429


class QueueFull(DomainError):
    code, status = "queue_full", 429


class BudgetExceeded(DomainError):
    code, status = "budget_exceeded", 402


class Unavailable(DomainError):
    code, status = "unavailable", 503


class UnsupportedMediaType(DomainError):
    code, status = "unsupported_media_type", 415


# A dependency that is down or restarting: PostgreSQL (a connection terminated, the pool
# out of connections: psycopg_pool.PoolTimeout is a psycopg OperationalError) and Redis
# (refused, reset, timed out, loading its data set). Nothing the caller did: 503.
DATABASE_DOWN = (DbOperationalError, DbInterfaceError, psycopg.OperationalError, psycopg.InterfaceError)
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
UNAVAILABLE_RETRY_AFTER_S = 2


def dependency_down(exc: BaseException) -> str | None:
    """"database" or "redis" when `exc` says that dependency is unreachable, else None."""
    if isinstance(exc, DATABASE_DOWN):
        return "database"
    if isinstance(exc, REDIS_DOWN):
        return "redis"
    if isinstance(exc, redis.ResponseError) and str(exc).startswith(("LOADING", "MASTERDOWN", "OOM")):
        return "redis"
    return None


def unavailable_for(exc: BaseException) -> Unavailable | None:
    """The 503 for an error that says a dependency is down; None for any other error."""
    dependency = dependency_down(exc)
    if dependency is None:
        return None
    if dependency == "database":
        _recheck_connection_pool()
    return unavailable(dependency)


_pool_checked_at = 0.0
_pool_checking = threading.Lock()


def _recheck_connection_pool() -> None:
    # A connection the server dropped (pg_terminate_backend, a restart) fails the one
    # request that draws it; once one has, have the pool test its idle connections (one
    # empty query each) and replace the dead ones, so that a termination of every
    # connection costs a few 503s, not one per pooled connection. Not the pool's `check`
    # on every getconn (CONN_HEALTH_CHECKS): that is a round trip per request, and after a
    # failed check psycopg_pool sleeps 1, 2, 4 ... s before the next connection
    # (psycopg/psycopg#711), which held requests for the pool's whole 30 s timeout.
    global _pool_checked_at
    pool = getattr(connection, "pool", None)
    if pool is None or not _pool_checking.acquire(blocking=False):
        return
    try:
        if time.monotonic() - _pool_checked_at >= 1.0:
            _pool_checked_at = time.monotonic()
            pool.check()
    except Exception as exc:  # the database is down altogether: the pool reconnects by itself
        logger.warning("could not check the database connection pool: %r", exc)
    finally:
        _pool_checking.release()


def unavailable(dependency: str) -> Unavailable:
    return Unavailable(f"the {dependency} is unavailable; retry after the Retry-After seconds",
                       details={"dependency": dependency, "retry_after_s": UNAVAILABLE_RETRY_AFTER_S},
                       headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})


def retry_after(wait: float) -> str:
    """A Retry-After header for a wait in seconds: whole seconds, never early."""
    return str(int(wait) + 1)


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


# The OpenAI-compatible API (/v1, openai_api/) answers in OpenAI's error shape; what refuses a
# request before its views (the ASGI handler's 413 and 503) does too. OpenAI's types by status
# (its SDKs choose their exception by status alone).
OPENAI_PREFIX = "/v1/"
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
                 403: "permission_error", 404: "invalid_request_error", 409: "invalid_request_error",
                 413: "invalid_request_error", 429: "rate_limit_error"}


def openai_error_body(code: str, message: str, status: int, param: str | None = None) -> dict[str, Any]:
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body_for(path: str, code: str, message: str, status: int,
                   details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The error body in the shape of the API `path` belongs to."""
    if path.startswith(OPENAI_PREFIX):
        return openai_error_body(code, message, status)
    return error_body(code, message, details)


def error_response(code: str, message: str, status: int,
                   details: dict[str, Any] | None = None) -> JsonResponse:
    return JsonResponse(error_body(code, message, details), status=status)


def domain_error_response(exc: DomainError) -> JsonResponse:
    """A DomainError for a plain Django view (DRF views get exception_handler), headers kept."""
    return JsonResponse(error_body(exc.code, exc.message, exc.details), status=exc.status, headers=exc.headers)


_DRF_CODES = {
    drf.ValidationError: "validation_error",
    drf.ParseError: "validation_error",
    drf.UnsupportedMediaType: "unsupported_media_type",
    drf.AuthenticationFailed: "authentication_failed",
    drf.NotAuthenticated: "authentication_failed",
    drf.PermissionDenied: "not_found",
    drf.NotFound: "not_found",
    drf.MethodNotAllowed: "method_not_allowed",
    drf.NotAcceptable: "not_acceptable",
    drf.Throttled: "rate_limited",
}


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            inner = _first_message(value)
            return inner if key == "non_field_errors" else f"{key}: {inner}"
        return "invalid input"
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else "invalid input"
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    down = unavailable_for(exc)
    if down is not None:
        logger.warning("%s in %s: %r", down.message, context.get("view"), exc)
        exc = down
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status,
                        headers=exc.headers)
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("payload_too_large", "the request body is too large"), status=413)
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf.NotFound()
    if isinstance(exc, drf.APIException):
        code = next((c for t, c in _DRF_CODES.items() if isinstance(exc, t)), "error")
        status = exc.status_code
        if isinstance(exc, (drf.PermissionDenied,)):
            status = 404  # never reveal that another tenant's object exists
        if isinstance(exc, drf.NotAuthenticated):
            status = 401
        details = exc.detail if isinstance(exc.detail, dict) else {}
        headers = {}
        wait = getattr(exc, "wait", None) if isinstance(exc, drf.Throttled) else None
        if wait is not None:
            headers["Retry-After"] = retry_after(wait)
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="mageagent"'
        return Response(error_body(code, _first_message(exc.detail), details), status=status,
                        headers=headers)
    logger.exception("unhandled error in %s", context.get("view"))
    return Response(error_body("internal_error", "internal server error"), status=500)


@csrf_exempt  # a POST to an unknown path is a 404, not a CSRF failure page
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """The API prefix's catch-all route. handler404 only answers when DEBUG is off; this
    keeps unknown API paths in the contract's shape in development too."""
    return error_response("not_found", f"no such endpoint: {request.method} {request.path}", 404)


def handler400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    # Django's own 400s: a Host not in ALLOWED_HOSTS, a malformed request it refused.
    if isinstance(exception, DisallowedHost):
        return error_response("bad_request", "the Host header names no host this server serves", 400)
    return error_response("bad_request", "bad request", 400)


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error_response("not_found", "not found", 404)


def handler500(request: HttpRequest) -> JsonResponse:
    return error_response("internal_error", "internal server error", 500)
