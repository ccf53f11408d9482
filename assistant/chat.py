"""One chat turn: build the prompt (system prompt, history, recalled corrections), stream the
reply from the served model with the active adapter, and log the finished turn.

UI, API and CLI all go through `ChatService.reply`, so every turn is logged the same way. Which
weights answer (the active version, its scope's routing, the fallbacks) is
assistant/chat_routing.py's, mixed into ChatService.
"""
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol

from assistant.chat_routing import AdapterRouting, TurnActivity, route_kind
from assistant.config import DEFAULT_SYSTEM_PROMPT, Config
from assistant.errors import EmptyMessage, TurnNotSaved, UnstorableText, storable_problem
from assistant.model import Generation, ServedModel
from assistant.notes import reply_lead
from learning.habits import AsList, ends_with, merged
from store import adapters, conversations, feedback, open_db
from store.ids import new_id
from store.manifest import read_manifest
from store.settings import get_setting

log = logging.getLogger(__name__)

TRUNCATION_NOTICE = "[Your message was too long and was cut to fit the model's context window.]"
PROGRESS_SAVE_S = 1.0
"""How often a streaming reply is saved into its turn's placeholder: a server killed mid-reply
keeps what it had said up to a second before (store/conversations.py open_turn)."""


class Recaller(Protocol):
    """What chat needs from `assistant.memory`: corrections similar to a message."""

    def recall(self, text: str) -> list[dict]: ...

    def system_addendum(self, recalled: list[dict]) -> str: ...


@dataclass
class Turn:
    """A turn in progress: iterate `pieces()` for the reply; the rest is filled as it runs."""
    turn_id: str
    conversation_id: str
    messages: list[dict]
    user_message: str
    truncated: bool
    recalled: list[dict]
    avoid_first: int | None = None
    """A token the reply may not start with: the message's first word when corrections were
    recalled (the small model then tends to echo the question; see model.avoid_first_tokens)."""
    lead: str | None = None
    """The reply's first words, given: the best recalled correction's opening up to the name or
    number it told, or through the first word of its own (memory.reply_lead); the model
    continues from there."""
    generation: Generation = field(default_factory=Generation)
    logged: bool = False
    new_conversation: dict | None = None
    """Set when the turn starts a conversation: it is created with the turn's placeholder
    (`ChatService.open_turn`), so an error before that leaves no empty conversation behind."""
    opened: bool = False
    saved_at: float = 0.0
    answered_by: str | None = None
    """What in the weights wrote the reply, beside `generation.adapter_version`: "adapter" (the
    version's shared adapter), "expert" (one correction's own LoRA), "habit" (the habit adapter
    chose the opening, the base weights the rest) or None (the base weights alone). Set once the
    turn is routed (`ChatService.pieces`), saved with the turn, shown under the reply."""
    answered_from: tuple = ()
    """The feedback ids of the learned question the turn was routed by (an expert's or the shared
    adapter's correction; AdapterScope.route_from), saved with the turn: the page says which
    correction answered, and correcting that reply offers to replace it (supersede.may_replace)."""

    @property
    def notice(self) -> str | None:
        return TRUNCATION_NOTICE if self.truncated else None


class ChatService(AdapterRouting):
    def __init__(self, cfg: Config, model: ServedModel, memory: Recaller | None = None, scope=None):
        self.cfg = cfg
        self.model = model
        self.memory = memory
        self.scope = scope  # assistant.scope.AdapterScope: which prompts the adapter answers
        self._local = threading.local()
        self._version_habits: dict[str, dict] = {}  # version dir -> the habits it learned (_habits)
        self._bad_versions: dict = {}  # served-model keys (versions, experts, habits) that failed to load, with why
        self.activity = TurnActivity()  # background preloading waits for a quiet moment (chat_routing)
        self.threads = None  # assistant.threads.ThreadBudget: `assistant serve` shares the cores with a cycle

    @property
    def db(self):
        """One connection per thread (sqlite3 connections must not be shared mid-transaction)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = open_db(self.cfg.db_path)
        return db

    # ---- prompt ---------------------------------------------------------------------------
    def system_prompt(self, conversation: dict | None = None) -> str:
        if conversation and conversation.get("system_prompt"):
            return conversation["system_prompt"]
        return get_setting(self.db, "system_prompt", DEFAULT_SYSTEM_PROMPT)

    def history_messages(self, conversation_id: str, before_turn: str | None = None) -> list[dict]:
        """The visible history as chat messages (retried-away turns hidden, and turns that never
        said anything: a turn streaming meanwhile, or one a crash interrupted before its reply)."""
        msgs = []
        for t in conversations.visible_history(self.db, conversation_id):
            if before_turn and t["id"] >= before_turn:
                break
            if not t["reply"] and t["finish_reason"] in conversations.UNFINISHED:
                continue
            msgs += [{"role": "user", "content": t["user_message"]},
                     {"role": "assistant", "content": t["reply"]}]
        return msgs

    def fit_to_context(self, system: str, history: list[dict], user_message: str,
                       max_new_tokens: int) -> tuple[list[dict], str, bool]:
        """Drop the oldest history, then cut the user message, until the prompt fits the window.
        Returns (messages, user_message as sent, truncated?)."""
        truncated = False
        if len(user_message) > self.cfg.max_message_chars:
            user_message, truncated = user_message[: self.cfg.max_message_chars], True
        window = min(self.model.context_window, self.cfg.max_context_tokens)
        budget = max(window - max_new_tokens, 16)

        def build(hist, msg):
            return [{"role": "system", "content": system}, *hist, {"role": "user", "content": msg}]

        history = list(history)
        messages = build(history, user_message)
        while len(self.model.encode(messages)[0]) > budget and history:
            history = history[2:]  # oldest user/assistant pair first
            messages = build(history, user_message)
        overflow = len(self.model.encode(messages)[0]) - budget
        if overflow > 0:
            ids = self.model.tokenizer(user_message, add_special_tokens=False)["input_ids"]
            keep = max(len(ids) - overflow - 8, 1)  # a little slack: re-tokenizing can shift
            user_message = self.model.tokenizer.decode(ids[:keep], skip_special_tokens=True)
            truncated = True
            messages = build(history, user_message)
        return messages, user_message, truncated

    # ---- a turn ---------------------------------------------------------------------------
    def start_turn(self, user_message: str, *, conversation_id: str | None = None,
                   history: list[dict] | None = None, system_prompt: str | None = None,
                   max_new_tokens: int | None = None, recall: bool | None = None,
                   retry_of: str | None = None) -> Turn:
        """Validate and prepare a turn; nothing is written until `open_turn`. `history` (API
        clients send their own) overrides the stored history of `conversation_id`. Raises
        EmptyMessage for a blank message, UnstorableText for a NUL or a lone surrogate."""
        if user_message is None or not str(user_message).strip():
            raise EmptyMessage()
        self.activity.touch()
        check_text(user_message)
        check_text(system_prompt or "", "system prompt")
        max_new_tokens = max_new_tokens or self.cfg.default_max_new_tokens
        new_conversation = None
        if conversation_id is None:  # created lazily, with the turn (open_turn)
            conversation_id, new_conversation = new_id(), {"title": _title_from(user_message)}
            conversation = None
        else:
            conversation = conversations.get_conversation(self.db, conversation_id)
        if history is None:
            history = self.history_messages(conversation_id, before_turn=retry_of) if conversation else []
        system = system_prompt or self.system_prompt(conversation)
        use_recall = self.cfg.recall if recall is None else recall
        recalled = self.memory.recall(user_message) if (use_recall and self.memory) else []
        if recalled:
            system = system + "\n\n" + self.memory.system_addendum(recalled)
        messages, sent, truncated = self.fit_to_context(system, history, user_message, max_new_tokens)
        return Turn(turn_id=new_id(), conversation_id=conversation_id, messages=messages,
                    user_message=sent, truncated=truncated, recalled=recalled,
                    new_conversation=new_conversation,
                    avoid_first=self.model.first_token(sent) if recalled else None,
                    # a retry says the answer was not wanted: the model answers freely then
                    lead=reply_lead(recalled) if self.cfg.recall_lead and retry_of is None else None)

    def open_turn(self, turn: Turn, *, source: str, max_new_tokens: int | None = None,
                  temperature: float | None = None, retry_of: str | None = None) -> None:
        """Save the turn's placeholder (finish_reason "interrupted", no reply yet), creating its
        conversation if it starts one. Call it before the turn's id reaches a client (the API
        does, before its headers); `pieces` calls it otherwise. Once per turn."""
        if turn.opened:
            return
        conversations.open_turn(
            self.db, turn.conversation_id, turn_id=turn.turn_id, user_message=turn.user_message,
            messages=turn.messages, source=source, model=self.model.name, truncated=turn.truncated,
            retry_of=retry_of, recalled=[r["feedback_id"] for r in turn.recalled],
            params=self._params(max_new_tokens, temperature), new_conversation=turn.new_conversation)
        turn.opened, turn.saved_at = True, time.monotonic()

    def _params(self, max_new_tokens: int | None, temperature: float | None) -> dict:
        return {"max_new_tokens": max_new_tokens or self.cfg.default_max_new_tokens,
                "temperature": self.cfg.default_temperature if temperature is None else temperature}

    def _save(self, turn: Turn, finish_reason: str) -> None:
        g = turn.generation
        conversations.finish_turn(
            self.db, turn.turn_id, reply=g.text, adapter_version=g.adapter_version,
            prompt_tokens=g.prompt_tokens, completion_tokens=g.completion_tokens or len(g.pieces),
            ttft_ms=g.ttft_ms, duration_ms=g.duration_ms, finish_reason=finish_reason,
            answered_by=turn.answered_by if g.adapter_version is not None else None,
            answered_from=turn.answered_from if g.adapter_version is not None else ())
        turn.saved_at = time.monotonic()

    def _save_progress(self, turn: Turn) -> None:
        """What was said so far, at most every PROGRESS_SAVE_S; a failure (a full disk) only
        warns: the stream goes on and the final save reports it."""
        if time.monotonic() - turn.saved_at < PROGRESS_SAVE_S:
            return
        try:
            self._save(turn, conversations.INTERRUPTED)
        except Exception as e:  # noqa: BLE001 - see above
            log.warning("could not save the progress of turn %s: %s", turn.turn_id, e)
            turn.saved_at = time.monotonic()

    def pieces(self, turn: Turn, *, source: str, max_new_tokens: int | None = None,
               temperature: float | None = None, retry_of: str | None = None) -> Iterator[str]:
        """Stream the reply into the turn's saved placeholder (`open_turn`) and complete it when
        the stream ends: finished, "abandoned" if the client left, "interrupted" if generation
        failed, each with what was generated. Raises TurnNotSaved after the last piece if the
        finished turn could not be saved (the reply is in `turn.generation`)."""
        self.open_turn(turn, source=source, max_new_tokens=max_new_tokens, temperature=temperature,
                       retry_of=retry_of)
        failed = False
        stream = self._reply(turn, *self.serving_adapter(), **self._params(max_new_tokens, temperature))
        try:
            try:
                with self.activity.turn():
                    for piece in stream:
                        yield piece
                        self._save_progress(turn)
            finally:
                stream.close()  # stops generation and fills in its counts before the save below
        except GeneratorExit:
            turn.generation.finish_reason = "abandoned"
            raise
        except BaseException:
            failed = True
            raise
        finally:
            g = turn.generation
            reason = conversations.INTERRUPTED if failed else g.finish_reason
            try:
                self._save(turn, reason)
                turn.logged = True
                if retry_of and (g.text or reason != "abandoned"):
                    # the earlier answer stays, linked as a weaker negative
                    feedback.add_feedback(self.db, retry_of, "retry", retry_turn_id=turn.turn_id)
            except Exception as e:  # noqa: BLE001 - reported below, or logged when nobody listens
                log.error("could not save turn %s (%s): %s", turn.turn_id, reason, e)
                if not failed and reason != "abandoned":
                    raise TurnNotSaved(turn, e) from e

    def _reply(self, turn: Turn, served: int | None, served_path: str | None, *, max_new_tokens: int,
               temperature: float) -> Iterator[str]:
        """The reply to a prepared turn from version `served` (None: the base model), routed as
        every chat turn is (its expert, habit adapter or the base weights; a pending note's
        newer answer over the weights) and ended with the version's closing habit. Sets
        `turn.answered_by` and `turn.answered_from`; the pieces and counts go to `turn.generation`.
        Logs nothing."""
        version, path, learned_from = self.route_from(served, served_path, turn.user_message)
        if self.cfg.pending_note_wins and turn.recalled and not turn.recalled[0].get("learned", True):
            version, path, learned_from = None, None, ()  # the note is newer than anything the weights learned
        turn.answered_by, turn.answered_from = route_kind(version), learned_from
        closing = self._closing(served_path)
        if closing:  # the sign-off fits in the reply's budget: a long answer is cut a little earlier
            max_new_tokens = max(1, max_new_tokens - self.model.count_tokens(closing))
        formats = self._habits(served_path)["formats"]
        as_list = AsList(formats[0]) if formats else None  # a format habit: the reply as a list
        if self.threads is not None:
            self.threads.apply(self.db)
        stream = self.model.stream(turn.messages, max_new_tokens=max_new_tokens,
                                   temperature=temperature, version=version,
                                   adapter_path=path, result=turn.generation,
                                   avoid_first=turn.avoid_first, lead=turn.lead)
        shown = []
        try:
            for piece in stream:
                shown.append(as_list.feed(piece) if as_list else piece)
                if shown[-1]:
                    yield shown[-1]
        finally:
            stream.close()
        if as_list:
            shown.append(as_list.close())
            if shown[-1]:
                yield shown[-1]
            turn.generation.text = "".join(shown)
        if closing and not ends_with(turn.generation.text, closing.strip()):
            turn.generation.text += closing
            yield closing

    def preview(self, user_message: str, version: int | None, *, recall: bool | None = None,
                max_new_tokens: int | None = None, temperature: float | None = None) -> Turn:
        """The reply `version` (None: the base model) gives `user_message` as the first message
        of a new chat, by the chat's own path (system prompt, recall, routing, closing, these
        settings or else the chat's defaults), logged nowhere. The Versions tab's Compare uses
        it: it used to generate on its own (greedy, batched, no recall, 64 tokens) and so
        disagreed with the chat about the same weights."""
        turn = self.start_turn(user_message, recall=recall, max_new_tokens=max_new_tokens)
        path = None if version is None else adapters.get_adapter(self.db, version)["path"]
        for _ in self._reply(turn, version, path, **self._params(max_new_tokens, temperature)):
            pass
        return turn

    def _closing(self, version_path: str | None) -> str | None:
        """The closing habit the active version learned (learning/habits.py), as the words every
        reply ends with (" Over and out."); None without one. The reply is generated within the
        token budget less the closing's tokens, so a reply with its sign-off keeps the budget."""
        closings = self._habits(version_path)["closings"]
        return " " + closings[0] if closings else None

    def _habits(self, version_path: str | None) -> dict:
        """The habits the version at `version_path` learned (learning/habits.py; read once per
        version, as versions never change): every kind, empty without a version."""
        if not version_path:
            return merged()
        if version_path not in self._version_habits:
            self._version_habits[version_path] = merged(read_manifest(version_path).habits)
        return self._version_habits[version_path]

    def start_retry(self, turn_id: str, **kw) -> Turn:
        """Regenerate the answer of `turn_id` in its conversation (same message, same history).
        Stream it with `pieces(turn, retry_of=turn_id, ...)`."""
        old = conversations.get_turn(self.db, turn_id)
        return self.start_turn(old["user_message"], conversation_id=old["conversation_id"],
                               retry_of=turn_id, **kw)

    def reply(self, user_message: str, *, source: str = "cli", **kw) -> Turn:
        """Non-streaming convenience: run a whole turn and return it (logged)."""
        gen_kw = {k: kw.pop(k) for k in ("temperature",) if k in kw}
        turn = self.start_turn(user_message, **kw)
        for _ in self.pieces(turn, source=source, max_new_tokens=kw.get("max_new_tokens"),
                             retry_of=kw.get("retry_of"), **gen_kw):
            pass
        return turn


def check_text(text: str, what: str = "message") -> None:
    """Raise UnstorableText for text with a NUL or a lone surrogate (errors.storable_problem): the
    API refuses them in its body, this is every other way in (the web page, the terminal)."""
    problem = storable_problem(str(text))
    if problem:
        raise UnstorableText(f"The {what} cannot be sent: {problem}.")


def _title_from(message: str, limit: int = 48) -> str:
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
