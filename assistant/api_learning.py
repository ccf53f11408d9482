"""The API routes about what the assistant learns from and which version serves.

Contract: `add_learning_routes` adds these to the API's router (assistant/api.py, which holds
the key check):
  POST   /feedback                     {"turn_id", "rating": "up"|"down", "reason"?, "correction"?};
                                       a correction only with rating "down", and then TWO facts
                                       are recorded, the 'down' vote (with the reason) and the
                                       'correction'; answers with the ids of the corrections it
                                       replaced ("supersedes") and those it may replace that
                                       supersession by meaning could not decide or that the
                                       corrected reply was answered from ("may_replace", for
                                       the user to confirm). An unknown turn is a 404.
  PATCH  /conversations/{id}           {"no_learn": true|false}: don't learn from it (or do again)
  DELETE /conversations/{id}           the conversation, its turns and their feedback
  GET    /corrections                  every correction, newest first, with its state in words
  POST   /corrections/{id}/replaces    {"feedback_ids": [...]}: the user confirms that correction
                                       {id} replaces those earlier live corrections; answers with
                                       all it replaces. 404 unknown id, 400 not live or not earlier
  GET    /adapters                     the adapter registry, the active version, deleted weights
  POST   /adapters/{version}/activate  promote or roll back ("base": no adapter) after checking
                                       the version loads: 404 unknown, 409 corrupt or refused by
                                       the rules (learning/versions.py), 410 weights deleted
Errors are ApiErrors (assistant/api_errors.py).
"""
from pathlib import Path

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from assistant.api_bodies import ActivateRequest, ConversationUpdate, FeedbackRequest, ReplaceRequest
from assistant.api_errors import ApiError, not_found
from assistant.errors import AdapterLoadError, AdapterWeightsDeleted
from assistant.model import validate_adapter_dir, weights_deleted
from store import adapters, conversations, feedback
from store.conversations import NotFound


def add_learning_routes(router: APIRouter, runtime) -> None:
    """The feedback, conversation, correction and adapter routes on `router`."""
    chat = runtime.chat

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
            raise not_found(e, "turn_not_found") from e
        except ValueError as e:
            raise ApiError(400, str(e), "invalid_feedback") from e
        corrected = body.correction is not None
        replaced = feedback.replaced_by(chat.db, ids[-1]) if corrected else []
        maybe = await run_in_threadpool(runtime.may_replace, ids[-1]) if corrected else []
        return {"object": "feedback", "turn_id": body.turn_id, "feedback_ids": ids,
                "kinds": [kind for kind, _, _ in facts], "supersedes": replaced, "may_replace": maybe}

    @router.patch("/conversations/{conversation_id}")
    def patch_conversation(conversation_id: str, body: ConversationUpdate):
        try:
            conversations.update_conversation(chat.db, conversation_id, no_learn=int(body.no_learn))
        except NotFound as e:
            raise not_found(e, "conversation_not_found") from e
        return {"object": "conversation", "id": conversation_id, "no_learn": body.no_learn}

    @router.delete("/conversations/{conversation_id}")
    def delete_conversation(conversation_id: str):
        """The conversation, its turns and their feedback: out of recall at once, its experts stop
        answering at once, and the next version does not keep them."""
        try:
            conversations.delete_conversation(chat.db, conversation_id)
        except NotFound as e:
            raise not_found(e, "conversation_not_found") from e
        return {"object": "conversation.deleted", "id": conversation_id, "deleted": True}

    @router.get("/corrections")
    def get_corrections():
        """Every correction, newest first, with its state in words (learning/versions.py)."""
        from learning.versions import correction_states

        return {"object": "list", "data": correction_states(chat.db)}

    @router.post("/corrections/{feedback_id}/replaces")
    async def post_replaces(feedback_id: str, body: ReplaceRequest):
        try:
            replaced = await run_in_threadpool(runtime.replace, feedback_id, list(body.feedback_ids))
        except NotFound as e:
            raise not_found(e, "correction_not_found") from e
        except ValueError as e:
            raise ApiError(400, str(e), "invalid_replacement", param="feedback_ids") from e
        return {"object": "correction", "id": feedback_id, "supersedes": replaced}

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


def _parse_version(version: str) -> int | None:
    if version.lower() in ("base", "none"):
        return None
    try:
        return adapters.parse_version(version) or None  # 0 is the base model too
    except ValueError as e:
        raise ApiError(400, f"{e}, or 'base'", "invalid_version", param="version") from None


def _activate(runtime, version: int | None, force: bool, quarantine: bool) -> dict:
    """Promote or roll back to `version` after checking its directory loads (409 if not)."""
    db = runtime.chat.db
    if version is not None:
        try:
            row = adapters.get_adapter(db, version)
        except NotFound as e:
            raise not_found(e, "adapter_not_found") from e
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
        raise not_found(e, "adapter_not_found") from e
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
