"""Errors of the HTTP API (assistant/api.py), all in OpenAI's shape.

Contract: every error the API answers with, FastAPI's own included, has the body
`{"error": {"message", "type", "code", "param"}}`:
  - `ApiError` is raised by routes and answered as is;
  - a request body FastAPI refuses is a 400 saying what is wrong (`invalid_json` for malformed
    JSON, else `invalid_request` naming the field in `param`);
  - Starlette's own 404/405 keep their status, code `http_<status>`;
  - an exception a route lets escape is a 500 `internal_error`, or a 507 `disk_full` naming the
    disk when the disk is full, and the keep-alive connection stays usable;
  - paths outside /v1 (the web UI's app) answer their 404 and 405 in this shape too, keeping
    Gradio's "detail" key.
Nothing here knows a route; the helpers build the errors routes share (`not_found`,
`not_saved_error`, `disk_full_error`).
"""
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from assistant.errors import TurnNotSaved, is_disk_full
from store.conversations import NotFound

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error to return to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type_, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=self.body())


def _validation_message(exc: RequestValidationError) -> tuple[str, str, str | None]:
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            return f"Malformed JSON in the request body: {e.get('ctx', {}).get('error', e['msg'])}", \
                "invalid_json", None
    # A validator's own reason says more than a union member's "should be a valid string".
    errors = sorted(errors, key=lambda e: e.get("type") != "value_error")
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    where = f"'{param}': " if param else ""
    return f"Invalid request body: {where}{first['msg']}", "invalid_request", param


def install_error_handlers(app: FastAPI, home: Path | None = None) -> None:
    """Every error, including FastAPI's own, in OpenAI's shape. `home` names the disk in the
    message of a full-disk error."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, code, param = _validation_message(exc)
        return ApiError(400, message, code, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _http_error(exc).response()

    app.add_middleware(UnexpectedErrors, home=home)


def install_unknown_path_errors(ui_app) -> None:
    """Paths outside /v1 reach the web UI's app: its 404 and 405 answer in OpenAI's shape too (a
    client with a wrong base URL reads why), keeping Gradio's own "detail" key for its page."""
    from fastapi.exception_handlers import http_exception_handler

    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code not in (404, 405):
            return await http_exception_handler(request, exc)
        error = ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path} (the API is "
                         "under /v1)", f"http_{exc.status_code}", _http_error(exc).type)
        return JSONResponse(status_code=exc.status_code, content={**error.body(), "detail": exc.detail},
                            headers=exc.headers)

    ui_app.add_exception_handler(StarletteHTTPException, _http)


def _http_error(exc: StarletteHTTPException) -> ApiError:
    type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return ApiError(exc.status_code, str(exc.detail), f"http_{exc.status_code}", type_)


def not_saved_error(e: TurnNotSaved, home: Path | None) -> ApiError:
    """The reply was generated, saving it failed: 507 for a full disk, else 503."""
    if is_disk_full(e):
        where = f"the disk holding {home}" if home else "the disk"
        return ApiError(507, f"Insufficient storage: the reply was generated but could not be saved, because "
                        f"{where} is full (database or disk is full); the reply is in 'completion'. Free some "
                        "space there; the server keeps running.", "disk_full", "server_error")
    return ApiError(503, f"{e} (the reply is in 'completion'); try again.", "turn_not_saved", "server_error")


def disk_full_error(home: Path | None) -> ApiError:
    where = f"the disk holding {home}" if home else "the disk"
    return ApiError(507, f"Insufficient storage: {where} is full (database or disk is full), so nothing "
                    "could be saved. Free some space there and try again; the server keeps running.",
                    "disk_full", "server_error")


class UnexpectedErrors:
    """Any exception a route lets escape becomes an OpenAI-shaped 500 (507 for a full disk).

    A plain ASGI middleware rather than `exception_handler(Exception)`: Starlette sends that
    handler's response from its outermost middleware and then re-raises, and uvicorn answers an
    exception escaping the app by closing the connection, so the client's next request on that
    keep-alive connection failed. Here the exception ends where it is answered."""

    def __init__(self, app, home: Path | None = None):
        self.app, self.home = app, home

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # half a response is out: nothing sane can follow it on this connection
                raise
            log.error("unhandled error on %s", scope.get("path"), exc_info=exc)
            error = disk_full_error(self.home) if is_disk_full(exc) else \
                ApiError(500, f"internal error: {exc}", "internal_error", "server_error")
            await error.response()(scope, receive, send)


def not_found(e: NotFound, code: str) -> ApiError:
    return ApiError(404, str(e), code, "not_found_error")
