"""The terminal commands: `assistant chat`, `assistant logs` and `assistant backup PATH`.

`chat` reads one message per line from stdin (a terminal or a pipe), streams the reply to stdout
and logs every turn like the UI and the API do (source 'cli'). `/new` starts a new conversation,
`/quit` or end of input stops.

`backup` copies the live database with SQLite's online backup API in one step, under a read
lock: the copy is a consistent snapshot even while the server writes, and it is written to a
temporary file and renamed, so a failed backup never leaves a half-written file at PATH.
"""
import os
import sqlite3
import sys
from pathlib import Path

from assistant.config import Config
from assistant.errors import EmptyMessage

COUNTED_TABLES = ("conversations", "turns", "feedback", "adapters", "gate_decisions", "jobs")


# ---- chat ---------------------------------------------------------------------------------------
def cmd_chat(cfg: Config, args) -> int:
    from assistant.runtime import Runtime

    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Loading {cfg.model}...", file=sys.stderr, flush=True)
    recall = not getattr(args, "no_recall", False)
    if getattr(args, "max_new_tokens", None):
        cfg.default_max_new_tokens = max(1, args.max_new_tokens)
    runtime = Runtime.create(cfg, with_memory=recall)
    if interactive:
        print("Type a message and press Enter. /new starts a new conversation, /quit ends.",
              file=sys.stderr, flush=True)
    conversation_id = None
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        message = line.rstrip("\n")
        command = message.strip().lower()
        if command == "/quit":
            break
        if command == "/new":
            conversation_id = None
            print("(new conversation)", file=sys.stderr, flush=True)
            continue
        if not message.strip():
            continue  # a blank line is not a message; say nothing rather than refuse noisily
        conversation_id = _chat_turn(runtime, message, conversation_id, recall)
    return 0


def _chat_turn(runtime, message: str, conversation_id: str | None, recall: bool) -> str | None:
    """Stream one reply to stdout; returns the conversation to continue."""
    try:
        turn = runtime.chat.start_turn(message, conversation_id=conversation_id, recall=recall)
    except EmptyMessage as e:
        print(e, file=sys.stderr)
        return conversation_id
    if turn.notice:
        print(turn.notice, file=sys.stderr, flush=True)
    print("assistant> ", end="", flush=True)
    for piece in runtime.chat.pieces(turn, source="cli"):
        print(piece, end="", flush=True)
    print(flush=True)
    return turn.conversation_id


# ---- logs ---------------------------------------------------------------------------------------
def cmd_logs(cfg: Config, args) -> int:
    from store import conversations, feedback, open_db

    if not cfg.db_path.exists():
        print(f"No database yet at {cfg.db_path}: chat first.", file=sys.stderr)
        return 1
    db = open_db(cfg.db_path)
    n = max(1, getattr(args, "n", 20))
    turns = conversations.recent_turns(db, n)
    print(f"Recent turns ({len(turns)} of {db['turns'].count}):")
    print(_table(
        ["turn", "time", "src", "adapter", "tok in/out", "ttft ms", "message", "reply"],
        [[t["id"], t["created_at"][:19].replace("T", " "), t["source"],
          "base" if t["adapter_version"] is None else f"v{t['adapter_version']}",
          f"{t['prompt_tokens']}/{t['completion_tokens']}",
          "-" if t["ttft_ms"] is None else f"{t['ttft_ms']:.0f}",
          _short(t["user_message"]), _short(t["reply"])] for t in turns]))
    items = feedback.recent_feedback(db, n)
    print(f"\nRecent feedback ({len(items)} of {db['feedback'].count}):")
    print(_table(
        ["feedback", "time", "kind", "turn", "detail"],
        [[f["id"], f["created_at"][:19].replace("T", " "),
          f["kind"] + (" (quarantined)" if f["quarantined"] else ""), f["turn_id"],
          _short(f["correction"] or f["reason"] or (f"retried as {f['retry_turn_id']}"
                                                   if f["retry_turn_id"] else ""), 50)]
         for f in items]))
    return 0


def _short(text: str | None, limit: int = 36) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "  (none)"
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()
             for r in [headers, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


# ---- backup -------------------------------------------------------------------------------------
def cmd_backup(cfg: Config, args) -> int:
    live = cfg.db_path
    target = Path(args.path).expanduser()
    if target.is_dir():
        target = target / "assistant-backup.db"
    if not live.exists():
        print(f"No database at {live} to back up.", file=sys.stderr)
        return 1
    if _same_file(target, live) or target.name in (live.name + "-wal", live.name + "-shm"):
        print(f"Refusing to back up onto the live database {live}: choose another path.", file=sys.stderr)
        return 2
    if target.exists():
        print(f"{target} already exists: choose a new path or delete it first.", file=sys.stderr)
        return 2
    target.parent.mkdir(parents=True, exist_ok=True)
    counts = backup_database(live, target)
    print(f"Backed up {live} -> {target} ({target.stat().st_size / 1024:.0f} KiB)")
    for table, count in counts.items():
        print(f"  {table:<15} {count:>8} rows")
    return 0


def backup_database(live: Path, target: Path) -> dict[str, int]:
    """Consistent copy of `live` at `target` (atomic rename); returns row counts of the copy."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(str(live), timeout=30)
    try:
        dst = sqlite3.connect(str(tmp))
        try:
            # pages=-1: the whole database in one step under one read lock, so writers that
            # commit meanwhile cannot make the copy mix two states.
            src.backup(dst, pages=-1)
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise RuntimeError(f"the backup copy failed its integrity check: {check}")
            tables = {r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            counts = {t: dst.execute(f"SELECT count(*) FROM [{t}]").fetchone()[0]
                      for t in COUNTED_TABLES if t in tables}
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
        finally:
            dst.close()
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    return counts


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
