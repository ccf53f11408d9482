"""`assistant chat`, `assistant logs` and `assistant backup` through the real CLI entry point."""
import io
import re
import sqlite3
import threading

import openai

from assistant.cli import main
from assistant.runtime import Runtime
from assistant.server import start_server
from store import conversations, open_db


def test_chat_with_piped_stdin_streams_replies_and_logs_turns(home, tiny_model_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n\n/new\nWhere do I work?\n/quit\nnot sent\n"))
    assert main(["--home", str(home), "--model", str(tiny_model_path), "chat", "--no-recall",
                 "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    db = open_db(home / "assistant.db")
    turns = list(reversed(conversations.recent_turns(db, 10)))
    assert [t["user_message"] for t in turns] == ["Hello there", "Where do I work?"]
    assert all(t["source"] == "cli" for t in turns)
    assert turns[0]["conversation_id"] != turns[1]["conversation_id"]  # /new started a new one
    assert out.count("assistant> ") == 2
    for t in turns:
        assert f"assistant> {t['reply']}\n" in out


def test_chat_continues_the_conversation_until_end_of_input(home, tiny_model_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\nHow are you today?"))
    assert main(["--home", str(home), "--model", str(tiny_model_path), "chat", "--max-new-tokens", "4"]) == 0
    turns = conversations.recent_turns(open_db(home / "assistant.db"), 10)
    assert len(turns) == 2 and len({t["conversation_id"] for t in turns}) == 1


def test_logs_shows_recent_turns_and_feedback(cfg, tiny_served, capsys):
    tiny_served.use(None)
    rt = Runtime.create(cfg, model=tiny_served, with_memory=False)
    first = rt.chat.reply("What is the name of my dog?", source="api", max_new_tokens=3)
    second = rt.chat.reply("Where do I work?", source="ui", max_new_tokens=3)
    rt.record_feedback(first.turn_id, "correction", correction="Your dog is called Biscuit.")
    rt.record_feedback(second.turn_id, "down", reason="too short")
    assert main(["--home", str(cfg.home), "logs", "-n", "5"]) == 0
    out = capsys.readouterr().out
    assert "Recent turns (2 of 2)" in out and "Recent feedback (2 of 2)" in out
    for needle in (first.turn_id, second.turn_id, "What is the name of my dog?", "correction",
                   "Your dog is called Biscuit.", "too short", " api ", " ui "):
        assert needle in out


def test_logs_without_a_database_says_so(home, capsys):
    assert main(["--home", str(home), "logs"]) == 1
    assert "No database yet" in capsys.readouterr().err


def test_backup_while_the_server_writes(cfg, tiny_served, tmp_path, capsys):
    tiny_served.use(None)
    rt = Runtime.create(cfg, model=tiny_served, with_memory=False)
    server = start_server(rt, ui=False)
    stop, answered, errors = threading.Event(), [], []

    def keep_chatting():
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        while not stop.is_set():
            try:
                answered.append(c.chat.completions.create(
                    model="assistant", max_tokens=4, messages=[{"role": "user", "content": "Hello"}]).id)
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                errors.append(e)
                return

    writer = threading.Thread(target=keep_chatting)
    writer.start()
    try:
        while len(answered) < 3 and writer.is_alive():
            stop.wait(0.05)
        copy = tmp_path / "backups" / "copy.db"
        assert main(["--home", str(cfg.home), "backup", str(copy)]) == 0
        during = len(answered)
        while len(answered) < during + 2 and writer.is_alive():  # the server kept writing
            stop.wait(0.05)
    finally:
        stop.set()
        writer.join(30)
        server.stop()
    assert not errors
    out = capsys.readouterr().out
    snap = sqlite3.connect(str(copy))
    assert snap.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n_copied = snap.execute("SELECT count(*) FROM turns").fetchone()[0]
    copied = {r[0] for r in snap.execute("SELECT id FROM turns")}
    assert int(re.search(r"^\s+turns\s+(\d+) rows$", out, re.M).group(1)) == n_copied
    assert 3 <= n_copied < len(answered)
    assert copied <= set(answered)  # a snapshot of the live data: every copied turn is a real one
    assert not list(copy.parent.glob(".*tmp*"))


def test_backup_refuses_the_live_database_and_existing_files(cfg, tiny_served, tmp_path, capsys):
    tiny_served.use(None)
    Runtime.create(cfg, model=tiny_served, with_memory=False).chat.reply("Hello", max_new_tokens=2)
    assert main(["--home", str(cfg.home), "backup", str(cfg.db_path)]) == 2
    assert "live database" in capsys.readouterr().err
    live = sqlite3.connect(str(cfg.db_path))
    assert live.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert live.execute("SELECT user_message FROM turns").fetchall() == [("Hello",)]
    existing = tmp_path / "keep.db"
    existing.write_text("precious")
    assert main(["--home", str(cfg.home), "backup", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err and existing.read_text() == "precious"
