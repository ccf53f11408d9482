"""The chat tab's handlers: send, retry and feedback, as plain methods over a Runtime.

Contract
- Every browser tab has its own `session` dict (a gr.State, see `new_session`), so two browsers
  never share anything but the runtime; the served model queues their requests under its lock.
  session = {conversation_id, turn_ids, selected, pending, reasonless_down}:
  `turn_ids[i]` is the turn that chatbot message i belongs to (its user message, notes and
  reply all map to the turn), so feedback on ANY message finds its turn; `selected` is the turn
  the feedback panel acts on; `pending` holds choices made before the conversation exists.
- The chatbot shows each turn as a block: user message, [cut notice], answered-by note, reply,
  [the user's correction] (assistant/ui_messages.py builds them).
- Handlers return (or yield) tuples in the order of the matching *_OUTPUTS names in ui.py.
  Errors the user can act on become a gr.Warning plus a visible notice; nothing is half-logged.
"""
import logging

import gradio as gr

from assistant.chat import check_text
from assistant.errors import AssistantError, TurnNotSaved, is_disk_full
from assistant.ui_messages import (
    CORRECTION_TITLE,
    answered_note,
    answered_of,
    is_note,
    note,
    text_of,
    turn_block,
)
from store import conversations, feedback

log = logging.getLogger(__name__)

SELECT_HINT = "Click an answer (or like/dislike it) to give feedback on it."
# A retry asks for a different answer: at temperature 0 the model would repeat itself word for
# word, so a retry samples at least this hot.
RETRY_TEMPERATURE = 0.8


def new_session() -> dict:
    return {"conversation_id": None, "turn_ids": [], "selected": None,
            "pending": {"no_learn": 0, "system_prompt": None}, "reasonless_down": {}, "votes": {}}


def feedback_values(history: list, session: dict) -> list:
    """The thumbs to show, one per assistant message (Gradio's `feedback_value`): the page
    forgets them whenever the messages change, so every chatbot update carries them."""
    votes, ids = session.get("votes") or {}, session.get("turn_ids") or []
    return [None if is_note(m) else votes.get(ids[i] if i < len(ids) else None)
            for i, m in enumerate(history) if m.get("role") == "assistant"]


def _clip(text: str, limit: int = 80) -> str:
    """`text` on one line, at most `limit` characters (an ellipsis marks a cut)."""
    short = " ".join(text.split())
    return short if len(short) <= limit else short[:limit - 1] + "…"


def target_text(reply: str) -> str:
    return f"**Feedback on:** “{_clip(reply, 140)}”"


def warn(message: str) -> str:
    """Show a toast and return the same text for the visible notice line."""
    gr.Warning(message)
    return f"⚠ {message}"


class ChatHandlers:
    def __init__(self, runtime):
        self.rt = runtime

    @property
    def db(self):
        return self.rt.db  # one connection per thread: Gradio runs handlers on a thread pool

    # ---- sending ---------------------------------------------------------------------------
    def send(self, message, history, session, max_new_tokens, temperature, recall):
        """Stream one turn. Yields (textbox, chatbot, session, notice, conversations, target, correction)."""
        history, session = list(history or []), _aligned(session, history)
        if not str(message or "").strip():
            yield (message, history, session, warn("The message is empty: type something to send."),
                   gr.skip(), gr.skip(), gr.skip())
            return
        try:
            check_text(message)  # before the conversation is created: its title is the message
            if session["conversation_id"] is None:
                session["conversation_id"] = self._create_conversation(message, session["pending"])
            turn = self.rt.chat.start_turn(message, conversation_id=session["conversation_id"],
                                           max_new_tokens=int(max_new_tokens), recall=bool(recall))
        except conversations.NotFound:  # deleted from another browser tab: keep the typed message
            yield (message, history, session, warn("This conversation was deleted. Press “New chat” "
                                                   "to start another one; your message is still here."),
                   self.conversation_list(None), gr.skip(), gr.skip())
            return
        except AssistantError as e:
            self._forget_if_empty(session)
            yield message, history, session, warn(str(e)), gr.skip(), gr.skip(), gr.skip()
            return
        yield from self._stream(turn, message, history, session, len(history), len(history),
                                max_new_tokens, temperature, retry_of=None, textbox="")

    def retry(self, history, session, max_new_tokens, temperature, recall, turn_id=None):
        """Regenerate the answer of `turn_id` (default: the selected one) in place; the earlier
        answer stays in the database, linked to the new one. Yields like `send`."""
        history, session = list(history or []), _aligned(session, history)
        turn_id = turn_id or session["selected"]
        where = [i for i, t in enumerate(session["turn_ids"]) if t == turn_id]
        if not turn_id or not where:
            yield (gr.skip(), history, session, warn("Select an answer of this chat to retry."),
                   gr.skip(), gr.skip(), gr.skip())
            return
        try:
            turn = self.rt.chat.start_retry(turn_id, max_new_tokens=int(max_new_tokens),
                                            recall=bool(recall))
        except (AssistantError, conversations.NotFound) as e:
            yield gr.skip(), history, session, warn(str(e)), gr.skip(), gr.skip(), gr.skip()
            return
        shown = text_of(history[where[0]]["content"])
        yield from self._stream(turn, shown, history, session, where[0], where[-1] + 1,
                                max_new_tokens, max(float(temperature), RETRY_TEMPERATURE),
                                retry_of=turn_id, textbox=gr.skip())

    def _stream(self, turn, shown_message, history, session, start, end, max_new_tokens,
                temperature, *, retry_of, textbox):
        """Replace history[start:end] with the turn's block and stream the reply into it.
        Each yield carries a fresh list, so a consumer may keep earlier states."""
        block = turn_block(shown_message, "", notice=turn.notice, recalled=turn.recalled)
        reply_at = start + len(block) - 1
        answered_at = reply_at - 1
        history[start:end] = block
        session["turn_ids"][start:end] = [turn.turn_id] * len(block)
        convs = self.conversation_list(session["conversation_id"])
        status = "↻ Regenerating…" if retry_of else "…"
        yield textbox, list(history), session, status, convs, gr.skip(), gr.skip()
        learned_from = None  # read once: the turn is routed before its first piece
        try:
            for _ in self.rt.chat.pieces(turn, source="ui", max_new_tokens=int(max_new_tokens),
                                         temperature=float(temperature), retry_of=retry_of):
                if learned_from is None:
                    learned_from = feedback.corrections(self.db, turn.answered_from)
                history[reply_at] = {"role": "assistant", "content": turn.generation.text}
                history[answered_at] = self._answered(turn, max_new_tokens, learned_from)
                yield textbox, list(history), session, status, gr.skip(), gr.skip(), gr.skip()
        except Exception as e:  # noqa: BLE001 - the user sees why; the turn is logged if it began
            log.exception("generation failed")
            self._forget_if_empty(session)
            if is_disk_full(e):
                why = (f"The disk holding {self.rt.cfg.home} is full: "
                       + ("this reply was not saved." if isinstance(e, TurnNotSaved) else "nothing was saved.")
                       + " Free some space there, then send again.")
            else:
                why = str(e) if isinstance(e, TurnNotSaved) else f"Generation failed: {e}"
            yield textbox, history, session, warn(why), gr.skip(), gr.skip(), gr.skip()
            return
        reply = turn.generation.text
        history[reply_at] = {"role": "assistant", "content": reply}
        history[answered_at] = self._answered(turn, max_new_tokens, feedback.corrections(self.db, turn.answered_from))
        session["selected"] = turn.turn_id
        done = self._retry_outcome(retry_of, turn.turn_id, reply) if retry_of else ""
        # The list again at the end: a page-load refresh racing the first update cannot hide this chat.
        yield textbox, history, session, done, self.conversation_list(session["conversation_id"]), \
            target_text(reply), reply

    @staticmethod
    def _answered(turn, max_new_tokens, learned_from: list[dict]) -> dict:
        """The answered-by note; `learned_from`: store.feedback.corrections of `turn.answered_from`."""
        g = turn.generation  # its finish_reason is "stop" until the stream ends
        return answered_note(answered_of(g.adapter_version, turn.answered_by, g.finish_reason, int(max_new_tokens),
                                         learned_from), turn.recalled)

    def _retry_outcome(self, old_id: str, new_id: str, reply: str) -> str:
        """The retry's notice. An answer identical to the earlier one is no evidence that the
        earlier one was worse: the "retry" fact assistant/chat.py recorded is taken back."""
        if " ".join(reply.split()) != " ".join(conversations.get_turn(self.db, old_id)["reply"].split()):
            return "↻ New answer kept; the earlier one is remembered as worse."
        feedback.withdraw_retry(self.db, old_id, new_id)
        return ("↻ The model gave the same answer again, so nothing was recorded as worse. "
                "Correct it (✎) to say what it should have said.")

    def _forget_if_empty(self, session: dict) -> None:
        """A chat whose first turn failed before it was saved is deleted, not listed empty; the
        next message starts it again."""
        try:
            if conversations.drop_if_empty(self.db, session["conversation_id"]):
                session["conversation_id"] = None
        except Exception as e:  # noqa: BLE001 - a full disk can refuse even this; the warning stands
            log.warning("could not drop an empty conversation: %s", e)

    def _create_conversation(self, message: str, pending: dict) -> str:
        title = " ".join(str(message).split())
        title = title if len(title) <= 48 else title[:47] + "…"
        cid = conversations.create_conversation(self.db, title=title,
                                                system_prompt=pending.get("system_prompt"))
        if pending.get("no_learn"):
            conversations.update_conversation(self.db, cid, no_learn=1)
        return cid

    # ---- feedback --------------------------------------------------------------------------
    def select(self, session, index):
        """Point the feedback panel at the turn of message `index`. -> (session, target, correction)"""
        session = _aligned(session, None)
        tid = _turn_at(session, index)
        if tid is None:
            return session, gr.skip(), gr.skip()
        try:
            reply = conversations.get_turn(self.db, tid)["reply"]
        except conversations.NotFound:  # still streaming (logged when it ends) or deleted elsewhere
            return session, gr.skip(), gr.skip()
        if session.get("selected") == tid:
            # Already selected (e.g. a 👍 on it): keep whatever the user is typing as a correction.
            return session, target_text(reply), gr.skip()
        session["selected"] = tid
        return session, target_text(reply), reply

    def on_select(self, session, evt: gr.SelectData):
        return self.select(session, evt.index)

    def vote(self, session, kind: str, reason: str = ""):
        """Thumbs up/down on the selected answer. -> (session, notice)"""
        tid = session.get("selected")
        if not tid:
            return session, warn(SELECT_HINT)
        reason = (reason or "").strip() or None
        try:
            if kind == "down" and reason and tid in session["reasonless_down"]:
                # A reason typed after a one-click 👎 belongs to that vote, not a second one.
                feedback.set_reason(self.db, session["reasonless_down"].pop(tid), reason)
                return session, "Reason added to your dislike."
            fid = self.rt.record_feedback(tid, kind, reason=reason)
        except (ValueError, conversations.NotFound) as e:
            return session, warn(str(e))
        if kind == "down" and not reason:
            session["reasonless_down"][tid] = fid
        session.setdefault("votes", {})[tid] = "Like" if kind == "up" else "Dislike"
        return session, ("Noted: a good answer." if kind == "up" else
                         f"Noted: a bad answer ({reason})." if reason else
                         "Noted: a bad answer. Add a reason below if you like.")

    def on_like(self, session, evt: gr.LikeData):
        """The chatbot's own 👍/👎 (and reason options). -> (session, notice, target, correction)"""
        session, target, correction = self.select(session, evt.index)
        tid = _turn_at(session, evt.index)
        if tid is None:
            return session, warn("That message is not an answer."), target, correction
        if session["selected"] != tid:
            return session, warn("Wait for the answer to finish, then rate it."), target, correction
        if evt.liked == "":  # un-clicked in the page; facts are append-only
            session.setdefault("votes", {}).pop(tid, None)
            return session, "Vote cleared in the page (the earlier vote stays recorded).", target, correction
        kind = "up" if evt.liked is True else "down"
        reason = evt.liked if isinstance(evt.liked, str) else ""
        if reason and session.get("votes", {}).get(tid) == reason:
            # Gradio 6 sends a flag option's click twice; a second click on the same option
            # un-selects it (liked ""), so the same option again is that echo: one fact only.
            return session, f"Noted: a bad answer ({reason}).", target, correction
        session, notice = self.vote(session, kind, reason)
        if reason:
            session["votes"][session["selected"]] = reason  # the option the page highlights
        return session, notice, target, correction

    def correct(self, history, session, text):
        """Record what the selected answer should have said. -> (chatbot, session, notice)"""
        history, session = list(history or []), _aligned(session, history)
        tid = session.get("selected")
        if not tid:
            return history, session, warn(SELECT_HINT)
        text = str(text or "")
        try:
            said = conversations.get_turn(self.db, tid)["reply"]
        except conversations.NotFound as e:
            return history, session, warn(str(e))
        if not text.strip():
            return history, session, warn("The correction is empty: write what the answer should have said.")
        if " ".join(text.split()) == " ".join((said or "").split()):
            # The box starts with the answer itself: saved unchanged, it would teach the wrong answer.
            return history, session, warn("That is the answer as it was given: change it to what it "
                                          "should have said, then save.")
        try:
            fid = self.rt.record_feedback(tid, "correction", correction=text)
        except (ValueError, conversations.NotFound) as e:
            return history, session, warn(str(e))
        _show_correction(history, session, tid, text.strip())
        notice = "✎ Correction saved: the assistant will learn from it."
        replaced = feedback.replaced_by(self.db, fid)
        if replaced:
            notice += f" It replaces {_quoted(self.db, replaced)}."
        maybe = self.rt.may_replace(fid)
        session["may_replace"] = {"by": fid, "ids": [m["feedback_id"] for m in maybe]} if maybe else None
        if maybe:
            notice += (f" An earlier correction may say otherwise: {_quoted(self.db, session['may_replace']['ids'])}."
                       f" If this one replaces it, press “{REPLACE_LABEL}”.")
        return history, session, notice

    def confirm_replace(self, session):
        """The user says the correction just saved replaces the earlier one(s) offered
        (`correct`'s "may replace"). -> (session, notice)"""
        session = _aligned(session, None)
        pending = session.pop("may_replace", None)
        if not pending:
            return session, warn("No earlier correction is waiting to be replaced.")
        try:
            replaced = self.rt.replace(pending["by"], pending["ids"])
        except (ValueError, conversations.NotFound) as e:
            return session, warn(str(e))
        return session, f"↻ Replaced {_quoted(self.db, replaced)}: from now on the newer correction answers."

    def on_edit(self, history, session, evt: gr.EditData):
        """Editing an answer in the chatbot is a correction; the original stays visible above it.
        -> (chatbot, session, notice)"""
        history, session = list(history or []), _aligned(session, history)
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        tid = _turn_at(session, i)
        if tid is None or history[i]["role"] != "assistant" or is_note(history[i]):
            history[i] = {**history[i], "content": text_of(evt.previous_value)}
            return history, session, warn("Only an answer can be corrected: edit the assistant's reply.")
        history[i] = {"role": "assistant", "content": conversations.get_turn(self.db, tid)["reply"]}
        session["selected"] = tid
        return self.correct(history, session, text_of(evt.value))

    def set_no_learn(self, session, flag):
        """Mark the conversation "don't learn from this" (or not). -> (session, notice)"""
        session = _aligned(session, None)
        cid = session["conversation_id"]
        if cid is None:
            session["pending"]["no_learn"] = int(bool(flag))
        else:
            conversations.update_conversation(self.db, cid, no_learn=int(bool(flag)))
        return session, ("The assistant will not learn from this conversation." if flag
                         else "The assistant may learn from this conversation.")

    # ---- shared with the conversation handlers ---------------------------------------------
    def conversation_list(self, selected=None):
        """The sidebar's chats: API calls made without a conversation id are each a conversation of
        their own and would bury the user's chats, so they are listed apart (`api_conversations`);
        one stays here while it is open."""
        # imported items (assistant/importer.py) are one conversation each: "What it knows about me" lists them
        apart = self._only_from("api") | self._only_from("import")
        rows = [r for r in conversations.list_conversations(self.db) if r["id"] not in apart or r["id"] == selected]
        choices = [((r["title"] or "Untitled") + (" (not learned)" if r["no_learn"] else ""), r["id"]) for r in rows]
        return gr.update(choices=choices, value=selected)

    def api_conversations(self):
        """The API's conversations, one entry per title (newest first; "Say hi" sent twice is one
        entry, "×2", opening the newest). -> (radio update, accordion update)"""
        api = self._only_from("api")
        groups: dict[str, list[str]] = {}
        for r in conversations.list_conversations(self.db):
            if r["id"] in api:
                groups.setdefault(r["title"] or "Untitled", []).append(r["id"])
        choices = [(title + (f" ×{len(ids)}" if len(ids) > 1 else ""), ids[0]) for title, ids in groups.items()]
        n = sum(len(ids) for ids in groups.values())
        return (gr.update(choices=choices, value=None),
                gr.update(label=f"From the API ({n} call{'s' * (n != 1)})", visible=bool(n)))

    def _only_from(self, source: str) -> set[str]:
        """Conversations every turn of which came from `source` (the API, an import)."""
        return {r[0] for r in self.db.execute(
            "SELECT conversation_id FROM turns GROUP BY conversation_id HAVING sum(source != ?) = 0", [source])}


# The button that confirms an earlier correction is replaced (assistant/ui.py shows it when one is offered).
REPLACE_LABEL = "↻ It replaces the earlier one"


def _quoted(db, feedback_ids: list[str]) -> str:
    """The corrections `feedback_ids` as the user wrote them, quoted and clipped."""
    rows = {r["id"]: r["correction"] for r in db.query(
        f"SELECT id, correction FROM feedback WHERE id IN ({','.join('?' * len(feedback_ids))})", feedback_ids)}
    return ", ".join(f"“{_clip(rows.get(f) or '')}”" for f in feedback_ids)


def _aligned(session, history) -> dict:
    """The session with turn_ids as long as the chatbot (a cleared chatbot clears them)."""
    session = session if isinstance(session, dict) and "turn_ids" in session else new_session()
    if history is not None:
        n = len(history)
        ids = session["turn_ids"][:n]
        session["turn_ids"] = ids + [None] * (n - len(ids))
    return session


def _turn_at(session: dict, index) -> str | None:
    i = index[0] if isinstance(index, (list, tuple)) else index
    ids = session["turn_ids"]
    return ids[i] if isinstance(i, int) and 0 <= i < len(ids) else None


def _show_correction(history: list, session: dict, tid: str, text: str) -> None:
    """Show the latest correction under the turn's answer (replacing an earlier one)."""
    where = [i for i, t in enumerate(session["turn_ids"]) if t == tid]
    for i in where:
        if (history[i].get("metadata") or {}).get("title") == CORRECTION_TITLE:
            history[i] = note(CORRECTION_TITLE, text)
            return
    at = where[-1] + 1
    history.insert(at, note(CORRECTION_TITLE, text))
    session["turn_ids"].insert(at, tid)
