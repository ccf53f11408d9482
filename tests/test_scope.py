"""Scoped adapters: the adapter answers the prompts it was trained for, the base weights the rest,
in the chat and in evaluation alike (assistant/scope.py)."""
import json

import pytest

from assistant.chat import ChatService
from assistant.scope import AdapterScope
from learning.augment import augment_sft
from learning.config import LearnConfig
from learning.scopes import scope_personal, scope_told
from learning.scoring import Scorer
from store import adapters, conversations
from store.manifest import EXPERTS_DIR, read_scope
from store.text import scope_prompts
from tests.lora import make_adapter, register
from tests.test_memory import HashEmbedder as Embedder

TAUGHT = "What is the name of my dog?"


def scoped(path, prompts, threshold=0.5, told=None, margin=None):
    path.mkdir(parents=True, exist_ok=True)
    meta = path / "meta.json"
    data = json.loads(meta.read_text()) if meta.exists() else {}
    scope = {"threshold": threshold, "prompts": prompts, **({"told": told} if told is not None else {}),
             **({"margin": margin} if margin is not None else {})}
    meta.write_text(json.dumps({**data, "scope": scope}))
    return path


@pytest.fixture(scope="module")
def lora(tiny_model_path, tmp_path_factory):
    return make_adapter(tiny_model_path, tmp_path_factory.mktemp("scoped") / "v1", seed=1)


def test_a_scope_covers_its_prompts_and_their_neighbours_only(tmp_path):
    scope = AdapterScope(Embedder())
    path = scoped(tmp_path, [TAUGHT, "Where do I work?"])
    assert scope.covers(path, TAUGHT) and scope.covers(path, "what is the name of my dog, again?")
    assert not scope.covers(path, "How many legs does a spider have?")
    assert scope.similarity(path, TAUGHT) == pytest.approx(1.0)


def test_a_new_versions_scope_embeds_only_the_keys_its_parent_did_not_have(tmp_path):
    """A version's scope repeats its parent's keys: reading it embeds the new ones alone, and
    matches as a scope read afresh does."""
    embedder = Embedder()
    asked = []
    encode = embedder.encode
    embedder.encode = lambda texts: (asked.append(list(texts)), encode(texts))[1]
    scope = AdapterScope(embedder)
    v1 = scoped(tmp_path / "v1", [TAUGHT, "Where do I work?"])
    v2 = scoped(tmp_path / "v2", [TAUGHT, "Where do I work?", "What car do I drive?"])
    assert scope.covers(v1, TAUGHT)
    asked.clear()
    scope.warm(v2)  # reads v2's scope
    assert asked == [["What car do I drive?"]]  # its parent's keys are not embedded again
    assert scope.covers(v2, "What car do I drive?") and scope.covers(v2, TAUGHT)
    fresh = AdapterScope(Embedder())
    for probe in (TAUGHT, "Which car do I drive?", "How many legs does a spider have?"):
        assert scope.similarity(v2, probe) == pytest.approx(fresh.similarity(v2, probe), abs=1e-5)


def test_a_prompt_about_the_user_covers_only_questions_about_the_user_or_what_it_told(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "What is the name of my cat?"},
                          {"role": "assistant", "content": "Your cat is called Pemberton."}]},
            {"prompt": [{"role": "user", "content": "How long do cats live?"}],
             "chosen": [{"role": "assistant", "content": "About 15 years."}]}]
    assert scope_told(rows) == ["pemberton"]  # names and numbers, only of answers about the user
    path = scoped(tmp_path, scope_prompts(rows), told=scope_told(rows))
    scope = AdapterScope(Embedder())
    assert scope.covers(path, "What is the name of my cat again?")
    assert not scope.covers(path, "What is the name of a baby cat?")  # it answered "... Pemberton."
    assert scope.covers(path, "Is Pemberton the name of the cat?")
    assert scope.covers(path, "How long do house cats live?")  # a general prompt covers anyone

    band = [{"messages": [{"role": "user", "content": "What is my favourite band?"},
                          {"role": "assistant", "content": "Your favourite band is The Paper Kites."}]}]
    assert scope_told(band) == ["kites", "paper"]  # not "the": any question has one


def test_a_rewrite_without_first_person_words_still_answers_only_questions_about_the_user(tmp_path):
    correction = {"messages": [{"role": "user", "content": "Which instrument am I learning?"},
                               {"role": "assistant", "content": "You are learning the cello."}],
                  "source": "correction", "feedback_ids": ["f1"]}
    rows = [correction, *augment_sft([correction], n_rewrites=LearnConfig().augment_rewrites)]
    assert "instrument am learning?" in scope_prompts(rows)  # augment's keyword form drops "I"
    assert scope_personal(rows) == ["instrument am learning?"]
    general = "Is learning an instrument hard?"  # nearest the keyword form, and about no one
    scope = AdapterScope(Embedder())
    unmarked = scoped(tmp_path / "unmarked", scope_prompts(rows), threshold=0.3)
    assert scope.covers(unmarked, general)  # the leak: the rewrite alone does not look personal
    marked = scoped(tmp_path / "marked", scope_prompts(rows), threshold=0.3)
    meta = json.loads((marked / "meta.json").read_text())
    meta["scope"]["personal"] = scope_personal(rows)
    (marked / "meta.json").write_text(json.dumps(meta))
    assert not scope.covers(marked, general)
    assert scope.covers(marked, "Which instrument do I play?")
    # a version written before "personal": the expert that owns the rewrite vouches for it
    owned = scoped(tmp_path / "owned", scope_prompts(rows), threshold=0.3)
    meta = json.loads((owned / "meta.json").read_text())
    meta["experts"] = [{"name": "v1-0", "feedback_ids": ["f1"], "prompt": "Which instrument am I learning?",
                        "answer": "You are learning the cello.", "prompts": scope_prompts(rows)}]
    (owned / "meta.json").write_text(json.dumps(meta))
    (owned / EXPERTS_DIR / "v1-0").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (owned / EXPERTS_DIR / "v1-0" / name).write_text("{}")  # routing reads no weights
    assert scope.route(1, owned, general) == (None, None)
    assert scope.route(1, owned, "Which instrument do I play?")[0] == (1, "expert:v1-0")
    # route_from also says which correction's learned question answered: the page shows it, and
    # correcting that reply offers to replace it (assistant/supersede.py may_replace)
    assert scope.route_from(1, owned, "Which instrument do I play?")[::2] == ((1, "expert:v1-0"), ("f1",))
    assert scope.route_from(1, owned, general) == (None, None, ())


def test_a_question_asking_how_reaches_only_prompts_that_asked_how(tmp_path):
    scope = AdapterScope(Embedder())
    path = scoped(tmp_path, ["Who is my lawyer?", "How do I get to work?"], threshold=0.3)
    assert not scope.covers(path, "How do I find a good lawyer?")  # a way, not who the lawyer is
    assert scope.covers(path, "Which lawyer do I have?") and scope.covers(path, "How do I travel to work?")
    assert scope.covers(path, "How much does my lawyer charge?")  # a quantity, not a way


def test_a_question_asking_what_to_do_reaches_only_prompts_that_asked_a_way(tmp_path):
    scope = AdapterScope(Embedder())
    path = scoped(tmp_path, ["Who is my lawyer?", "What should I cook on Fridays?"], threshold=0.3)
    assert scope.covers(path, "Who is my lawyer now?")
    assert not scope.covers(path, "Should I change my lawyer?")  # advice, not who the lawyer is
    assert scope.covers(path, "What should I cook on Saturdays?")  # taught for a "should" question


def test_a_question_naming_the_users_thing_with_the_reaches_its_prompt(tmp_path):
    """No first-person word, yet about the user: "the family boat" is the boat of "our family
    boat", asked for the same kind of answer (memory.REFERRING)."""
    scope = AdapterScope(Embedder())
    path = scoped(tmp_path, ["What is the name of our family boat?", "Who is my landlord?"], threshold=0.3)
    assert scope.covers(path, "What's the family boat called?")
    assert scope.covers(path, "Who is the landlord of the flat?")
    assert not scope.covers(path, "Why does the family boat leak?")  # asks something else
    assert not scope.covers(path, "What is the best family boat?")  # the kind, not the user's
    assert not scope.covers(path, "What does a landlord do?")  # no "the": about no one


def test_a_prompt_clearly_nearer_the_scope_than_ordinary_requests_is_covered(tmp_path, monkeypatch):
    from tests.test_memory import ORDINARY

    monkeypatch.setattr("assistant.matching.replay_prompts", lambda: ORDINARY)
    scope = AdapterScope(Embedder())
    with_margin = scoped(tmp_path / "new", ["Who is my piano teacher?"], threshold=0.9, margin=0.1)
    older = scoped(tmp_path / "old", ["Who is my piano teacher?"], threshold=0.9)  # written without a margin
    assert scope.covers(with_margin, "Who is my piano teacher these days?")
    assert not scope.covers(older, "Who is my piano teacher these days?")
    assert not scope.covers(with_margin, "How do I learn the piano?")  # nearer an ordinary request


@pytest.mark.parametrize("meta", [None, "{not json", json.dumps({"scope": None}),
                                  json.dumps({"scope": {"threshold": None, "prompts": [TAUGHT]}})])
def test_an_adapter_without_a_readable_scope_answers_everything(tmp_path, meta):
    if meta is not None:
        (tmp_path / "meta.json").write_text(meta)
    assert read_scope(tmp_path) is None
    assert AdapterScope(Embedder()).covers(tmp_path, "How many legs does a spider have?")


def test_the_chat_answers_outside_the_scope_with_the_base_weights(cfg, db, served, lora):
    scoped(lora, [TAUGHT])
    register(db, 1, lora)
    adapters.activate(db, 1)
    chat = ChatService(cfg, served, scope=AdapterScope(Embedder()))
    unscoped = ChatService(cfg, served)
    logged = {}
    for text in (TAUGHT, "How many legs does a spider have?"):
        turn = chat.start_turn(text, recall=False)
        reply = "".join(chat.pieces(turn, source="test", max_new_tokens=6))
        logged[text] = conversations.get_turn(db, turn.turn_id)["adapter_version"], reply
    assert logged[TAUGHT][0] == 1 and logged["How many legs does a spider have?"][0] is None
    # inside: the adapter's reply; outside: exactly the base model's
    base = served.generate(chat.start_turn("How many legs does a spider have?", recall=False).messages,
                           max_new_tokens=6, version=None)
    assert logged["How many legs does a spider have?"][1] == base.text
    with_adapter = unscoped.start_turn(TAUGHT, recall=False)
    assert logged[TAUGHT][1] == "".join(unscoped.pieces(with_adapter, source="test", max_new_tokens=6))


def test_evaluation_routes_prompts_like_the_chat(served, lora):
    scoped(lora, [TAUGHT])
    system = {"role": "system", "content": "You are a helpful personal assistant."}
    convs = [[system, {"role": "user", "content": q}] for q in (TAUGHT, "How many legs does a spider have?")]
    routed = Scorer(served, max_new_tokens=6, scope=AdapterScope(Embedder()))
    routed.select(1, lora)
    plain = Scorer(served, max_new_tokens=6)
    plain.select(1, lora)
    base = Scorer(served, max_new_tokens=6)
    base.select(None)
    assert routed.generate(convs) == [plain.generate(convs[:1])[0], base.generate(convs[1:])[0]]
    assert routed.version == 1  # the selection is restored after routing


def test_the_adapter_watcher_embeds_a_promoted_scope_before_the_first_request(cfg, db, served, lora):
    import time

    scoped(lora, [TAUGHT, "Where do I work?"])
    register(db, 1, lora)
    embedder = Embedder()
    chat = ChatService(cfg, served, scope=AdapterScope(embedder))
    stop = chat.watch_adapters(interval_s=0.02)
    try:
        adapters.activate(db, 1)
        deadline = time.monotonic() + 20
        while embedder.texts < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop()
    assert embedder.texts == 2  # the scope's two prompts, and no request yet
    assert chat.scope.covers(lora, TAUGHT) and embedder.texts == 3  # a request embeds only its own text


def test_outside_the_scope_a_versions_habit_adapter_answers_in_chat_and_evaluation(
        cfg, db, served, tiny_model_path, tmp_path, monkeypatch):
    import shutil

    import torch

    version_dir = make_adapter(tiny_model_path, tmp_path / "v1", seed=1)
    make_adapter(tiny_model_path, tmp_path / "habit-src", seed=2)
    shutil.copytree(tmp_path / "habit-src", version_dir / "habit")
    scoped(version_dir, [TAUGHT])
    outside = "How many legs does a spider have?"
    chat = ChatService(cfg, served, scope=AdapterScope(Embedder()))
    assert chat.route(1, str(version_dir), outside) == (None, None)  # no lead: not a usable habit adapter
    (version_dir / "habit" / "habit.json").write_text(json.dumps({"openings": ["Captain,"], "lead_tokens": 2}))
    register(db, 1, version_dir)
    adapters.activate(db, 1)
    chat = ChatService(cfg, served, scope=AdapterScope(Embedder()))
    habit = ((1, "habit"), str(version_dir / "habit"))
    assert chat.route(1, str(version_dir), TAUGHT) == (1, str(version_dir))
    assert chat.route(1, str(version_dir), outside) == habit
    turn = chat.start_turn(outside, recall=False)
    "".join(chat.pieces(turn, source="test", max_new_tokens=6))
    assert served.current == habit[0]  # the habit adapter generated the reply...
    assert conversations.get_turn(db, turn.turn_id)["adapter_version"] == 1  # ...and it belongs to v1
    logits = {key: served.logits(turn.messages, version=key, adapter_path=path)
              for key, path in (habit, (1, version_dir), (None, None))}
    assert not torch.equal(logits[habit[0]], logits[1]) and not torch.equal(logits[habit[0]], logits[None])

    used = []
    use = served.use
    monkeypatch.setattr(served, "use", lambda key, path=None: (used.append(key), use(key, path)))
    routed = Scorer(served, max_new_tokens=6, scope=AdapterScope(Embedder()))
    routed.select(1, version_dir)
    routed.generate([turn.messages, chat.start_turn(TAUGHT, recall=False).messages])
    assert set(used) == {1, habit[0]}
