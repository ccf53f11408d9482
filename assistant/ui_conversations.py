"""The chat tab's conversation handlers: new chat, resume, rename, delete, system prompt.

Same contract as `ui_chat`: plain methods over a Runtime and a per-browser session dict.
Switching conversation returns the whole chat view as one tuple, in the order of
CONVERSATION_OUTPUTS in ui.py: (chatbot, session, notice, conversations, system prompt,
don't-learn, title, feedback target, correction).
"""
import json

from assistant.chat import TRUNCATION_NOTICE
from assistant.config import DEFAULT_SYSTEM_PROMPT
from assistant.ui_chat import SELECT_HINT, ChatHandlers, answered_of, new_session, turn_block, warn
from store import conversations, feedback
from store.settings import get_setting, set_setting


class ChatTab(ChatHandlers):
    """All chat-tab handlers: sending and feedback (inherited) plus conversation management."""

    def default_system_prompt(self) -> str:
        return get_setting(self.db, "system_prompt", DEFAULT_SYSTEM_PROMPT)

    def new_chat(self, session=None):
        """An empty chat; the conversation is created with its first message."""
        return ([], new_session(), "", self.conversation_list(None), self.default_system_prompt(),
                False, "", SELECT_HINT, "")

    def resume(self, conversation_id, session=None):
        """Load a conversation's visible history (retried-away answers hidden) into the chat."""
        if not conversation_id:
            return self.new_chat()
        try:
            conv = conversations.get_conversation(self.db, conversation_id)
        except conversations.NotFound as e:
            return ([], new_session(), warn(str(e)), self.conversation_list(None),
                    self.default_system_prompt(), False, "", SELECT_HINT, "")
        session = new_session()
        session["conversation_id"] = conversation_id
        history = []
        for t in conversations.visible_history(self.db, conversation_id):
            block = turn_block(t["user_message"], t["reply"],
                               notice=TRUNCATION_NOTICE if t["truncated"] else None,
                               recalled=self._recalled(t), correction=self._latest_correction(t["id"]),
                               answered=answered_of(t["adapter_version"], t.get("answered_by"),
                                                    t["finish_reason"],
                                                    json.loads(t["params_json"] or "{}").get("max_new_tokens"),
                                                    feedback.corrections(self.db, json.loads(
                                                        t.get("answered_from_json") or "[]"))))
            history += block
            session["turn_ids"] += [t["id"]] * len(block)
            vote = self._latest_vote(t["id"])
            if vote:
                session["votes"][t["id"]] = vote
        return (history, session, "", self.conversation_list(conversation_id),
                conv["system_prompt"] or self.default_system_prompt(), bool(conv["no_learn"]),
                conv["title"] or "", SELECT_HINT, "")

    def _latest(self, turn_id: str, kinds: tuple) -> dict | None:
        facts = [f for f in feedback.feedback_for_turn(self.db, turn_id) if f["kind"] in kinds]
        return facts[-1] if facts else None

    def _latest_correction(self, turn_id: str) -> str | None:
        fact = self._latest(turn_id, ("correction",))
        return fact and fact["correction"]

    def _latest_vote(self, turn_id: str) -> str | None:
        fact = self._latest(turn_id, ("up", "down"))
        return fact and ("Like" if fact["kind"] == "up" else "Dislike")

    def _recalled(self, turn: dict) -> list[dict]:
        """The corrections that were recalled into this turn's prompt (ids are logged with it)."""
        return [{**c, "score": None} for c in feedback.corrections(self.db, json.loads(turn.get("recalled_json") or "[]"))]

    def rename(self, session, title):
        """-> (notice, conversations)"""
        cid = (session or {}).get("conversation_id")
        title = " ".join(str(title or "").split())
        if not cid:
            return warn("Send a first message: there is no conversation to rename yet."), self.conversation_list()
        if not title:
            return warn("A title cannot be empty."), self.conversation_list(cid)
        conversations.update_conversation(self.db, cid, title=title[:200])
        return f"Renamed to “{title[:200]}”.", self.conversation_list(cid)

    def delete(self, session):
        """Delete the current conversation with its turns and feedback; show an empty chat."""
        cid = (session or {}).get("conversation_id")
        if not cid:
            out = list(self.new_chat())
            out[2] = warn("There is no saved conversation to delete.")
            return tuple(out)
        title = conversations.get_conversation(self.db, cid)["title"]
        conversations.delete_conversation(self.db, cid)
        out = list(self.new_chat())
        out[2] = f"Deleted “{title}”."
        return tuple(out)

    def save_system_prompt(self, session, text, scope: str):
        """scope "default": the standing instructions of every chat without its own;
        scope "chat": this conversation only (blank clears the override). -> (session, notice)"""
        text = str(text or "").strip()
        if scope == "default":
            if not text:
                return session, warn("The default system prompt cannot be empty.")
            set_setting(self.db, "system_prompt", text)
            return session, "Saved as the default system prompt."
        value = text or None
        cid = session.get("conversation_id")
        if cid is None:
            session["pending"]["system_prompt"] = value
        else:
            conversations.update_conversation(self.db, cid, system_prompt=value)
        return session, ("This chat uses its own system prompt." if value
                         else "This chat uses the default system prompt.")
