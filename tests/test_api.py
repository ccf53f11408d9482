"""The OpenAI-compatible API, driven by the `openai` client against a real server on 127.0.0.1."""
import json
import threading
import time

import httpx
import openai
import pytest

from assistant.runtime import Runtime
from assistant.server import start_server
from store import adapters, conversations, feedback
from tests.tiny_server import serving, tiny_runtime


@pytest.fixture(scope="module")
def runtime(tmp_path_factory, tiny_model_path, tiny_served):
    return tiny_runtime(tmp_path_factory.mktemp("api-home"), tiny_model_path, tiny_served, max_new_tokens=8)


@pytest.fixture(scope="module")
def server(runtime):
    yield from serving(runtime)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="anything", max_retries=0)


def ask(client, text="What is the name of my dog?", **kw):
    return client.chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": text}], max_tokens=6, **kw)


def test_completion_is_the_logged_turn(client, runtime):
    r = ask(client)
    row = conversations.get_turn(runtime.db, r.id)
    assert r.choices[0].message.content == row["reply"]
    assert r.usage.prompt_tokens == row["prompt_tokens"] > 0
    assert r.usage.completion_tokens == row["completion_tokens"] > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # logged exactly like a UI turn: same columns filled, only the source differs
    assert row["source"] == "api" and row["user_message"] == "What is the name of my dog?"
    assert row["duration_ms"] > 0 and row["ttft_ms"] is not None and row["adapter_version"] is None
    assert [m["role"] for m in json.loads(row["messages_json"])] == ["system", "user"]
    assert json.loads(row["params_json"])["max_new_tokens"] == 6
    assert r.model_extra["conversation_id"] == row["conversation_id"]
    # what answered: the base model (no version), no recalled note
    assert (r.model_extra["adapter_version"], r.model_extra["answered_by"], r.model_extra["answered_from"],
            r.model_extra["recalled"]) == (None, None, [], 0)


def test_streamed_completion_is_the_logged_turn(client, runtime):
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert {c.id for c in chunks} == {chunks[0].id}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    row = conversations.get_turn(runtime.db, chunks[0].id)
    assert text == row["reply"] and row["completion_tokens"] > 0
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == row["completion_tokens"]
    assert chunks[-1].usage.prompt_tokens == row["prompt_tokens"]


def test_a_client_that_leaves_mid_stream_stops_generation_and_the_turn_is_kept(client, runtime):
    stream = client.chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "Tell me a long story"}],
        max_tokens=256, stream=True)
    first = next(iter(stream))
    stream.close()  # hang up after the first chunk
    deadline, rows = time.monotonic() + 30, []
    while not rows and time.monotonic() < deadline:  # saved as "interrupted" from the start
        time.sleep(0.1)
        rows = list(runtime.db["turns"].rows_where("id = ? AND finish_reason != 'interrupted'", [first.id]))
    row = rows[0]  # what was said before the client left is logged
    if row["finish_reason"] == "abandoned":  # the usual case: generation stopped early
        assert 0 < row["completion_tokens"] < 256 and row["duration_ms"] > 0
    else:  # a very fast machine can finish all 256 tokens before noticing
        assert row["completion_tokens"] == 256


def test_models_list(client):
    assert [m.id for m in client.models.list()] == ["assistant"]


def test_client_messages_become_system_prompt_and_history(client, runtime):
    r = client.chat.completions.create(model="assistant", max_tokens=3, messages=[
        {"role": "system", "content": "Answer like a pirate."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Ahoy."},
        {"role": "user", "content": [{"type": "text", "text": "Where do I work?"}]}])
    sent = json.loads(conversations.get_turn(runtime.db, r.id)["messages_json"])
    assert sent == [{"role": "system", "content": "Answer like a pirate."},
                    {"role": "user", "content": "Hello there"},
                    {"role": "assistant", "content": "Ahoy."},
                    {"role": "user", "content": "Where do I work?"}]


def test_conversation_id_continues_a_stored_conversation(client, runtime):
    first = ask(client, "Hello there")
    cid = first.model_extra["conversation_id"]
    second = ask(client, "How are you?", extra_body={"conversation_id": cid, "recall": False})
    row = conversations.get_turn(runtime.db, second.id)
    assert row["conversation_id"] == cid
    sent = json.loads(row["messages_json"])
    assert [m["content"] for m in sent[1:]] == ["Hello there", first.choices[0].message.content,
                                                "How are you?"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        ask(client, extra_body={"conversation_id": "NO-SUCH-CONVERSATION"})


def test_each_kind_of_feedback_lands_in_the_database(client, runtime):
    turn_id = ask(client).id

    def send(**body):
        return client.post("/feedback", cast_to=object, body={"turn_id": turn_id, **body})

    assert send(rating="up")["kinds"] == ["up"]
    assert send(rating="down", reason="too vague")["kinds"] == ["down"]
    out = send(rating="down", correction="Your dog is called Biscuit.")
    assert out["kinds"] == ["down", "correction"]  # a correction also counts as a 'down' vote
    rows = feedback.feedback_for_turn(runtime.db, turn_id)
    assert [(f["kind"], f["reason"], f["correction"]) for f in rows] == [
        ("up", None, None), ("down", "too vague", None), ("down", None, None),
        ("correction", None, "Your dog is called Biscuit.")]
    assert [f["id"] for f in rows[2:]] == out["feedback_ids"]


def test_bad_feedback_is_refused_with_a_clear_error(client, runtime):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.post("/feedback", cast_to=object, body={"turn_id": "01NOSUCHTURN", "rating": "up"})
    turn_id = ask(client).id
    for body, needle in [({"rating": "meh"}, "rating"), ({"rating": "up", "correction": "x"}, "'down'"),
                         ({"rating": "down", "correction": "   "}, "correction"),
                         ({"rating": "up", "ratng": 1}, "ratng")]:
        with pytest.raises(openai.BadRequestError, match=needle):
            client.post("/feedback", cast_to=object, body={"turn_id": turn_id, **body})
    assert feedback.feedback_for_turn(runtime.db, turn_id) == []


def test_malformed_json_gets_a_400_in_openai_shape(server, runtime):
    before = runtime.db["turns"].count
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"messages": [',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_json" and "Malformed JSON" in err["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "assistant"})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    assert runtime.db["turns"].count == before


def test_empty_or_misplaced_message_is_refused(client, runtime):
    before = runtime.db["turns"].count
    with pytest.raises(openai.BadRequestError, match="empty"):
        ask(client, "   ")
    with pytest.raises(openai.BadRequestError, match="last message"):
        client.chat.completions.create(model="assistant", messages=[
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert runtime.db["turns"].count == before


def test_overlong_message_is_cut_with_a_notice(server, runtime):
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "dog " * 5000}], "max_tokens": 3})
    assert r.status_code == 200 and r.headers["x-assistant-truncated"] == "1"
    body = r.json()
    assert body["truncated"] is True and "too long" in body["notice"]
    assert conversations.get_turn(runtime.db, body["id"])["truncated"] == 1


def test_a_reply_budget_within_the_window_is_cut_to_leave_the_prompt_room(client, runtime):
    r = client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "Hi"}],
                                       max_completion_tokens=500, temperature=2)
    params = json.loads(conversations.get_turn(runtime.db, r.id)["params_json"])
    assert params == {"max_new_tokens": 256, "temperature": 2.0}  # half the tiny 512 window
    with pytest.raises(openai.BadRequestError, match="temperature"):  # out of range: refused
        client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "Hi"}],
                                       temperature=50)


def test_two_clients_at_once_both_get_answers(server, runtime):
    results, errors = {}, []

    def worker(name, stream):
        try:
            c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            if stream:
                chunks = list(ask(c, f"Hello from {name}", stream=True))
                results[name] = (chunks[0].id, "".join(x.choices[0].delta.content or "" for x in chunks))
            else:
                r = ask(c, f"Hello from {name}")
                results[name] = (r.id, r.choices[0].message.content)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n, s)) for n, s in (("a", True), ("b", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and set(results) == {"a", "b"}
    for name, (turn_id, text) in results.items():
        row = conversations.get_turn(runtime.db, turn_id)
        assert row["user_message"] == f"Hello from {name}" and row["reply"] == text


def test_api_key_is_enforced_when_configured(server, runtime):
    runtime.cfg.api_key = "s3cret"
    try:
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="API key"):
            bad.models.list()
        with pytest.raises(openai.AuthenticationError):
            ask(bad)
        assert httpx.post(server.url + "/v1/feedback", json={}).status_code == 401
        good = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        assert ask(good).choices[0].message.content is not None
    finally:
        runtime.cfg.api_key = None


def _make_adapter(base_path, out_dir, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out_dir)
    return out_dir


def test_adapters_listed_activated_and_corrupt_ones_refused(cfg, served, tiny_model_path):
    rt = Runtime.create(cfg, model=served, with_memory=False)
    db = rt.db
    good = _make_adapter(tiny_model_path, cfg.adapters_dir / "v1", seed=1)
    adapters.register_candidate(db, 1, str(good), None, {}, [], 0, 0)
    corrupt = cfg.adapters_dir / "v2"
    corrupt.mkdir(parents=True)
    (corrupt / "adapter_config.json").write_text("{not json")
    (corrupt / "adapter_model.safetensors").write_bytes(b"garbage")
    adapters.register_candidate(db, 2, str(corrupt), 1, {}, [], 0, 0)
    running = start_server(rt, ui=False)
    try:
        url = running.url + "/v1/adapters"
        listed = httpx.get(url).json()
        assert listed["active"] is None and [a["version"] for a in listed["data"]] == [1, 2]
        assert httpx.post(url + "/9/activate").status_code == 404
        r = httpx.post(url + "/2/activate")
        assert r.status_code == 409 and "not valid JSON" in r.json()["error"]["message"]
        assert adapters.active_version(db) is None
        r = httpx.post(url + "/1/activate")  # never judged by a gate: the override is needed
        assert r.status_code == 409 and "never judged" in r.json()["error"]["message"]
        r = httpx.post(url + "/1/activate", json={"force": True})
        assert r.status_code == 200 and r.json()["active"] == 1
        c = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        r = ask(c)
        assert conversations.get_turn(db, r.id)["adapter_version"] == 1  # hot swap, no restart
        assert (r.model_extra["adapter_version"], r.model_extra["answered_by"]) == (1, "adapter")
        chunks = list(ask(c, stream=True))  # a stream says it in the chunk with its finish_reason
        assert [(x.model_extra["adapter_version"], x.model_extra["answered_by"]) for x in chunks
                if x.choices and x.choices[0].finish_reason] == [(1, "adapter")]
        assert httpx.post(url + "/base/activate").json()["active"] is None
        assert conversations.get_turn(db, ask(c).id)["adapter_version"] is None
        # a version the gate failed needs force; a version that served before is a rollback
        adapters.register_candidate(db, 3, str(_make_adapter(tiny_model_path, cfg.adapters_dir / "v3", 3)),
                                    1, {}, [], 0, 0)
        adapters.record_decision(db, "D3", 3, 1, False, ["forgot the canaries"], {})
        r = httpx.post(url + "/3/activate")
        assert r.status_code == 409 and "forgot the canaries" in r.json()["error"]["message"]
        assert httpx.post(url + "/3/activate", json={"force": True}).json()["active"] == 3
        assert httpx.post(url + "/1/activate").json()["active"] == 1
        assert httpx.post(url + "/x/activate").status_code == 400
        # a version whose weights were deleted to save disk is listed, but cannot serve again
        from learning.pruning import prune_weights

        assert prune_weights(db, keep=0) == [3]
        assert [a["weights_deleted"] for a in httpx.get(url).json()["data"]] == [False, False, True]
        r = httpx.post(url + "/3/activate")
        assert r.status_code == 410 and r.json()["error"]["code"] == "adapter_weights_deleted"
        assert "deleted to save disk" in r.json()["error"]["message"] and adapters.active_version(db) == 1
    finally:
        running.stop()


def test_the_web_ui_is_served_at_the_root(server):
    page = httpx.get(server.url + "/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "gradio" in page.text.lower()


def test_the_web_ui_asks_for_the_password_when_one_is_set(cfg, tiny_served):
    cfg.ui_password = "open sesame"
    running = start_server(Runtime.create(cfg, model=tiny_served, with_memory=False))
    try:
        login = running.url + "/login"
        assert httpx.get(running.url + "/config", timeout=30).status_code == 401
        assert httpx.post(login, data={"username": "me", "password": "wrong"}).status_code == 400
        ok = httpx.post(login, data={"username": "me", "password": "open sesame"})
        assert ok.status_code == 200 and ok.json() == {"success": True}
        assert httpx.get(running.url + "/v1/models").status_code == 200  # the API has its own key
    finally:
        running.stop()


def test_a_correction_says_what_it_replaced_and_the_list_shows_it_superseded(server, client):
    """The same question corrected twice: the second replaces the first (store/feedback.py), the
    feedback answer names it and GET /v1/corrections lists it as superseded by the newer one."""
    first = ask(client, "Which train do I take to work?")
    old = httpx.post(server.url + "/v1/feedback", json={"turn_id": first.id, "rating": "down",
                                                       "correction": "You take the 7:42 to Harbour Road."}).json()
    second = ask(client, "which train do I take to work")
    new = httpx.post(server.url + "/v1/feedback", json={"turn_id": second.id, "rating": "down",
                                                       "correction": "You take the 8:05 now."}).json()
    assert old["supersedes"] == [] and new["supersedes"] == [old["feedback_ids"][-1]]
    listed = {c["feedback_id"]: c for c in httpx.get(server.url + "/v1/corrections").json()["data"]}
    replaced = listed[old["feedback_ids"][-1]]
    assert replaced["state"] == "superseded" and replaced["superseded_by"] == new["feedback_ids"][-1]
    assert "8:05" in replaced["detail"] and listed[new["feedback_ids"][-1]]["state"] == "pending"


def test_a_conversation_is_marked_dont_learn_or_deleted_through_the_api(server, client, runtime):
    r = ask(client, "What is my locker code?")
    conv = conversations.get_turn(runtime.db, r.id)["conversation_id"]
    fid = httpx.post(server.url + "/v1/feedback", json={"turn_id": r.id, "rating": "down",
                                                      "correction": "Your locker code is 4821."}).json()["feedback_ids"][-1]
    assert httpx.patch(server.url + f"/v1/conversations/{conv}", json={"no_learn": True}).json()["no_learn"] is True
    assert conversations.get_conversation(runtime.db, conv)["no_learn"] == 1
    assert feedback.taken_back(runtime.db, [fid]) == [fid]
    assert httpx.patch(server.url + f"/v1/conversations/{conv}", json={"no_learn": "maybe"}).status_code == 400
    assert httpx.delete(server.url + f"/v1/conversations/{conv}").json()["deleted"] is True
    missing = httpx.delete(server.url + f"/v1/conversations/{conv}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "conversation_not_found"


def test_an_undecided_replacement_is_offered_and_the_user_confirms_it(server, client, runtime, monkeypatch):
    """Supersession by meaning cannot decide (one answer token far less likely after the other
    question: not one fact, yet close): the feedback answer offers the earlier correction under
    "may_replace"; POST /v1/corrections/{id}/replaces records it as supersession would, and the list
    shows it superseded. An unknown id is a 404; a later or replaced correction a 400."""
    from tests.test_supersede import DESK, DIAL, undecided_superseder

    def correct(question, answer):
        turn = ask(client, question)
        return httpx.post(server.url + "/v1/feedback", json={"turn_id": turn.id, "rating": "down",
                                                           "correction": answer}).json()

    monkeypatch.setattr(runtime, "superseder", undecided_superseder())
    old, new = correct(*DESK), correct(*DIAL)
    old_id, new_id = old["feedback_ids"][-1], new["feedback_ids"][-1]
    assert new["supersedes"] == [] and new["may_replace"] == [
        {"feedback_id": old_id, "prompt": DESK[0], "correction": DESK[1]}]

    url = server.url + f"/v1/corrections/{new_id}/replaces"
    assert httpx.post(url, json={"feedback_ids": ["f-unknown"]}).status_code == 404
    assert httpx.post(server.url + "/v1/corrections/f-unknown/replaces", json={"feedback_ids": [old_id]}).status_code == 404
    backwards = httpx.post(server.url + f"/v1/corrections/{old_id}/replaces", json={"feedback_ids": [new_id]})
    assert backwards.status_code == 400 and backwards.json()["error"]["code"] == "invalid_replacement"
    assert httpx.post(url, json={"feedback_ids": []}).status_code == 400

    confirmed = httpx.post(url, json={"feedback_ids": [old_id]})
    assert confirmed.status_code == 200 and confirmed.json()["supersedes"] == [old_id]
    listed = {c["feedback_id"]: c for c in httpx.get(server.url + "/v1/corrections").json()["data"]}
    assert listed[old_id]["state"] == "superseded" and listed[old_id]["superseded_by"] == new_id
    assert httpx.post(url, json={"feedback_ids": [old_id]}).status_code == 400  # replaced already: not live
