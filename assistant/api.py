"""The OpenAI-compatible HTTP API over the runtime's ChatService.

Routes (all under /v1, all requiring `Authorization: Bearer <cfg.api_key>` when a key is set):
  GET  /v1/models                       the one served model, id "assistant"
  POST /v1/chat/completions             streaming (SSE) and not; the completion `id` IS the logged
                                        turn id, so a client can send feedback about it
  POST /v1/feedback                     {"turn_id", "rating": "up"|"down", "reason"?, "correction"?}
  GET  /v1/adapters                     the adapter registry and the active version
  POST /v1/adapters/{version}/activate  promote or roll back to a version ("base": no adapter);
                                        410 when its weights were deleted to save disk

Extensions to the OpenAI request body: `conversation_id` (continue a stored conversation, else a
new one is created) and `recall: false` (no recalled corrections for this request). Responses
add `conversation_id`, `adapter_version` and, when the message had to be cut to fit the context
window, `truncated: true` plus `notice` (and the header `X-Assistant-Truncated: 1`).

Feedback: a `correction` is only accepted with rating "down"; it records TWO facts, a 'down' vote
(with the reason, if any) and a 'correction'. The vote keeps counts of disliked answers honest,
the correction is what the learner trains on.

Every error has OpenAI's shape `{"error": {"message", "type", "code", "param"}}`; malformed JSON
and invalid fields are 400s that say what is wrong. Generation is blocking, so it runs in the
thread pool; the model's own lock queues concurrent requests.
"""
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Literal

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from assistant.errors import AdapterLoadError, AdapterWeightsDeleted, EmptyMessage
from assistant.model import validate_adapter_dir, weights_deleted
from store import adapters
from store.conversations import NotFound
from store.feedback import MAX_TEXT

log = logging.getLogger(__name__)

MODEL_ID = "assistant"
MAX_TEMPERATURE = 2.0


class ApiError(Exception):
    """An error to return to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type_, param

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content={"error": {
            "message": self.message, "type": self.type, "code": self.code, "param": self.param}})


# ---- request bodies ----------------------------------------------------------------------------
class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict] | None = None

    def text(self) -> str:
        """Plain text; OpenAI's list-of-parts form keeps its text parts."""
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use
    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    stream_options: dict | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    conversation_id: str | None = None
    recall: bool | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a field name must not pass silently
    turn_id: str = Field(min_length=1)
    rating: Literal["up", "down"]
    reason: str | None = Field(default=None, max_length=MAX_TEXT)
    correction: str | None = Field(default=None, max_length=MAX_TEXT)

    @field_validator("correction")
    @classmethod
    def _not_blank(cls, v):
        if v is not None and not v.strip():
            raise ValueError("a correction needs the corrected answer text")
        return v


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
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    where = f"'{param}': " if param else ""
    return f"Invalid request body: {where}{first['msg']}", "invalid_request", param


def install_error_handlers(app: FastAPI) -> None:
    """Every error, including FastAPI's own, in OpenAI's shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, code, param = _validation_message(exc)
        return ApiError(400, message, code, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), f"http_{exc.status_code}", type_).response()


    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return ApiError(500, f"internal error: {exc}", "internal_error", "server_error").response()


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

    @router.post("/chat/completions")
    async def chat_completions(body: ChatRequest):
        turn_args, gen_args = _turn_arguments(body, runtime)
        try:
            turn = await run_in_threadpool(chat.start_turn, **turn_args)
        except EmptyMessage as e:
            raise ApiError(400, str(e), "empty_message", param="messages") from e
        except NotFound as e:
            raise _not_found(e, "conversation_not_found") from e
        headers = {"X-Assistant-Turn-Id": turn.turn_id, "X-Assistant-Conversation-Id": turn.conversation_id}
        if turn.truncated:
            headers["X-Assistant-Truncated"] = "1"
        pieces = chat.pieces(turn, source="api", **gen_args)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(turn, pieces, include_usage), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache"})
        await run_in_threadpool(_drain, pieces)
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
        return {"object": "feedback", "turn_id": body.turn_id, "feedback_ids": ids,
                "kinds": [kind for kind, _, _ in facts]}

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

    return router


def _parse_version(version: str) -> int | None:
    if version.lower() in ("base", "none", "0"):
        return None
    try:
        return int(version)
    except ValueError:
        raise ApiError(400, f"adapter version must be a number or 'base', got {version!r}",
                       "invalid_version", param="version") from None


def _turn_arguments(body: ChatRequest, runtime) -> tuple[dict, dict]:
    """Map an OpenAI request onto ChatService: the last user message is the turn, earlier
    user/assistant messages are the history, system/developer messages replace the system prompt."""
    *earlier, last = body.messages
    if last.role != "user":
        raise ApiError(400, f"The last message must come from the user, not {last.role!r}.",
                       "last_message_not_user", param="messages")
    system = "\n\n".join(m.text() for m in earlier if m.role in ("system", "developer") and m.text())
    history = [{"role": m.role, "content": m.text()} for m in earlier if m.role in ("user", "assistant")]
    window = min(runtime.model.context_window, runtime.cfg.max_context_tokens)
    requested = body.max_completion_tokens or body.max_tokens or runtime.cfg.default_max_new_tokens
    # at most half the window: the prompt needs room too, and fit_to_context would cut it to nothing
    max_new = max(1, min(int(requested), max(16, window // 2)))
    temperature = None if body.temperature is None else min(max(body.temperature, 0.0), MAX_TEMPERATURE)
    turn_args = {"user_message": last.text(), "conversation_id": body.conversation_id,
                 "history": history if (history or body.conversation_id is None) else None,
                 "system_prompt": system or None, "max_new_tokens": max_new, "recall": body.recall}
    return turn_args, {"max_new_tokens": max_new, "temperature": temperature}


def _drain(pieces) -> None:
    for _ in pieces:
        pass


def _extensions(turn) -> dict:
    out = {"conversation_id": turn.conversation_id, "adapter_version": turn.generation.adapter_version}
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


async def _sse(turn, pieces, include_usage: bool):
    """Server-sent events in OpenAI's chunk shape. If the client leaves, the generator is closed
    in the thread pool: generation stops at the next token and what was said is still logged."""
    created = int(time.time())
    try:
        yield _chunk(turn, created, {"role": "assistant", "content": ""}, **_extensions(turn))
        try:
            async for piece in iterate_in_threadpool(pieces):
                yield _chunk(turn, created, {"content": piece})
        except Exception as e:  # noqa: BLE001 - headers are sent: report in-band, keep the server up
            log.exception("generation failed for turn %s", turn.turn_id)
            message = str(e) if isinstance(e, AdapterLoadError) else f"generation failed: {e}"
            yield _event({"error": {"message": message, "type": "server_error", "code": "generation_failed"}})
            return
        yield _chunk(turn, created, {}, turn.generation.finish_reason)
        if include_usage:
            yield _chunk(turn, created, None, usage=_usage(turn))
        yield "data: [DONE]\n\n"
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
