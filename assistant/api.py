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
"expert", "habit" or null: what in that version wrote the reply), `answered_from` (the feedback
ids of the correction whose learned question routed it; [] for none), `recalled` (how many recalled
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

This module builds the router (the key check, /v1/models, the schema and its page, the answer to
unknown paths) and re-exports what assistant/server.py installs. The rest is split by concern:
assistant/api_errors.py (errors in OpenAI's shape and their handlers), assistant/api_bodies.py
(request bodies), assistant/api_chat.py (chat completions and streaming) and
assistant/api_learning.py (feedback, conversations, corrections, adapters).
"""
import secrets
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.routing import APIRoute
from starlette.routing import Match

from assistant.api_chat import MODEL_ID, add_chat_routes
from assistant.api_errors import ApiError, install_error_handlers, install_unknown_path_errors
from assistant.api_learning import add_learning_routes
from store import adapters

__all__ = ["build_router", "install_error_handlers", "install_unknown_path_errors"]


def build_router(runtime) -> APIRouter:
    """Every route under /v1, each behind the API key when one is set; unknown paths last."""
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

    add_chat_routes(router, runtime)
    add_learning_routes(router, runtime)

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
