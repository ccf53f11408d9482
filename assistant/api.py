"""The OpenAI-compatible HTTP API over the runtime's ChatService.

Routes (all under /v1, all requiring `Authorization: Bearer <cfg.api_key>` when a key is set):
  GET  /v1/models                       the one served model, id "assistant"
  POST /v1/chat/completions             streaming (SSE) and not; the completion `id` IS the logged
                                        turn id, so a client can send feedback about it
  POST /v1/feedback                     {"turn_id", "rating": "up"|"down", "reason"?, "correction"?};
                                        answers with the ids of the corrections it replaced ("supersedes")
  PATCH  /v1/conversations/{id}         {"no_learn": true|false}: don't learn from it (or do again)
  DELETE /v1/conversations/{id}         the conversation, its turns and their feedback
  GET  /v1/corrections                  every correction, newest first: learned, pending, not learned,
                                        superseded (by which), with why
  GET  /v1/adapters                     the adapter registry and the active version
  POST /v1/adapters/{version}/activate  promote or roll back to a version ("base": no adapter);
                                        410 when its weights were deleted to save disk

Extensions to the OpenAI request body: `conversation_id` (continue a stored conversation, else a
new one is created) and `recall: false` (no recalled corrections for this request). Responses
add `conversation_id`, `adapter_version` (null: the base model), `answered_by` ("adapter",
"expert", "habit" or null: what in that version wrote the reply), `recalled` (how many recalled
corrections were in the prompt) and, when the message had to be cut to fit the context window,
`truncated: true` plus `notice` (and the header `X-Assistant-Truncated: 1`). A stream sends them
in its first chunk and again, known by then, in the chunk with its finish_reason.

Feedback: a `correction` is only accepted with rating "down"; it records TWO facts, a 'down' vote
(with the reason, if any) and a 'correction'. The vote keeps counts of disliked answers honest,
the correction is what the learner trains on.

Every error has OpenAI's shape `{"error": {"message", "type", "code", "param"}}`, unknown paths and
wrong methods under /v1 included: malformed JSON, invalid fields and out-of-range settings are 400s
that say what is wrong (text with a NUL or a lone surrogate too), an unknown `model` is a 404
model_not_found, a full disk a 507 naming it. No error closes a keep-alive connection.

No reply is lost: the turn is saved (as "interrupted") before its id leaves in X-Assistant-Turn-Id,
and completed when the reply ends. If saving the finished reply fails (a full disk), a
non-streaming request gets the 507 with the reply under "completion" (not a 200: the turn is not
saved, so its id takes no feedback); a stream gets its last chunk, an error event and [DONE].
/v1/docs and /v1/openapi.json need the key like the rest. Generation is blocking, so it runs in
the thread pool; the model's own lock queues concurrent requests.
"""
import json
import logging
import secrets
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from assistant.config import MAX_TEMPERATURE
from assistant.errors import (
    AdapterLoadError,
    AdapterWeightsDeleted,
    EmptyMessage,
    TurnNotSaved,
    UnstorableText,
    is_disk_full,
    storable_problem,
)
from assistant.model import validate_adapter_dir, weights_deleted
from store import adapters, conversations, feedback
from store.conversations import NotFound
from store.feedback import MAX_TEXT

log = logging.getLogger(__name__)

MODEL_ID = "assistant"


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


# ---- request bodies ----------------------------------------------------------------------------
def _storable(value: str) -> str:
    """Text the store can keep and every tool can read back (errors.storable_problem: no NUL, no
    lone surrogate), refused with the reason rather than stored or failing later."""
    problem = storable_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Text = Annotated[str, AfterValidator(_storable)]


class Part(BaseModel):
    """One part of OpenAI's list-of-parts content; only text parts are read."""
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[Part] | None = None

    @field_validator("content")
    @classmethod
    def _storable_content(cls, v):
        # here rather than in the union's members, whose errors would name each member
        for text in [v] if isinstance(v, str) else [p.text for p in v or [] if p.text]:
            _storable(text)
        return v

    def text(self) -> str:
        """Plain text; OpenAI's list-of-parts form keeps its text parts."""
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use
    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    stream_options: dict | None = None
    # Out-of-range settings are refused, as OpenAI does, never quietly clamped; the upper bound
    # of max_tokens depends on the model (`_max_new_tokens`).
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    conversation_id: Text | None = None
    recall: bool | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a field name must not pass silently
    turn_id: Text = Field(min_length=1)
    rating: Literal["up", "down"]
    reason: Text | None = Field(default=None, max_length=MAX_TEXT)
    correction: Text | None = Field(default=None, max_length=MAX_TEXT)

    @field_validator("correction")
    @classmethod
    def _not_blank(cls, v):
        if v is not None and not v.strip():
            raise ValueError("a correction needs the corrected answer text")
        return v


class ConversationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    no_learn: bool  # "don't learn from this conversation": out of recall at once, out of the next version


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = False  # promote a version the gate rejected
    quarantine: bool = False  # on rollback: keep what the abandoned version learned out of learning


# ---- errors ------------------------------------------------------------------------------------
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


def _not_saved_error(e: TurnNotSaved, home: Path | None) -> ApiError:
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


def _not_found(e: NotFound, code: str) -> ApiError:
    return ApiError(404, str(e), code, "not_found_error")


# ---- the router --------------------------------------------------------------------------------
def build_router(runtime) -> APIRouter:
    chat, cfg = runtime.chat, runtime.cfg

    def require_key(request: Request) -> None:
        key = cfg.api_key  # read per request: the key can be set on a running server
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>' "
                           "(the key is ASSISTANT_API_KEY on the server).", "invalid_api_key",
                           "authentication_error")

    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @router.get("/models")
    def list_models():
        return {"object": "list", "data": [{
            "id": MODEL_ID, "object": "model", "created": 0, "owned_by": "local",
            "base_model": Path(runtime.model.name).name,
            "adapter_version": adapters.active_version(chat.db)}]}

    # The schema and its page sit behind the key like every other route (build_app turns
    # FastAPI's own, unguarded ones off).
    @router.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request):
        return request.app.openapi()

    @router.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/v1/openapi.json", title="Personal assistant API")

    @router.post("/chat/completions")
    async def chat_completions(body: ChatRequest):
        _check_model(body.model, runtime)
        turn_args, gen_args = _turn_arguments(body, runtime)
        try:
            turn = await run_in_threadpool(chat.start_turn, **turn_args)
        except EmptyMessage as e:
            raise ApiError(400, str(e), "empty_message", param="messages") from e
        except UnstorableText as e:
            raise ApiError(400, str(e), "invalid_text", param="messages") from e
        except NotFound as e:
            raise _not_found(e, "conversation_not_found") from e
        # The turn is on disk (as "interrupted") before its id leaves in a header: a server killed
        # mid-reply still has it. A full disk here is a 507, and nothing was generated yet.
        await run_in_threadpool(partial(chat.open_turn, turn, source="api", **gen_args))
        headers = {"X-Assistant-Turn-Id": turn.turn_id, "X-Assistant-Conversation-Id": turn.conversation_id}
        if turn.truncated:
            headers["X-Assistant-Truncated"] = "1"
        pieces = chat.pieces(turn, source="api", **gen_args)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(turn, pieces, include_usage, cfg.home), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache"})
        try:
            await run_in_threadpool(_drain, pieces)
        except TurnNotSaved as e:
            # The reply exists but is not saved: a 200 would tell the client it was (and its id
            # could take feedback); losing the text would waste the generation. So the error
            # status, naming the disk, with the reply under "completion".
            error = _not_saved_error(e, cfg.home)
            return JSONResponse(status_code=error.status, content={**error.body(), "completion": _completion(turn)},
                                headers=headers)
        return JSONResponse(_completion(turn), headers=headers)

    @router.post("/feedback")
    async def post_feedback(body: FeedbackRequest):
        if body.correction is not None and body.rating != "down":
            raise ApiError(400, "A correction says the answer was wrong: send it with rating 'down'.",
                           "correction_needs_down", param="rating")
        facts = [(body.rating, body.reason, None)]  # the reason belongs to the vote
        if body.correction is not None:
            facts.append(("correction", None, body.correction))

        def record():
            return [runtime.record_feedback(body.turn_id, kind, reason=reason, correction=correction)
                    for kind, reason, correction in facts]

        try:
            ids = await run_in_threadpool(record)
        except NotFound as e:
            raise _not_found(e, "turn_not_found") from e
        except ValueError as e:
            raise ApiError(400, str(e), "invalid_feedback") from e
        replaced = feedback.replaced_by(chat.db, ids[-1]) if body.correction is not None else []
        return {"object": "feedback", "turn_id": body.turn_id, "feedback_ids": ids,
                "kinds": [kind for kind, _, _ in facts], "supersedes": replaced}

    @router.patch("/conversations/{conversation_id}")
    def patch_conversation(conversation_id: str, body: ConversationUpdate):
        try:
            conversations.update_conversation(chat.db, conversation_id, no_learn=int(body.no_learn))
        except NotFound as e:
            raise _not_found(e, "conversation_not_found") from e
        return {"object": "conversation", "id": conversation_id, "no_learn": body.no_learn}

    @router.delete("/conversations/{conversation_id}")
    def delete_conversation(conversation_id: str):
        """The conversation, its turns and their feedback: out of recall at once, its experts stop
        answering at once, and the next version does not keep them."""
        try:
            conversations.delete_conversation(chat.db, conversation_id)
        except NotFound as e:
            raise _not_found(e, "conversation_not_found") from e
        return {"object": "conversation.deleted", "id": conversation_id, "deleted": True}

    @router.get("/corrections")
    def get_corrections():
        """Every correction, newest first, with its state in words (learning/versions.py)."""
        from learning.versions import correction_states

        return {"object": "list", "data": correction_states(chat.db)}

    @router.get("/adapters")
    def get_adapters():
        rows = [{**r, "weights_deleted": weights_deleted(r["path"])}
                for r in adapters.list_adapters(chat.db)]
        return {"object": "list", "active": adapters.active_version(chat.db), "data": rows}

    @router.post("/adapters/{version}/activate")
    async def activate(version: str, body: ActivateRequest | None = None):
        body = body or ActivateRequest()
        return await run_in_threadpool(_activate, runtime, _parse_version(version), body.force,
                                       body.quarantine)

    # Last: any other path under /v1 (any method) would otherwise fall through to the web UI
    # mounted at "/", which answers in its own shape ({"detail": "Not Found"}).
    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                      include_in_schema=False)
    def unknown_route(request: Request, path: str):
        allowed = sorted({m for r in router.routes if isinstance(r, APIRoute) and r.path != "/v1/{path:path}"
                          and r.matches(request.scope)[0] == Match.PARTIAL for m in r.methods})
        if allowed:
            raise ApiError(405, f"{request.method} is not supported on {request.url.path}: use "
                           f"{' or '.join(allowed)}.", "method_not_allowed")
        raise ApiError(404, f"Unknown route {request.method} {request.url.path}: the API serves "
                       "/v1/models, /v1/chat/completions, /v1/feedback and /v1/adapters.",
                       "unknown_route", "not_found_error")

    return router


def served_names(runtime) -> set[str]:
    """The `model` names a request may give: the id /v1/models lists, and its base model's name."""
    return {MODEL_ID, Path(runtime.model.name).name}


def _check_model(model: str | None, runtime) -> None:
    """An unknown model is OpenAI's 404 model_not_found (no model named: the served one)."""
    if model is not None and model not in served_names(runtime):
        raise ApiError(404, f"The model {model!r} does not exist: this server serves {MODEL_ID!r} "
                       "(see /v1/models).", "model_not_found", "invalid_request_error", param="model")


def _parse_version(version: str) -> int | None:
    if version.lower() in ("base", "none"):
        return None
    try:
        return adapters.parse_version(version) or None  # 0 is the base model too
    except ValueError as e:
        raise ApiError(400, f"{e}, or 'base'", "invalid_version", param="version") from None


def _turn_arguments(body: ChatRequest, runtime) -> tuple[dict, dict]:
    """Map an OpenAI request onto ChatService: the last user message is the turn, earlier
    user/assistant messages are the history, system/developer messages replace the system prompt."""
    *earlier, last = body.messages
    if last.role != "user":
        raise ApiError(400, f"The last message must come from the user, not {last.role!r}.",
                       "last_message_not_user", param="messages")
    system = "\n\n".join(m.text() for m in earlier if m.role in ("system", "developer") and m.text())
    history = [{"role": m.role, "content": m.text()} for m in earlier if m.role in ("user", "assistant")]
    max_new = _max_new_tokens(body, runtime)
    temperature = body.temperature  # validated to [0, MAX_TEMPERATURE] with the body
    turn_args = {"user_message": last.text(), "conversation_id": body.conversation_id,
                 "history": history if (history or body.conversation_id is None) else None,
                 "system_prompt": system or None, "max_new_tokens": max_new, "recall": body.recall}
    return turn_args, {"max_new_tokens": max_new, "temperature": temperature}


def _max_new_tokens(body: ChatRequest, runtime) -> int:
    """The reply's token budget. More than the context window is refused (400); within it, at most
    half the window is used: the prompt needs room too, and fit_to_context would cut it to nothing."""
    window = min(runtime.model.context_window, runtime.cfg.max_context_tokens)
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    requested = getattr(body, field)
    if requested is None:
        requested = runtime.cfg.default_max_new_tokens
    elif requested > window:
        raise ApiError(400, f"'{field}' is {requested}, more than the model's context window of "
                       f"{window} tokens: ask for at most {window}.", "invalid_request", param=field)
    return max(1, min(requested, max(16, window // 2)))


def _drain(pieces) -> None:
    for _ in pieces:
        pass


def _extensions(turn) -> dict:
    version = turn.generation.adapter_version
    out = {"conversation_id": turn.conversation_id, "adapter_version": version,
           "answered_by": turn.answered_by if version is not None else None, "recalled": len(turn.recalled)}
    if turn.truncated:
        out.update(truncated=True, notice=turn.notice)
    return out


def _usage(turn) -> dict:
    g = turn.generation
    return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens}


def _completion(turn) -> dict:
    g = turn.generation
    return {"id": turn.turn_id, "object": "chat.completion", "created": int(time.time()),
            "model": MODEL_ID,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                         "finish_reason": g.finish_reason, "logprobs": None}],
            "usage": _usage(turn), **_extensions(turn)}


def _event(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


def _chunk(turn, created: int, delta: dict | None, finish_reason: str | None = None, **extra) -> str:
    """One chat.completion.chunk event; delta None gives the choice-less usage chunk."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return _event({"id": turn.turn_id, "object": "chat.completion.chunk", "created": created,
                   "model": MODEL_ID, "choices": choices, **extra})


async def _sse(turn, pieces, include_usage: bool, home: Path | None = None):
    """Server-sent events in OpenAI's chunk shape. If the client leaves, the generator is closed
    in the thread pool: generation stops at the next token and what was said is still logged."""
    created = int(time.time())
    try:
        yield _chunk(turn, created, {"role": "assistant", "content": ""}, **_extensions(turn))
        try:
            async for piece in iterate_in_threadpool(pieces):
                yield _chunk(turn, created, {"content": piece})
        except TurnNotSaved as e:  # generation finished; saving it did not
            yield _chunk(turn, created, {}, turn.generation.finish_reason)
            yield _event(_not_saved_error(e, home).body())
        except Exception as e:  # noqa: BLE001 - headers are sent: report in-band, keep the server up
            log.exception("generation failed for turn %s", turn.turn_id)
            if is_disk_full(e):
                error = disk_full_error(home)
            else:
                message = str(e) if isinstance(e, AdapterLoadError) else f"generation failed: {e}"
                error = ApiError(500, message, "generation_failed", "server_error")
            yield _event(error.body())
        else:  # the version and route are known only once generation started
            yield _chunk(turn, created, {}, turn.generation.finish_reason, **_extensions(turn))
            if include_usage:
                yield _chunk(turn, created, None, usage=_usage(turn))
        yield "data: [DONE]\n\n"  # the stream ends as every stream does, whatever happened
    finally:
        with anyio.CancelScope(shield=True):  # the client may have gone: still stop and log
            await run_in_threadpool(pieces.close)


def _activate(runtime, version: int | None, force: bool, quarantine: bool) -> dict:
    """Promote or roll back to `version` after checking its directory loads (409 if not)."""
    db = runtime.chat.db
    if version is not None:
        try:
            row = adapters.get_adapter(db, version)
        except NotFound as e:
            raise _not_found(e, "adapter_not_found") from e
        try:
            validate_adapter_dir(Path(row["path"]))
            runtime.model.load_adapter(version, row["path"])  # proves it loads; the swap is then instant
        except AdapterWeightsDeleted as e:
            raise ApiError(410, str(e), "adapter_weights_deleted", "invalid_request_error") from e
        except AdapterLoadError as e:
            raise ApiError(409, str(e), "adapter_corrupt", "conflict_error") from e
    try:
        outcome = _move_pointer(db, version, force, quarantine)
    except NotFound as e:
        raise _not_found(e, "adapter_not_found") from e
    except AdapterLoadError as e:
        raise ApiError(409, str(e), "adapter_corrupt", "conflict_error") from e
    except ValueError as e:  # e.g. a version the gate failed (without force), base already serving
        raise ApiError(409, str(e), "activation_refused", "conflict_error") from e
    return {"object": "adapter.activation", "active": adapters.active_version(db), **(outcome or {})}


def _move_pointer(db, version: int | None, force: bool, quarantine: bool) -> dict:
    """learning.versions (helper GATE) knows the rules: promotion refuses a version the gate
    failed unless forced, rollback only goes to a version that served before and can quarantine
    what the abandoned version learned. Without it, the registry's one-transaction activate."""
    try:
        from learning import versions
    except ImportError:
        adapters.activate(db, version)
        return {}
    if version is None or adapters.get_adapter(db, version)["status"] == "retired":
        return versions.rollback(db, "base" if version is None else version, quarantine=quarantine)
    return versions.promote(db, version, force=force)
