"""The server's part of bench/faults.py: kill -9 mid-stream, a full disk during chat, a fuzzed API.

Every function returns a dict of counts for the report; `db_checks` is the store's health after a
fault, shared with the learner's part.
"""
import errno
import http.client
import json
import random
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx

from assistant.config import Config
from assistant.embedders import MiniLMEmbedder
from assistant.memory import Memory
from assistant.model import ServedModel
from assistant.runtime import Runtime
from assistant.server import start_server
from store import conversations, open_db


# ---- the store after a fault ----------------------------------------------------------------------
def db_checks(path: Path) -> dict:
    """integrity_check, active versions, candidates without a decision, versions that served without
    a passing gate decision, conversations without a turn."""
    raw = sqlite3.connect(str(path), timeout=30)
    try:
        integrity = raw.execute("PRAGMA integrity_check").fetchone()[0]
        q = lambda sql: raw.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "integrity_ok": integrity == "ok",
            "active": q("SELECT count(*) FROM adapters WHERE status = 'active'"),
            "undecided_candidates": q("SELECT count(*) FROM adapters a WHERE status = 'candidate' AND NOT EXISTS "
                                      "(SELECT 1 FROM gate_decisions g WHERE g.candidate_version = a.version)"),
            "candidates": q("SELECT count(*) FROM adapters WHERE status = 'candidate'"),
            "gate_bypasses": q("SELECT count(*) FROM adapters a WHERE status IN ('active', 'retired') AND NOT EXISTS "
                               "(SELECT 1 FROM gate_decisions g WHERE g.candidate_version = a.version AND g.passed = 1)"),
            "empty_conversations": q("SELECT count(*) FROM conversations c WHERE NOT EXISTS "
                                     "(SELECT 1 FROM turns t WHERE t.conversation_id = c.id)"),
        }
    finally:
        raw.close()


def missing_rows(path: Path, table: str, ids: list) -> int:
    """How many acknowledged rows (by primary key) are gone."""
    if not ids:
        return 0
    raw = sqlite3.connect(str(path), timeout=30)
    try:
        key = "version" if table == "adapters" else "id"
        present = {r[0] for r in raw.execute(f"SELECT {key} FROM {table}")}
    finally:
        raw.close()
    return sum(1 for i in ids if i not in present)


@contextmanager
def small_disk(where: Path, size_mb: int):
    """A tmpfs of `size_mb` at `where`, or None where none can be mounted (then faked: see callers)."""
    where.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                        capture_output=True).returncode == 0
    try:
        yield where if ok else None
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Take every free block of `disk`; delete the returned file to give them back."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
        try:  # the last partial block
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    return filler


# ---- kill -9 mid-stream ---------------------------------------------------------------------------
def server_kills(root: Path, model: Path, n: int, rng: random.Random) -> dict:
    from tests.test_server_faults import ServerProcess  # the subprocess harness the tests use

    home = root / "server-kills"
    acked: dict[str, str] = {}  # turn id -> reply the client was given
    out = {"kills": 0, "sent_turn_saved": 0, "sent_turn_interrupted": 0, "sent_turn_missing": 0,
           "integrity_failures": 0, "acked_lost": 0, "acked_changed": 0, "empty_conversations": 0, "five_xx": 0}
    for _ in range(n):
        server = ServerProcess(model, home)
        try:
            client = httpx.Client(base_url=server.url, timeout=60)
            r = client.post("/v1/chat/completions", json={"max_tokens": 6, "messages": [
                {"role": "user", "content": rng.choice(["Hello", "Где я работаю?", "我的猫叫什么？", "🐶❓"])}]})
            out["five_xx"] += r.status_code >= 500
            if r.status_code == 200:
                acked[r.json()["id"]] = r.json()["choices"][0]["message"]["content"]
            # the kill comes a random moment after the headers (the tiny model says 256 tokens in
            # about a second), the client reading the stream meanwhile
            kill_at = time.monotonic() + rng.uniform(0, 0.8)
            with client.stream("POST", "/v1/chat/completions", json={"max_tokens": 256, "stream": True, "messages": [
                    {"role": "user", "content": "Tell me a long story"}]}) as s:
                sent = s.headers["x-assistant-turn-id"]
                for _line in s.iter_lines():
                    if time.monotonic() >= kill_at:
                        break
                server.kill()
            out["kills"] += 1
        finally:
            server.kill()
        checks = db_checks(home / "assistant.db")
        out["integrity_failures"] += not checks["integrity_ok"]
        out["empty_conversations"] = checks["empty_conversations"]
        db = open_db(home / "assistant.db")
        try:
            row = conversations.get_turn(db, sent)
            out["sent_turn_saved"] += 1
            out["sent_turn_interrupted"] += row["finish_reason"] == conversations.INTERRUPTED
        except conversations.NotFound:
            out["sent_turn_missing"] += 1
    db = open_db(home / "assistant.db")
    for tid, reply in acked.items():
        try:
            out["acked_changed"] += conversations.get_turn(db, tid)["reply"] != reply
        except conversations.NotFound:
            out["acked_lost"] += 1
    out["acked"] = len(acked)
    return out


# ---- a full disk during chat ----------------------------------------------------------------------
def disk_full_chat(root: Path, model: Path) -> dict:
    with small_disk(root / "chat-disk", 8) as disk:
        if disk is None:
            return {"skipped": "no tmpfs could be mounted here"}
        cfg = Config(home=disk / "home", model=str(model), default_max_new_tokens=4)
        rt = Runtime.create(cfg, model=ServedModel(str(model)), with_memory=False)
        running = start_server(rt, ui=False)
        url = running.url + "/v1/chat/completions"
        statuses, stream_ends, acked = [], [], {}

        def ask(i, stream):
            body = {"max_tokens": 4, "stream": stream, "messages": [{"role": "user", "content": f"Hello {i} " + "x" * 3000}]}
            if not stream:
                r = httpx.post(url, json=body, timeout=60)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    acked[r.json()["id"]] = r.json()["choices"][0]["message"]["content"]
                return
            with httpx.stream("POST", url, json=body, timeout=60) as r:
                statuses.append(r.status_code)
                if r.status_code == 200:
                    stream_ends.append([ln for ln in r.iter_lines() if ln.startswith("data: ")][-1] == "data: [DONE]")
        try:
            for i in range(3):
                ask(i, i % 2 == 1)
            filler = fill(disk)  # full before the request
            for i in range(10):
                ask(i, i % 2 == 1)
            filler.unlink()
            real = rt.chat.model.stream

            def then_full(*a, **kw):  # full after generation, before the turn is saved
                yield from real(*a, **kw)
                fill(disk)

            rt.chat.model.stream = then_full
            for i in range(6):
                ask(i, i % 2 == 1)
                (disk / "filler").unlink()
            rt.chat.model.stream = real
            for i in range(3):  # space given back: serving as before
                ask(100 + i, i % 2 == 1)
            resumed = statuses[-3:] == [200, 200, 200]
        finally:
            running.stop()
        checks = db_checks(cfg.db_path)
        return {"requests": len(statuses), "status_counts": {str(s): statuses.count(s) for s in sorted(set(statuses))},
                "five_xx_not_507": sum(1 for s in statuses if s >= 500 and s != 507),
                "streams_without_done": stream_ends.count(False), "resumed_after_freeing": resumed,
                "acked_lost": missing_rows(cfg.db_path, "turns", list(acked)),
                "integrity_ok": checks["integrity_ok"], "empty_conversations": checks["empty_conversations"]}


# ---- the fuzzer -----------------------------------------------------------------------------------
TEXTS = ["我的猫叫什么名字？", "Где я работаю?", "ما اسم قطتي؟", "Πού μεγάλωσα;", "מה שמי?", "मेरा नाम क्या है?",
         "私の猫の名前は？", "내 고양이 이름은?", "แมวของฉันชื่ออะไร", "🐶❓", "🎉🎉🎉", "???", "   ", "e\u0301\u0301\u0301",
         "\u202eevil", "a\u200bb\u200cc", "\ufeffbom", "x" * 100_000, "🐶" * 5000, "Hello", "I\tam\r\nhere", "\x7f\x1b[31m"]
RAW_TEXTS = ['"\\ud800"', '"a\\u0000b"', '"\\udfff\\ud800"', '"ok \\ud83d\\ude00"']  # as JSON, unescaped by the server


def fuzz_bodies(rng: random.Random, turn_id: str) -> list[tuple[str, str, bytes]]:
    """(method, path, raw body): wrong types, out-of-range numbers, every script, surrogates, NUL,
    huge ids and texts, path tricks."""
    chat, fb = "/v1/chat/completions", "/v1/feedback"
    j = lambda o: json.dumps(o, ensure_ascii=False).encode()  # noqa: E731
    msg = lambda c: {"messages": [{"role": "user", "content": c}], "max_tokens": 2}  # noqa: E731
    out = []
    for t in TEXTS:
        out += [("POST", chat, j(msg(t))), ("POST", chat, j({**msg(t), "stream": True})),
                ("POST", chat, j({"max_tokens": 2, "messages": [{"role": "system", "content": t}, {"role": "user", "content": "hi"}]})),
                ("POST", chat, j({"max_tokens": 2, "messages": [{"role": "user", "content": [{"type": "text", "text": t}]}]})),
                ("POST", chat, j({**msg("hi"), "conversation_id": t})),
                ("POST", fb, j({"turn_id": turn_id, "rating": "down", "correction": t})),
                ("POST", fb, j({"turn_id": t, "rating": "up", "reason": t}))]
    for raw in RAW_TEXTS:
        out += [("POST", chat, b'{"max_tokens": 2, "messages": [{"role": "user", "content": ' + raw.encode() + b'}]}'),
                ("POST", chat, b'{"messages": [{"role": "system", "content": ' + raw.encode() + b'}, {"role": "user", "content": "hi"}]}'),
                ("POST", fb, b'{"turn_id": "' + turn_id.encode() + b'", "rating": "down", "correction": ' + raw.encode() + b'}'),
                ("POST", chat, b'{"conversation_id": ' + raw.encode() + b', "messages": [{"role": "user", "content": "hi"}]}')]
    wrong = [None, 1, -1, 0, 1.5, "5", "", True, [], {}, [None], 2**70, -2**70, 1e308, "x" * 10_000]
    for field in ("messages", "max_tokens", "max_completion_tokens", "temperature", "stream", "recall", "model",
                  "stream_options", "conversation_id"):
        out += [("POST", chat, j({**msg("hi"), field: v})) for v in wrong]
    for number in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", "1.0000000000000002"):
        out += [("POST", chat, f'{{"temperature": {number}, "max_tokens": 2, "messages": [{{"role": "user", "content": "hi"}}]}}'.encode()),
                ("POST", chat, f'{{"max_tokens": {number}, "messages": [{{"role": "user", "content": "hi"}}]}}'.encode())]
    for m in ([{"role": None, "content": "hi"}], [{"role": "user"}], [{"role": "user", "content": 5}], [{"content": "hi"}],
              [{"role": "assistant", "content": "hi"}], [{"role": "tool", "content": "x"}], [{"role": "user", "content": [{"type": "image_url"}]}],
              [{"role": "user", "content": [{"text": "no type"}]}], [{"role": "user", "content": None}], []):
        out.append(("POST", chat, j({"messages": m, "max_tokens": 2})))
    for body in ({}, {"turn_id": turn_id}, {"turn_id": turn_id, "rating": "meh"}, {"turn_id": turn_id, "rating": "up", "correction": "x"},
                 {"turn_id": turn_id, "rating": "down", "correction": "   "}, {"turn_id": "x" * 100_000, "rating": "up"},
                 {"turn_id": turn_id, "rating": "up", "reason": "r" * 100_000}, {"turn_id": turn_id, "rating": "up", "extra": 1},
                 {"turn_id": 5, "rating": "up"}, {"turn_id": None, "rating": None}):
        out.append(("POST", fb, j(body)))
    for raw in (b"", b"{", b"nul", b"\xff\xfe\x00", b"[" * 10_000 + b"]" * 10_000, b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                b'{"a": 1, "a": 2}', b"\x00" * 100, "{\"messages\": \"é\"}".encode("latin-1")):
        out += [("POST", chat, raw), ("POST", fb, raw)]
    for v in ("../1", "%2e%2e", "1;DROP TABLE adapters", "٣", "1e3", "0x1", "-0", "00001", "9" * 30, "%20", "base", "BASE",
              "%00", "1%2F..", "\u0661", "1.5", str(2**63), str(2**63 - 1), "None", "null"):
        out.append(("POST", f"/v1/adapters/{v}/activate", b""))
    for path in ("/v1/../v1/models", "/v1//models", "/v1/models/", "/v1/chat/completions/../../models", "/v1/%00",
                 "/v1/adapters?version=1", "/v1/" + "a" * 5000, "/v1/adapters/1/activate/../../..", "/v1/models%00",
                 "/v1/docs", "/v1/openapi.json", "/../../etc/passwd", "/v1/%2e%2e/%2e%2e/etc/passwd"):
        out += [("GET", path, b""), ("POST", path, b"{}")]
    out += [(m, "/v1/models", b"") for m in ("HEAD", "OPTIONS", "PUT", "DELETE", "PATCH")]
    rng.shuffle(out)
    return out


def fuzz(root: Path, model: Path, rng: random.Random) -> dict:
    cfg = Config(home=root / "fuzz-home", model=str(model), default_max_new_tokens=2)
    rt = Runtime.create(cfg, model=ServedModel(str(model)), memory=Memory(cfg, embedder=MiniLMEmbedder()))
    rt.superseder = None  # the tiny model's likelihood would link unrelated corrections (tests/test_multilingual.py)
    running = start_server(rt, ui=False)
    statuses: dict[str, int] = {}
    five_xx, dropped, examples = 0, 0, []
    try:
        first = httpx.post(running.url + "/v1/chat/completions", timeout=60,
                           json={"max_tokens": 2, "messages": [{"role": "user", "content": "What is my cat's name?"}]}).json()
        for text in ("Your cat is called Pemberton.", "你的猫叫小白。", "🐶 Biscuit"):  # recall has corrections in several scripts
            httpx.post(running.url + "/v1/feedback", timeout=60, json={"turn_id": first["id"], "rating": "down", "correction": text})
        bodies = fuzz_bodies(rng, first["id"])
        conn = http.client.HTTPConnection(running.host, running.port, timeout=120)
        conn.connect()
        sock = conn.sock
        started = time.monotonic()
        for method, path, body in bodies:
            try:
                conn.request(method, quote(path, safe="/%?=;:@&+$,"), body=body or None,
                             headers={"content-type": "application/json"})
                r = conn.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException) as e:
                dropped += 1
                examples.append(f"dropped: {method} {path[:60]} {body[:80]!r}: {e}")
                conn.close()
                conn = http.client.HTTPConnection(running.host, running.port, timeout=120)
                conn.connect()
                sock = conn.sock
                continue
            if conn.sock is not sock:  # closed by the server after this answer
                dropped += 1
                conn.connect()
                sock = conn.sock
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status >= 500:
                five_xx += 1
                examples.append(f"{status}: {method} {path[:60]} {body[:80]!r}")
        conn.close()
        seconds = round(time.monotonic() - started, 1)
    finally:
        running.stop()
    checks = db_checks(cfg.db_path)
    return {"bodies": len(bodies), "seconds": seconds, "status_counts": dict(sorted(statuses.items())),
            "five_xx": five_xx, "dropped_connections": dropped, "examples": examples[:20],
            "integrity_ok": checks["integrity_ok"], "empty_conversations": checks["empty_conversations"]}
