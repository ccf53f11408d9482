"""Ill-formed input, faults and probing against a real server on 127.0.0.1: never a 5xx for a bad
request, every error in OpenAI's shape, a full disk named as such, keep-alive connections kept."""
import errno
import http.client
import json
import sqlite3

import httpx
import pytest

from assistant.config import Config
from assistant.runtime import Runtime
from assistant.server import start_server
from tests.tiny_server import serving, tiny_runtime


@pytest.fixture(scope="module")
def runtime(tmp_path_factory, tiny_model_path, tiny_served):
    return tiny_runtime(tmp_path_factory.mktemp("hardening-home"), tiny_model_path, tiny_served, max_new_tokens=4)


@pytest.fixture(scope="module")
def server(runtime):  # with the web UI: unknown paths must not fall through to it
    yield from serving(runtime)


def chat_body(content="Hi", **extra) -> dict:
    return {"model": "assistant", "max_tokens": 2, "messages": [{"role": "user", "content": content}], **extra}


def assert_openai_error(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code", "param"}
    for w in words:
        assert w in err["message"], err["message"]
    return err


# Raw JSON: Python's json would refuse to write a lone surrogate or NaN for us.
ILL_FORMED = {
    "lone surrogate in the user message": (
        '{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}', "surrogate"),
    "lone surrogate in a system message": (
        '{"messages": [{"role": "system", "content": "\\udfff"}, {"role": "user", "content": "hi"}]}',
        "surrogate"),
    "lone surrogate in a text part": (
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}', "surrogate"),
    "lone surrogate in the conversation id": (
        '{"conversation_id": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "surrogate"),
    "NUL in the message": ('{"messages": [{"role": "user", "content": "a\\u0000b"}]}', "NUL"),
    "temperature below 0": ('{"temperature": -3, "messages": [{"role": "user", "content": "hi"}]}',
                            "temperature"),
    "temperature above 2": ('{"temperature": 2.5, "messages": [{"role": "user", "content": "hi"}]}',
                            "temperature"),
    "temperature NaN": ('{"temperature": NaN, "messages": [{"role": "user", "content": "hi"}]}', "temperature"),
    "temperature Infinity": ('{"temperature": Infinity, "messages": [{"role": "user", "content": "hi"}]}',
                             "temperature"),
    "max_tokens 0": ('{"max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}', "max_tokens"),
    "max_tokens -1": ('{"max_tokens": -1, "messages": [{"role": "user", "content": "hi"}]}', "max_tokens"),
    "max_tokens past the window": ('{"max_tokens": 1000000, "messages": [{"role": "user", "content": "hi"}]}',
                                   "context window"),
    "max_completion_tokens huge": (
        '{"max_completion_tokens": 1e400, "messages": [{"role": "user", "content": "hi"}]}', "max_completion"),
    "a text part that is not text": (
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}', "messages"),
    "messages not a list": ('{"messages": "hello"}', "messages"),
    "a body that is a list": ('[1, 2]', "body"),
    "a role that is not a string": ('{"messages": [{"role": 7, "content": "hi"}]}', "role"),
}


@pytest.mark.parametrize("name", list(ILL_FORMED))
def test_ill_formed_chat_bodies_get_a_400_saying_what_is_wrong(server, runtime, name):
    body, word = ILL_FORMED[name]
    before = runtime.db["turns"].count
    r = httpx.post(server.url + "/v1/chat/completions", content=body.encode(),
                   headers={"content-type": "application/json"}, timeout=30)
    assert_openai_error(r, 400, word)
    assert runtime.db["turns"].count == before  # nothing half-stored


def test_ill_formed_feedback_gets_a_400(server):
    for body in ('{"turn_id": "\\ud800", "rating": "up"}', '{"turn_id": "t", "rating": "down", "reason": "a\\u0000"}'):
        r = httpx.post(server.url + "/v1/feedback", content=body.encode(),
                       headers={"content-type": "application/json"})
        assert_openai_error(r, 400)


def test_an_unknown_model_is_openais_404_and_the_served_names_answer(server, runtime):
    r = httpx.post(server.url + "/v1/chat/completions", json=chat_body(model="gpt-4o"), timeout=30)
    err = assert_openai_error(r, 404, "gpt-4o", "/v1/models")
    assert err["code"] == "model_not_found" and err["param"] == "model"
    listed = httpx.get(server.url + "/v1/models").json()["data"][0]
    for model in (listed["id"], listed["base_model"]):
        assert httpx.post(server.url + "/v1/chat/completions", json=chat_body(model=model), timeout=30).status_code == 200
    no_model = chat_body()
    del no_model["model"]
    assert httpx.post(server.url + "/v1/chat/completions", json=no_model, timeout=30).status_code == 200


@pytest.mark.parametrize("version", ["١", "+1", "%201", "1.0", "-1", str(2**63), "9" * 5000])
def test_version_ids_are_ascii_digits_in_sqlites_range(server, version):
    r = httpx.post(f"{server.url}/v1/adapters/{version}/activate")
    assert_openai_error(r, 400, "digits 0-9")


def test_the_largest_version_id_is_simply_not_found(server):
    r = httpx.post(f"{server.url}/v1/adapters/{2**63 - 1}/activate")
    assert assert_openai_error(r, 404)["code"] == "adapter_not_found"


def test_wrong_methods_and_unknown_paths_answer_in_openai_shape(server):
    err = assert_openai_error(httpx.get(server.url + "/v1/chat/completions"), 405, "POST")
    assert err["code"] == "method_not_allowed"
    assert assert_openai_error(httpx.get(server.url + "/v1/nothing/here"), 404, "/v1/nothing/here")["code"] \
        == "unknown_route"
    assert_openai_error(httpx.delete(server.url + "/v1/models"), 405, "GET")
    # outside /v1 the web UI's app answers: in the same shape (a client with a wrong base URL)
    assert_openai_error(httpx.post(server.url + "/v2/chat/completions"), 404, "/v2/chat/completions", "/v1")
    assert_openai_error(httpx.delete(server.url + "/"), 405)


def test_a_full_disk_is_a_507_naming_the_disk_and_the_server_keeps_serving(server, runtime, monkeypatch):
    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(runtime.chat, "start_turn", full)
    r = httpx.post(server.url + "/v1/chat/completions", json=chat_body(), timeout=30)
    err = assert_openai_error(r, 507, "disk", str(runtime.cfg.home))
    assert err["code"] == "disk_full"
    monkeypatch.undo()
    assert httpx.post(server.url + "/v1/chat/completions", json=chat_body(), timeout=30).status_code == 200


def test_a_full_disk_mid_stream_ends_the_stream_with_an_error_and_done(server, runtime, monkeypatch):
    real_pieces = runtime.chat.pieces

    def pieces(turn, **kw):
        def gen():
            yield from real_pieces(turn, **kw)
            raise OSError(errno.ENOSPC, "No space left on device")
        return gen()

    monkeypatch.setattr(runtime.chat, "pieces", pieces)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=chat_body(stream=True), timeout=30) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "disk_full" and str(runtime.cfg.home) in error["message"]


def test_the_keep_alive_connection_stays_usable_after_errors(server, runtime, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("a bug")

    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    headers = {"content-type": "application/json"}

    def request(method, path, body=None):
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        r = conn.getresponse()
        r.read()
        return r.status, r.getheader("connection")

    try:
        assert request("GET", "/v1/models")[0] == 200
        sock = conn.sock
        answers = [request("POST", "/v1/chat/completions", {"messages": []}),
                   request("GET", "/v1/chat/completions"),
                   request("POST", "/v1/adapters/+1/activate")]
        monkeypatch.setattr(runtime.chat, "start_turn", broken)
        answers.append(request("POST", "/v1/chat/completions", chat_body()))
        monkeypatch.undo()
        answers += [request("POST", "/v1/chat/completions", chat_body()) for _ in range(3)]
        assert [s for s, _ in answers] == [400, 405, 400, 500, 200, 200, 200]
        assert all(c != "close" for _, c in answers)
        assert conn.sock is sock  # the same connection all along: never closed and reopened
    finally:
        conn.close()


def test_the_api_docs_need_the_key_when_one_is_set(server, runtime):
    assert httpx.get(server.url + "/v1/openapi.json").json()["paths"]  # no key set: open, as the API
    runtime.cfg.api_key = "s3cret"
    try:
        for path in ("/v1/docs", "/v1/openapi.json"):
            assert_openai_error(httpx.get(server.url + path), 401, "API key")
        r = httpx.get(server.url + "/v1/openapi.json", headers={"Authorization": "Bearer s3cret"})
        assert "/v1/chat/completions" in r.json()["paths"] and "/v1/{path}" not in r.json()["paths"]
        r = httpx.get(server.url + "/v1/docs", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and "swagger" in r.text.lower()
    finally:
        runtime.cfg.api_key = None
    for path in ("/docs", "/openapi.json", "/redoc"):  # FastAPI's own, unguarded ones are gone (the
        assert "/v1/chat/completions" not in httpx.get(server.url + path).text  # UI's are its own)


def test_gradio_analytics_are_off(server):
    import os

    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"  # set before gradio is imported
    assert httpx.get(server.url + "/config", timeout=30).json()["analytics_enabled"] is False


def test_wrong_passwords_are_limited_per_client(cfg, tiny_served):
    cfg.ui_password = "open sesame"
    running = start_server(Runtime.create(cfg, model=tiny_served, with_memory=False))
    login = running.url + "/login"
    try:
        for guess in ["wrong"] * 4 + ["né"]:  # a non-ASCII guess is just wrong, not a 500
            assert httpx.post(login, data={"username": "me", "password": guess}).status_code == 400
        for password in ("wrong", "open sesame"):  # the sixth try within the minute, even the right one
            r = httpx.post(login, data={"username": "me", "password": password})
            assert r.status_code == 429 and "try again in" in r.json()["detail"]
            assert 0 < int(r.headers["retry-after"]) <= 60
    finally:
        running.stop()


def test_the_login_limit_lifts_after_its_window_and_a_success_clears_it():
    from assistant.login_limit import LoginLimit

    now = [0.0]
    limit = LoginLimit(app=None, max_failures=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert limit.retry_after("a") == 0
        limit.record("a", accepted=False)
        now[0] += 1
    assert limit.retry_after("a") == 57 and limit.retry_after("b") == 0  # per client
    now[0] = 60.5  # the first failure is a minute old: one more try
    assert limit.retry_after("a") == 0
    limit.record("a", accepted=True)
    assert "a" not in limit.failures


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs, where the machine lets the tests mount one (root, no container veto)."""
    import os
    import subprocess

    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small filesystem here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_really_full_disk_is_a_507_and_serving_resumes_once_space_is_freed(small_disk, tiny_model_path,
                                                                              tiny_served):
    cfg = Config(home=small_disk / "home", model=str(tiny_model_path), default_max_new_tokens=2)
    running = start_server(Runtime.create(cfg, model=tiny_served, with_memory=False), ui=False)
    url = running.url + "/v1/chat/completions"
    try:
        assert httpx.post(url, json=chat_body(), timeout=30).status_code == 200
        filler = small_disk / "filler"
        with open(filler, "wb", buffering=0) as f:  # take every free block
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        statuses = []
        for i in range(5):
            r = httpx.post(url, json=chat_body("x" * 20000 + str(i)), timeout=30)
            statuses.append(r.status_code)
            if r.status_code == 507:
                assert_openai_error(r, 507, "disk", str(cfg.home))
                break
        assert statuses[-1] == 507 and 500 not in statuses, statuses
        filler.unlink()
        assert httpx.post(url, json=chat_body(), timeout=30).status_code == 200
    finally:
        running.stop()
