"""Faults of the real server process: killed mid-reply, and exposure without credentials."""
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from assistant.config import Config
from assistant.server import check_exposure
from store import conversations, open_db

ROOT = Path(__file__).resolve().parents[1]


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ASSISTANT_UI_PASSWORD", "ASSISTANT_API_KEY")}
    env.update(ASSISTANT_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    return env


class ServerProcess:
    """`python -m assistant.cli serve` in a subprocess; the URL is read from its output."""

    def __init__(self, model: Path, home: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assistant.cli", "--model", str(model), "serve", "--port", "0"],
            cwd=ROOT, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self._wait_for_url(timeout=120)

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)

    def _wait_for_url(self, timeout: float) -> str:
        deadline, seen = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            seen.append(line)
            m = re.search(r"Serving the assistant at (http://\S+)", line)
            if m:
                return m.group(1)
        self.kill()
        raise AssertionError("server did not start:\n" + "".join(seen))

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="x", max_retries=0, timeout=60)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def test_killing_the_server_mid_reply_loses_no_earlier_turn(tmp_path, tiny_model_path):
    home = tmp_path / "home"
    server = ServerProcess(tiny_model_path, home)
    try:
        c = server.client()
        done = c.chat.completions.create(model="assistant", max_tokens=8,
                                         messages=[{"role": "user", "content": "Where do I work?"}])
        stream = c.chat.completions.create(model="assistant", max_tokens=256, stream=True,
                                           messages=[{"role": "user", "content": "Tell me a long story"}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break  # the reply has started: kill the server now
        server.kill()
        assert server.proc.returncode == -signal.SIGKILL
    finally:
        server.kill()

    raw = sqlite3.connect(str(home / "assistant.db"))
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    db = open_db(home / "assistant.db")
    row = conversations.get_turn(db, done.id)
    assert row["reply"] == done.choices[0].message.content
    assert row["completion_tokens"] == done.usage.completion_tokens
    # the turn whose id the client had is there, marked interrupted, with what was said; nothing else
    assert {t["id"] for t in conversations.recent_turns(db, 10)} == {done.id, chunk.id}
    cut = conversations.get_turn(db, chunk.id)  # (what was said is saved every second: test_chat.py)
    assert cut["finish_reason"] == conversations.INTERRUPTED or cut["completion_tokens"] == 256  # or done: a fast machine
    assert not cut["reply"] or cut["reply"].startswith(chunk.choices[0].delta.content)
    assert conversations.empty_conversations(db) == []

    again = ServerProcess(tiny_model_path, home)  # and the server comes back on the same data
    try:
        r = again.client().chat.completions.create(model="assistant", max_tokens=4,
                                                   messages=[{"role": "user", "content": "Hello"}])
        assert conversations.get_turn(open_db(home / "assistant.db"), r.id)["source"] == "api"
    finally:
        again.kill()


@pytest.mark.parametrize("env, missing", [
    ({}, "ASSISTANT_UI_PASSWORD and ASSISTANT_API_KEY"),
    ({"ASSISTANT_UI_PASSWORD": "pw"}, "ASSISTANT_API_KEY"),
])
def test_non_loopback_bind_needs_a_password_and_a_key(tmp_path, tiny_model_path, env, missing):
    r = subprocess.run(
        [sys.executable, "-m", "assistant.cli", "--model", str(tiny_model_path), "serve",
         "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT, env=_env(tmp_path / "home", **env), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "Refusing to serve on 0.0.0.0" in r.stderr and f"Set {missing} " in r.stderr
    assert not (tmp_path / "home" / "assistant.db").exists()  # refused before touching anything


def test_exposure_rules():
    assert check_exposure(Config(host="127.0.0.1", ui_password=None, api_key=None)) is None
    assert check_exposure(Config(host="localhost", ui_password=None, api_key=None)) is None
    assert check_exposure(Config(host="0.0.0.0", ui_password="pw", api_key="key")) is None
    assert "ASSISTANT_API_KEY" in check_exposure(Config(host="192.168.1.5", ui_password="pw", api_key=None))
