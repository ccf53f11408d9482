"""POST /v1/chat/completions: OpenAI's chat completion over the runtime's ChatService.

Contract: `add_chat_routes` adds the route to the API's router (assistant/api.py, which holds the
key check). The last user message is the turn, earlier user/assistant messages its history and
system/developer messages replace the system prompt; an unknown `model` is a 404
model_not_found, a `max_tokens` beyond the context window a 400. The completion `id` IS the
logged turn id. The turn is saved (as "interrupted") before its id leaves in
X-Assistant-Turn-Id, and completed when the reply ends; if saving the finished reply fails, a
non-streaming request gets the 507/503 with the reply under "completion", a stream its last
chunk, an error event and [DONE]. A stream (SSE, OpenAI's chunk shape) sends the extensions
(conversation_id, adapter_version, answered_by, recalled, truncated/notice) in its first chunk
and again in the chunk with its finish_reason, and always ends with [DONE]; a client that
leaves stops generation at the next token, and what was said is still logged. Generation is
blocking, so it runs in the thread pool.
"""
import json
import logging
import time
from functools import partial
from pathlib import Path

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from assistant.api_bodies import ChatRequest
from assistant.api_errors import ApiError, disk_full_error, not_found, not_saved_error
from assistant.errors import AdapterLoadError, EmptyMessage, TurnNotSaved, UnstorableText, is_disk_full
from store.conversations import NotFound

log = logging.getLogger(__name__)

MODEL_ID = "assistant"


def add_chat_routes(router: APIRouter, runtime) -> None:
    """POST /chat/completions on `router`, served by `runtime`'s ChatService."""
    chat, cfg = runtime.chat, runtime.cfg

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
            raise not_found(e, "conversation_not_found") from e
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
            error = not_saved_error(e, cfg.home)
            return JSONResponse(status_code=error.status, content={**error.body(), "completion": _completion(turn)},
                                headers=headers)
        return JSONResponse(_completion(turn), headers=headers)


def served_names(runtime) -> set[str]:
    """The `model` names a request may give: the id /v1/models lists, and its base model's name."""
    return {MODEL_ID, Path(runtime.model.name).name}


def _check_model(model: str | None, runtime) -> None:
    """An unknown model is OpenAI's 404 model_not_found (no model named: the served one)."""
    if model is not None and model not in served_names(runtime):
        raise ApiError(404, f"The model {model!r} does not exist: this server serves {MODEL_ID!r} "
                       "(see /v1/models).", "model_not_found", "invalid_request_error", param="model")


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
           "answered_by": turn.answered_by if version is not None else None,
           "answered_from": list(turn.answered_from) if version is not None else [], "recalled": len(turn.recalled)}
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
            yield _event(not_saved_error(e, home).body())
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
