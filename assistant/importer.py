"""Import what the user already has as feedback: `assistant import FILE` and the page's Import button.

Accepted (the shape is read from the file, not its name):
  - TRL conversational SFT JSONL, one {"messages": [...]} per line, the last message the
    assistant's: a liked answer ("up") to the last user message, the earlier messages its history.
  - TRL preference JSONL, {"prompt", "chosen", "rejected"} per line, conversational (lists of
    messages) or plain (strings), or with the prompt implicit in "chosen" and "rejected": a
    correction, "chosen" replacing "rejected", the learner's DPO pair.
  - An Open WebUI feedback export: a JSON list of feedback records, each with data.rating
    (1 or -1), meta.message_id and snapshot.chat (the chat with its message tree); the rated
    answer and the path of messages to it become a liked or disliked answer (data.reason and
    data.comment the dislike's reason).

Each item becomes a conversation of its own (the held-out split of liked answers is by
conversation) with one turn, source "import", whose params record the format, the file and
the line, and the feedback on it; all in one transaction. An item whose content is already
stored by an earlier import (its key: a hash of system prompt, history, message, answer and
feedback) is skipped, so importing a file twice adds nothing. Corrections replace earlier ones
of the same question as any correction does (store/feedback.py); a running server's recall
sees them at its next sync.
"""
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from assistant.errors import storable_problem
from store import conversations, feedback
from store.transactions import write_transaction

SOURCE = "import"
FORMATS = {"trl-sft": "TRL conversational SFT JSONL", "trl-preference": "TRL preference JSONL",
           "open-webui": "Open WebUI feedback export"}
KIND_WORDS = {"correction": "correction", "up": "liked answer", "down": "disliked answer"}


class Rejected(ValueError):
    """Why one line or record cannot be imported, in words."""


@dataclass
class Item:
    where: str  # "line 3", "record 2": how the report names it
    user_message: str
    reply: str
    kind: str  # up | down | correction
    history: list[dict] = field(default_factory=list)
    system: str | None = None
    correction: str | None = None
    reason: str | None = None
    model: str = SOURCE
    title: str | None = None
    format: str = "trl-sft"  # a FORMATS key: the row's own, recorded with its turn

    def key(self) -> str:
        blob = json.dumps([self.system, self.history, self.user_message, self.reply, self.kind,
                           self.correction, self.reason], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class Report:
    file: str
    format: str | None = None
    added: Counter = field(default_factory=Counter)
    duplicates: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def text(self) -> str:
        what = f" ({FORMATS[self.format]})" if self.format else ""
        added = ", ".join(f"{n} {KIND_WORDS[k]}{'s' * (n != 1)}" for k, n in sorted(self.added.items())) or "nothing"
        lines = [f"Imported from {self.file}{what}: {added}; {self.duplicates} already there (skipped); "
                 f"{len(self.rejected)} rejected."]
        lines += [f"- {where}: {why}" for where, why in self.rejected]
        return "\n".join(lines)


# ---- reading ------------------------------------------------------------------------------
def _text(content, what: str) -> str:
    """A message's text: a string, or TRL/OpenAI content parts ({"type": "text", "text"})."""
    if isinstance(content, list):
        content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    if not isinstance(content, str):
        raise Rejected(f"{what} is not text")
    problem = storable_problem(content)
    if problem:
        raise Rejected(f"{what}: {problem}")
    return content


def _messages(value, what: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": _text(value, what)}]
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
        raise Rejected(f"{what} must be a list of {{\"role\", \"content\"}} messages")
    return [{"role": m["role"], "content": _text(m.get("content", ""), f"a {m['role']} message in {what}")}
            for m in value]


def _split(messages: list[dict], what: str) -> tuple[str | None, list[dict], str]:
    """(system prompt, history, last user message) of a prompt."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "developer")) or None
    chat = [m for m in messages if m["role"] in ("user", "assistant")]
    if not chat or chat[-1]["role"] != "user" or not chat[-1]["content"].strip():
        raise Rejected(f"{what} must end with a user message")
    return system, chat[:-1], chat[-1]["content"]


def _answer(value, what: str) -> str:
    if isinstance(value, list):
        said = [m for m in _messages(value, what) if m["role"] == "assistant"]
        value = said[-1]["content"] if said else ""
    text = _text(value, what)
    if not text.strip():
        raise Rejected(f"{what} is empty")
    return text


def _sft(row: dict, where: str) -> Item:
    messages = _messages(row["messages"], "messages")
    if not messages or messages[-1]["role"] != "assistant":
        raise Rejected("the last message must be the assistant's answer")
    system, history, user = _split(messages[:-1], "the messages before the answer")
    return Item(where, user, _answer(messages[-1]["content"], "the answer"), "up", history, system)


def _preference(row: dict, where: str) -> Item:
    if "prompt" in row:
        prompt = _messages(row["prompt"], "prompt")
    elif isinstance(row["chosen"], list) and len(row["chosen"]) > 1:  # implicit prompt: the shared start
        prompt = _messages(row["chosen"][:-1], "chosen")
        if _messages(row["rejected"][:-1], "rejected") != prompt:
            raise Rejected("without a prompt, chosen and rejected must start with the same messages")
    else:
        raise Rejected("a preference row needs a prompt")
    system, history, user = _split(prompt, "the prompt")
    chosen, rejected = _answer(row["chosen"], "chosen"), _answer(row["rejected"], "rejected")
    if chosen.strip() == rejected.strip():
        raise Rejected("chosen and rejected are the same answer: nothing to correct")
    return Item(where, user, rejected, "correction", history, system, correction=chosen, format="trl-preference")


def _owui_history(snapshot: dict) -> dict:
    """Open WebUI's message tree: snapshot.chat is the chat row (its own "chat" holds the
    history); some exports flatten it one or two levels."""
    chat = snapshot.get("chat") if isinstance(snapshot.get("chat"), dict) else {}
    for holder in (chat.get("chat"), chat, snapshot):
        if isinstance(holder, dict) and isinstance(holder.get("history"), dict):
            return {**holder["history"], "title": chat.get("title") or holder.get("title")}
    raise Rejected("snapshot has no chat history")


def _owui(record, where: str) -> Item:
    if not isinstance(record, dict) or not isinstance(record.get("data"), dict):
        raise Rejected("not an Open WebUI feedback record (no data)")
    rating = record["data"].get("rating")
    if rating not in (1, -1, "1", "-1"):
        raise Rejected(f"rating is {rating!r}, not 1 (liked) or -1 (disliked)")
    history = _owui_history(record.get("snapshot") or {})
    messages = history.get("messages") or {}
    if isinstance(messages, list):
        messages = {m.get("id", str(i)): {**m, "parentId": m.get("parentId", messages[i - 1].get("id", str(i - 1))
                                                                if i else None)}
                    for i, m in enumerate(messages) if isinstance(m, dict)}
    rated = (record.get("meta") or {}).get("message_id") or history.get("currentId")
    path, at = [], rated
    while at is not None and at in messages and len(path) <= len(messages):
        path.append(messages[at])
        at = messages[at].get("parentId")
    if not path or path[0].get("role") != "assistant":
        raise Rejected(f"the rated message {rated!r} is not an answer in the snapshot")
    path.reverse()
    system, turns, user = _split(_messages([{"role": m.get("role"), "content": m.get("content", "")}
                                            for m in path[:-1]], "the chat"), "the chat before the answer")
    data = record["data"]
    reason = "; ".join(str(data[k]).strip() for k in ("reason", "comment") if str(data.get(k) or "").strip()) or None
    kind = "up" if int(rating) == 1 else "down"
    return Item(where, user, _answer(path[-1].get("content", ""), "the rated answer"), kind, turns, system,
                reason=reason if kind == "down" else None, model=str(data.get("model_id") or SOURCE),
                title=history.get("title"), format="open-webui")


def read(text: str) -> tuple[str | None, list[Item | tuple[str, str]]]:
    """(format, items and (where, why) rejections) of a file's text; format None when no line has
    an accepted shape. Raises Rejected for an export that is not JSON."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise Rejected(f"not valid JSON ({e})") from None
        return "open-webui", [_attempt(_owui, r, f"record {i}") for i, r in enumerate(records, 1)]
    out, formats = [], Counter()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            out.append((f"line {n}", f"not JSON ({e.msg})"))
            continue
        if isinstance(row, dict) and "messages" in row:
            formats["trl-sft"] += 1
            out.append(_attempt(_sft, row, f"line {n}"))
        elif isinstance(row, dict) and {"chosen", "rejected"} <= set(row):
            formats["trl-preference"] += 1
            out.append(_attempt(_preference, row, f"line {n}"))
        else:
            out.append((f"line {n}", 'neither a conversational SFT row {"messages"} nor a preference row '
                                     '{"prompt", "chosen", "rejected"}'))
    if not formats:  # each line's reason, then the file's
        return None, out + [("the file", "no line is a TRL SFT or preference row, and the file is not an "
                                         "Open WebUI export (a JSON list)")]
    return formats.most_common(1)[0][0], out


def _attempt(parse, row, where: str):
    try:
        return parse(row, where)
    except Rejected as e:
        return where, str(e)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a shape we did not foresee
        return where, f"unreadable ({type(e).__name__}: {e})"


# ---- writing ------------------------------------------------------------------------------
def _imported_keys(db) -> set[str]:
    """Keys of the items imported before that have their feedback."""
    return {r[0] for r in db.execute(
        "SELECT json_extract(t.params_json, '$.import.key') FROM turns t JOIN feedback f ON f.turn_id = t.id "
        "WHERE t.source = ?", [SOURCE])}


def _store(db, item: Item, file: str) -> None:
    title = " ".join((item.title or item.user_message).split())
    cid = conversations.create_conversation(db, title=f"Imported: {title[:60]}", system_prompt=item.system)
    prompt = ([{"role": "system", "content": item.system}] if item.system else []) + item.history + \
        [{"role": "user", "content": item.user_message}]
    tid = conversations.log_turn(
        db, cid, user_message=item.user_message, messages=prompt, reply=item.reply, source=SOURCE,
        model=item.model, adapter_version=None, prompt_tokens=0, completion_tokens=0, ttft_ms=None,
        duration_ms=0.0, params={"import": {"format": item.format, "file": file, "where": item.where, "key": item.key()}})
    feedback.add_feedback(db, tid, item.kind, reason=item.reason, correction=item.correction)


def import_text(db, text: str, file: str) -> Report:
    report = Report(file)
    try:
        report.format, items = read(text)
    except Rejected as e:
        report.rejected.append(("the file", str(e)))
        return report
    seen = _imported_keys(db)
    for item in items:
        if isinstance(item, tuple):
            report.rejected.append(item)
            continue
        if item.key() in seen:
            report.duplicates += 1
            continue
        try:
            with write_transaction(db):  # the conversation, its turn and the feedback, or nothing
                _store(db, item, file)
        except ValueError as e:  # e.g. a correction past feedback.MAX_TEXT
            report.rejected.append((item.where, str(e)))
            continue
        seen.add(item.key())
        report.added[item.kind] += 1
    return report


def import_file(db, path) -> Report:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        report = Report(path.name)
        report.rejected.append(("the file", f"cannot be read ({e})"))
        return report
    return import_text(db, text, path.name)


def import_into(runtime, path) -> str:
    """The page's Import button: import, let recall see the corrections at once. -> the notice"""
    if not path:
        return "Choose a file to import first."
    report = import_file(runtime.db, path)
    if report.added.get("correction") and runtime.memory is not None:
        runtime.memory.sync(runtime.db, wait_s=0)
    return report.text()


def cmd_import(cfg, args) -> int:
    from store import open_db

    cfg.home.mkdir(parents=True, exist_ok=True)
    report = import_file(open_db(cfg.db_path), args.file)
    print(report.text())
    return 0 if report.added or report.duplicates else 1
