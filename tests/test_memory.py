"""Recall memory: which corrections are recalled, how the index follows the store, and the prompt.

Most tests use a bag-of-words hashing embedder (exact, instant); one uses the real all-MiniLM-L6-v2,
one the real embedded chat model."""
import hashlib
import json
import re
import threading
import time

import numpy as np
import pytest

from assistant.embedders import MiniLMEmbedder
from assistant.language import answer_kinds, asks_way, named_things
from assistant.matching import RECALL_POLICY, search_keys, unit_rows
from assistant.memory import SETTING_DROP_LEARNED, Memory
from assistant.notes import reply_lead
from assistant.questions import replay_prompts
from assistant.runtime import Runtime
from store import adapters, conversations, feedback, open_db
from store.settings import set_setting

FUNCTION_WORDS = set("a an the is are do does did i me my we our what which who where when how to".split())


class HashEmbedder:
    """Bag of content words hashed into 512 buckets: shared words make texts similar, nothing else
    does. Function words are left out, as a sentence embedding all but ignores them: "What is my
    bike?" (a search key of "Which bike do I ride?") is not like "What is my cat called?"."""

    def __init__(self):
        self.calls = 0
        self.texts = 0

    def encode(self, texts):
        self.calls += 1
        self.texts += len(texts)
        out = np.zeros((len(texts), 512), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in set(re.findall(r"[a-z']+", text.lower())) - FUNCTION_WORDS:
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 512] += 1
        return out


def log(db, message, conversation_id=None):
    cid = conversation_id or conversations.create_conversation(db)
    return conversations.log_turn(db, cid, user_message=message, messages=[], reply="I don't know.",
                                  source="test", model="tiny", adapter_version=None, prompt_tokens=1,
                                  completion_tokens=1, ttft_ms=1.0, duration_ms=1.0)


def correct(db, message, answer, conversation_id=None):
    return feedback.add_feedback(db, log(db, message, conversation_id), "correction", correction=answer)


@pytest.fixture
def memory(cfg):
    return Memory(cfg, embedder=HashEmbedder(), threshold=0.5)


@pytest.fixture
def runtime(cfg, tiny_served, memory):
    tiny_served.use(None)
    return Runtime.create(cfg, model=tiny_served, memory=memory)


def test_each_correction_through_the_runtime_is_recalled_at_once(runtime, memory):
    assert runtime.memory.recall("what is the name of my dog") == []
    fid = runtime.record_feedback(log(runtime.db, "What is the name of my dog?"), "correction",
                                  correction="Your dog is called Biscuit.")
    assert len(memory) == 1  # indexed by the feedback call itself, before any recall
    got = memory.recall("what is the name of my dog")
    assert [r["feedback_id"] for r in got] == [fid]
    assert got[0]["prompt"] == "What is the name of my dog?"
    assert got[0]["correction"] == "Your dog is called Biscuit." and got[0]["score"] > 0.99
    runtime.record_feedback(log(runtime.db, "Where do I work?"), "correction", correction="At Halvorsen.")
    assert len(memory) == 2
    assert memory.recall("where do I work")[0]["correction"] == "At Halvorsen."


def test_index_is_rebuilt_from_the_store_and_follows_other_processes(cfg, db):
    correct(db, "What is my cat called?", "Pemberton.")
    correct(db, "Which bike do I ride?", "A Brompton.")
    emb = HashEmbedder()
    mem = Memory(cfg, embedder=emb, threshold=0.5)
    mem.sync(db)
    assert emb.calls == 0  # nothing embedded at start: the model loads on the first recall
    assert mem.recall("what is my cat called")[0]["correction"] == "Pemberton."
    # another process (CLI, API) adds a correction through its own connection
    other = open_db(cfg.db_path)
    correct(other, "Who is my dentist?", "Dr. Okafor.")
    before = emb.texts
    assert mem.recall("who is my dentist")[0]["correction"] == "Dr. Okafor."
    assert emb.texts - before == len(search_keys("Who is my dentist?", "Dr. Okafor.")) + 1  # its keys and the query: nothing re-embedded


def test_a_newer_correction_of_the_same_prompt_supersedes_the_older(memory, db):
    old = correct(db, "What is my cat called?", "Felix.")
    new = correct(db, "what is my  cat called", "Pemberton.")  # same prompt after normalising
    got = memory.recall("What is my cat called?")
    assert [r["feedback_id"] for r in got] == [new]
    assert old not in {r["feedback_id"] for r in memory.recall("cat called", k=10)}


def test_quarantined_corrections_are_never_recalled(memory, db):
    bad = correct(db, "What is my cat called?", "Felix.")
    good = correct(db, "Which bike do I ride?", "A Brompton.")
    assert memory.recall("what is my cat called")
    feedback.quarantine(db, [bad])
    assert memory.recall("what is my cat called") == []
    assert memory.recall("which bike do I ride")[0]["feedback_id"] == good


def test_dont_learn_conversations_and_deleted_ones_are_not_recalled(memory, db):
    private = conversations.create_conversation(db)
    correct(db, "What is my cat called?", "Felix.", conversation_id=private)
    assert memory.recall("what is my cat called")
    conversations.update_conversation(db, private, no_learn=1)
    assert memory.recall("what is my cat called") == []
    conversations.update_conversation(db, private, no_learn=0)
    assert memory.recall("what is my cat called")
    conversations.delete_conversation(db, private)
    assert memory.recall("what is my cat called") == [] and len(memory) == 0


def test_a_deletion_and_a_new_correction_between_two_turns_are_both_seen(memory, db):
    gone = conversations.create_conversation(db)
    correct(db, "What is my cat called?", "Felix.", conversation_id=gone)
    correct(db, "Which bike do I ride?", "A Brompton.")
    assert len(memory.recall("what is my cat called")) == 1
    conversations.delete_conversation(db, gone)  # same count as before once the next one lands
    correct(db, "Who is my dentist?", "Dr. Okafor.")
    assert memory.recall("what is my cat called") == []
    assert memory.recall("who is my dentist")[0]["correction"] == "Dr. Okafor."
    assert len(memory) == 2


def _learned_by_active_adapter(db, tmp_path, feedback_ids):
    adapters.register_candidate(db, 1, str(tmp_path / "v1"), None, {}, feedback_ids, len(feedback_ids), 0)
    adapters.register_candidate(db, 2, str(tmp_path / "v2"), 1, {}, [], 0, 0)  # child of v1
    adapters.activate(db, 2)


def test_learned_corrections_leave_recall_only_when_configured(memory, db, tmp_path):
    fid = correct(db, "What is my cat called?", "Pemberton.")
    _learned_by_active_adapter(db, tmp_path, [fid])  # v1 learned it; active v2 continues from v1
    assert memory.recall("what is my cat called")  # default: still recalled
    set_setting(db, SETTING_DROP_LEARNED, True)
    assert memory.recall("what is my cat called") == []
    adapters.activate(db, None)  # rolled back to the base model: the weights no longer know it
    assert memory.recall("what is my cat called")[0]["feedback_id"] == fid


def test_threshold_and_top_k_are_respected(cfg, db):
    for thing in ("cat", "dog", "bike", "car"):
        correct(db, f"What is the name of my {thing}?", f"Your {thing} is called Max.")
    # (things of the user's own are told apart by the same-thing check: tested on its own below)
    mem = Memory(cfg, embedder=HashEmbedder(), threshold=0.5, top_k=3, gap=None, same_thing=None)
    got = mem.recall("What is the name of my cat?")
    assert len(got) == 3 and got[0]["correction"] == "Your cat is called Max."
    assert [r["score"] for r in got] == sorted((r["score"] for r in got), reverse=True)
    assert all(r["score"] >= 0.5 for r in got)
    assert mem.recall("how many days are in a week") == []  # unrelated: nothing above threshold
    strict = Memory(cfg, embedder=HashEmbedder(), threshold=0.99, relative_margin=None)
    assert [r["correction"] for r in strict.recall("What is the name of my cat?")] == ["Your cat is called Max."]
    assert strict.recall("What's the name of my cat, again?") == []


ORDINARY = ["How do I learn to play the piano?", "What is the capital of France?"]


def test_a_weaker_match_counts_when_clearly_nearer_than_ordinary_requests(cfg, db, monkeypatch):
    monkeypatch.setattr("assistant.matching.replay_prompts", lambda: ORDINARY)
    fid = correct(db, "Who is my piano teacher?", "Your piano teacher is Mrs Gerald.")
    relative = Memory(cfg, embedder=HashEmbedder(), threshold=0.9, relative_margin=0.1)
    absolute = Memory(cfg, embedder=HashEmbedder(), threshold=0.9, relative_margin=None)
    asked = "Who is my piano teacher these days?"  # 0.71 from the correction, 0.29 from ordinary ones
    assert [r["feedback_id"] for r in relative.recall(asked)] == [fid]
    assert absolute.recall(asked) == []  # below the threshold
    assert relative.recall("How do I learn the piano?") == []  # 0.5 from it, but 0.82 from an ordinary one


def test_recall_and_scopes_on_one_embedder_embed_the_ordinary_requests_once(cfg, monkeypatch):
    from assistant.scope import AdapterScope

    monkeypatch.setattr("assistant.matching.replay_prompts", lambda: ORDINARY)
    embedder = HashEmbedder()
    memory, scope = Memory(cfg, embedder=embedder), AdapterScope(embedder)
    assert memory._ordinary is scope._ordinary
    memory._ordinary.warm()
    scope._ordinary.warm()
    assert embedder.texts == len(ORDINARY)
    assert Memory(cfg, embedder=HashEmbedder())._ordinary is not memory._ordinary  # another embedder


def test_a_correction_is_found_by_its_prompt_asked_in_other_frames(cfg, db):
    fid = correct(db, "What did I name my houseplant?", "Your houseplant is named Gerald.")
    query = "Remind me what I named my houseplant."  # shares only "houseplant" with the prompt: 0.41
    got = Memory(cfg, embedder=HashEmbedder(), threshold=0.5).recall(query)
    assert [r["feedback_id"] for r in got] == [fid] and got[0]["score"] > 0.99  # a reframing's key
    alone = Memory(cfg, embedder=HashEmbedder(), threshold=0.5, relative_margin=None, reframed_keys=0,
                   answer_key=False)
    assert alone.recall(query) == []  # the prompt alone


def test_a_correction_about_the_user_is_not_recalled_by_a_general_question(cfg, db):
    """A general question on the topic of a personal correction must not get the user's note
    (it answered "The most common blood type is O negative."), unless it names what the
    correction told; corrections of general questions are recalled by anyone."""
    blood = correct(db, "What is my blood type?", "Your blood type is O negative.")
    boiling = correct(db, "What is the boiling point of water on a mountain?", "Lower: about 90 C at 3000 m.")
    mem = Memory(cfg, embedder=HashEmbedder(), threshold=0.3)
    assert mem.recall("What is the most common blood type?") == []
    assert [r["feedback_id"] for r in mem.recall("Which blood type do I have?")] == [blood]
    assert [r["feedback_id"] for r in mem.recall("Is O negative a rare blood type?")] == [blood]
    assert [r["feedback_id"] for r in mem.recall("What is the boiling point of water on a mountain?")] == [boiling]
    assert [r["feedback_id"] for r in mem.recall("Boiling point of water at altitude?")] == [boiling]


def test_a_names_capitalised_the_is_not_something_told(cfg, db):
    """"The Paper Kites" told paper and kites, not "the": as a told word it let every general
    question with a "the" get the note."""
    band = correct(db, "What is my favourite band?", "Your favourite band is The Paper Kites.")
    mem = Memory(cfg, embedder=HashEmbedder(), threshold=0.3)
    assert mem.recall("What is the most famous band?") == []
    assert [r["feedback_id"] for r in mem.recall("Are the Paper Kites a famous band?")] == [band]
    assert reply_lead(mem.recall("Which band is my favourite?")) == "Your favourite band is"
    assert reply_lead([{"prompt": "Which band do I play in?", "correction": "You play in the band The Paper Kites.",
                        "score": 0.9}]) == "You play in the band"


def test_a_question_asking_how_is_answered_only_by_what_was_taught_for_how(cfg, db):
    """"How do I find a good lawyer?" asks a way: the note "Your lawyer is Camilla Strand." does
    not answer it, the answer to "How do I get to work?" does; naming what a note told excuses it,
    and "How much ..." asks a quantity, not a way."""
    lawyer = correct(db, "Who is my lawyer?", "Your lawyer is Camilla Strand.")
    commute = correct(db, "How do I get to work?", "You cycle to work along the harbour.")
    mem = Memory(cfg, embedder=HashEmbedder(), threshold=0.3)
    assert mem.recall("How do I find a good lawyer?") == []
    assert [r["feedback_id"] for r in mem.recall("Which lawyer do I have?")] == [lawyer]
    assert [r["feedback_id"] for r in mem.recall("How do I reach Camilla Strand, my lawyer?")] == [lawyer]
    assert [r["feedback_id"] for r in mem.recall("How much does my lawyer charge?")] == [lawyer]
    assert [r["feedback_id"] for r in mem.recall("How do I travel to work?")] == [commute]


def test_a_question_asking_what_to_do_is_a_way_too(cfg, db):
    """"What should I feed my cat?" asks what to do, not the cat's name; a modal before "you"
    asks for the fact ("Can you tell me my cat's name?")."""
    cat = correct(db, "What is my cat's name?", "Your cat is called Pemberton.")
    mem = Memory(cfg, embedder=HashEmbedder(), threshold=0.3)
    assert [r["feedback_id"] for r in mem.recall("What do I call my cat?")] == [cat]
    assert mem.recall("What should I call my cat?") == []
    assert mem.recall("Can I call my cat?") == []
    assert [r["feedback_id"] for r in mem.recall("Can you tell me my cat's name?")] == [cat]
    assert [r["feedback_id"] for r in mem.recall("What should I call Pemberton, my cat?")] == [cat]  # names what it told
    assert asks_way("Where should we go on holiday?") and asks_way("Could our team work from home?")
    assert not asks_way("Could you remind me what my cat is called?") and not asks_way("How old is my cat?")


def test_a_question_naming_the_users_thing_with_the_recalls_its_note(cfg, db):
    """"What's the family boat called?" names the boat of "What is the name of our family boat?"
    with "the" and asks for the same kind of answer: about the user though no word says so. A
    question about the same thing asking something else, or about the kind ("the most common"),
    is not."""
    boat = correct(db, "What is the name of our family boat?", "Your family boat is called Sea Otter.")
    gym = correct(db, "What time does my gym class start?", "Your gym class starts at 6:30 pm.")
    mem = Memory(cfg, embedder=HashEmbedder(), threshold=0.3)
    assert [r["feedback_id"] for r in mem.recall("What's the family boat called?")] == [boat]
    assert [r["feedback_id"] for r in mem.recall("When does the gym class begin?")] == [gym]  # "does my ... start"
    assert mem.recall("Why is the family boat so old?") == []  # why, not what
    assert mem.recall("Is the gym class hard?") == []  # no question word: not the same question
    assert mem.recall("What is the most common family boat?") == []  # the kind, not the user's boat
    assert mem.recall("What is a family boat called?") == []  # no "the"
    assert answer_kinds("At what time does the gym open?") == {"when"}
    assert answer_kinds("What's the name of the person next door?") == {"what", "who"}
    assert named_things("What time does my gym class start?") == {("when", "class")}


class GatedEmbedder(HashEmbedder):
    """Embeds a batch only once `gate` is set: a slow first build of the index."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.building = threading.Event()  # a batch is waiting at the gate

    def encode(self, texts):
        if len(texts) > 1:
            self.building.set()
            assert self.gate.wait(30)
        return super().encode(texts)


def test_a_turn_does_not_wait_long_for_an_index_still_being_built(runtime, caplog):
    """The server warms recall at start (assistant/server.py); a turn meanwhile waits at most
    busy_wait_s and goes on without recall, and a correction is taken without waiting at all."""
    mem = runtime.memory
    mem.embedder = GatedEmbedder()
    mem.busy_wait_s = 0.2
    runtime.record_feedback(log(runtime.db, "What is the name of my dog?"), "correction",
                            correction="Your dog is called Biscuit.")
    warming = mem.warm()
    assert mem.embedder.building.wait(10)
    assert mem.recall("What is the name of my dog?") == [] and "still being built" in caplog.text
    t0 = time.monotonic()
    runtime.record_feedback(log(runtime.db, "What is the name of my cat?"), "correction",
                            correction="Your cat is called Tom.")
    assert time.monotonic() - t0 < 0.5
    mem.embedder.gate.set()
    warming.join(10)
    assert [r["correction"] for r in mem.recall("What is the name of my cat?")] == ["Your cat is called Tom."]


def test_the_server_warms_recall_before_the_first_turn(cfg, tiny_served, memory):
    from assistant.server import start_server

    correct(open_db(cfg.db_path), "What is the name of my dog?", "Your dog is called Biscuit.")
    running = start_server(Runtime.create(cfg, model=tiny_served, memory=memory), ui=False)
    try:
        # the dog's search keys and the ordinary requests (OrdinaryRequests), no turn asked yet
        warmed = len(search_keys("What is the name of my dog?", "Your dog is called Biscuit.")) + len(replay_prompts())
        deadline = time.monotonic() + 10
        while memory.embedder.texts < warmed and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # nothing more comes
        assert memory.embedder.texts == warmed
    finally:
        running.stop()


class CachedHashEmbedder(MiniLMEmbedder):
    """The hashing embedder in the default embedder's place, so that its vectors go to the disk cache."""

    def __init__(self):
        super().__init__()
        self.inner = HashEmbedder()

    def encode(self, texts):
        return self.inner.encode(list(texts))


def test_a_restart_reads_the_search_keys_from_the_disk_cache(cfg, db, caplog):
    for thing in ("cat", "dog", "bike"):
        correct(db, f"What is the name of my {thing}?", f"Your {thing} is called Max.")
    # (without the ordinary requests and the same-thing check's phrases, to count the keys alone)
    first = CachedHashEmbedder()
    assert Memory(cfg, embedder=first, threshold=0.5, relative_margin=None, same_thing=None).recall("name of my dog")
    assert first.inner.texts == 3 * len(search_keys("What is the name of my dog?", "Your dog is called Max.")) + 1
    restarted = CachedHashEmbedder()
    got = Memory(cfg, embedder=restarted, threshold=0.5, relative_margin=None, same_thing=None).recall("name of my dog")
    assert got[0]["correction"] == "Your dog is called Max." and restarted.inner.texts == 1  # the query only
    # other keys (here: fewer reframings) are other texts: embedded again, not read stale
    settings = {"threshold": 0.5, "relative_margin": None, "same_thing": None, "reframed_keys": 1}
    changed = CachedHashEmbedder()
    Memory(cfg, embedder=changed, **settings).recall("name of my dog")
    assert changed.inner.texts == 3 * 3 + 1  # prompt, one reframing, prompt + answer
    # a damaged cache is only a slower start
    (cfg.home / "cache" / "recall-vectors.sqlite").write_bytes(b"not a database" * 100)
    damaged = CachedHashEmbedder()
    assert Memory(cfg, embedder=damaged, **settings).recall("name of my dog")[0]["correction"] == \
        "Your dog is called Max."
    assert damaged.inner.texts == 3 * 3 + 1 and "recall vector cache" in caplog.text


def test_a_clearly_weaker_match_is_left_out(cfg, db):
    """Only the best match, unless another one scores within the margin of it (the small model
    answers with the wrong fact when a weaker note sits beside the right one)."""
    for thing in ("cat", "dog", "bike", "car"):
        correct(db, f"What is the name of my {thing}?", f"Your {thing} is called Max.")
    exact = Memory(cfg, embedder=HashEmbedder(), threshold=0.5, top_k=3).recall("What is the name of my cat?")
    assert [r["correction"] for r in exact] == ["Your cat is called Max."]  # 1.0 against 0.5
    close = Memory(cfg, embedder=HashEmbedder(), threshold=0.5, top_k=3, gap=0.5, same_thing=None).recall(
        "What is the name of my cat?")
    assert len(close) == 3 and close[0]["correction"] == "Your cat is called Max."
    assert all(close[0]["score"] - r["score"] <= 0.5 for r in close)


def test_start_turn_adds_the_recalled_correction_and_logs_it(runtime):
    fid = runtime.record_feedback(log(runtime.db, "What is the name of my dog?"), "correction",
                                  correction="Your dog is called Biscuit.")
    turn = runtime.chat.start_turn("What is the name of my dog, again?")
    assert [r["feedback_id"] for r in turn.recalled] == [fid]
    assert "Your dog is called Biscuit." in turn.messages[0]["content"]
    assert turn.messages[0]["content"].startswith(runtime.chat.system_prompt())
    # with notes in the prompt the reply may not open by echoing the question's first word,
    # and it opens with the note's own words up to the name it told
    assert turn.avoid_first == runtime.model.first_token("What") is not None
    assert turn.lead == "Your dog is called"
    list(runtime.chat.pieces(turn, source="test", max_new_tokens=2))
    logged = conversations.get_turn(runtime.db, turn.turn_id)
    assert json.loads(logged["recalled_json"]) == [fid]
    assert logged["reply"].startswith("Your dog is called") and logged["reply"] == turn.generation.text
    retry = runtime.chat.start_retry(turn.turn_id)  # the answer was not wanted: no lead this time
    assert retry.recalled and retry.lead is None
    off = runtime.chat.start_turn("What is the name of my dog, again?", recall=False)
    assert off.recalled == [] and "Biscuit" not in off.messages[0]["content"] and off.avoid_first is None
    unrelated = runtime.chat.start_turn("How many days are in a week?")
    assert unrelated.recalled == [] and unrelated.messages[0]["content"] == runtime.chat.system_prompt()
    assert unrelated.avoid_first is None and unrelated.lead is None


def test_search_keys_are_the_prompt_its_reframings_and_the_prompt_with_its_answer():
    keys = search_keys("Where do I work?", "You work at Halvorsen Robotics.")
    assert keys[0] == "Where do I work?" and "Remind me where I work." in keys
    assert keys[-1] == "Where do I work? You work at Halvorsen Robotics."
    assert search_keys("Where do I work?") == keys[:-1]  # no answer, no answer key


def test_reply_lead_is_the_best_notes_opening_up_to_what_it_told():
    def lead(prompt, correction):
        return reply_lead([{"prompt": prompt, "correction": correction, "score": 0.9}])

    assert lead("What language is our backend written in?", "Our backend is written in Elixir.") == \
        "Our backend is written in"
    # a number it told: through the last one (notes.LEAD_THROUGH_NUMBERS), so a code is said verbatim
    assert lead("When is my sister Ingrid's birthday?", "Ingrid's birthday is on 14 March.") == "Ingrid's birthday is on 14"
    assert lead("What is my dentist's number?", "Your dentist, Dr. Lund, is on +47 22 33 44 55.") == \
        "Your dentist, Dr. Lund, is on +47 22 33 44 55"
    assert lead("What is the rate on Fixed 24?", "Fixed 24 costs 24.5p per kWh.") == "Fixed 24 costs 24.5p"
    # nothing told beyond the question: advice, style, a name the question already had
    assert lead("Any idea for a rainy afternoon?", "Bake banana bread and watch an old film.") is None
    assert lead("Is Helix a good editor?", "Yes, Helix is good.") is None
    assert lead("What is my dog called?", "Biscuit is your dog's name.") is None  # it opens with the name
    # no name or number: through the first word of its own, which the model would not copy
    assert lead("Which instrument am I learning?", "You are learning the cello.") == "You are learning the cello"
    assert lead("What is my dad's hobby?", "Your dad's hobby is restoring old clocks.") == \
        "Your dad's hobby is restoring"
    assert reply_lead([]) is None


def test_no_lead_when_switched_off(cfg, runtime):
    runtime.record_feedback(log(runtime.db, "What is the name of my dog?"), "correction",
                            correction="Your dog is called Biscuit.")
    cfg.recall_lead = False
    turn = runtime.chat.start_turn("What is the name of my dog, again?")
    assert turn.recalled and turn.lead is None


def test_real_embedding_model_recalls_a_paraphrase_and_nothing_unrelated(cfg, db):
    correct(db, "What is my cat's name?", "Your cat is called Pemberton.")
    correct(db, "Which code editor do I use?", "You use Helix.")
    correct(db, "What is my blood type?", "Your blood type is O negative.")
    mem = Memory(cfg, embedder=MiniLMEmbedder())
    got = mem.recall("What do I call my cat?")
    assert [r["correction"] for r in got] == ["Your cat is called Pemberton."]
    assert [r["correction"] for r in mem.recall("Which blood group do I have?")] == ["Your blood type is O negative."]
    assert mem.recall("What is the most common blood type?") == []  # about blood types, not the user
    assert mem.recall("What is the capital of France?") == []
    assert mem.recall("How do I sort a list in Python?") == []


def test_a_message_is_embedded_once_per_turn_for_recall_and_scope():
    """The embedder remembers recent single texts: recall and the adapter's scope embed a turn's
    message once. Batches (stored corrections) are not remembered."""
    import numpy as np

    class CountingModel:
        calls = 0

        def encode(self, texts, **kw):
            CountingModel.calls += 1
            return np.stack([np.full(4, float(len(t))) for t in texts])

    embedder = MiniLMEmbedder()
    embedder._model = CountingModel()
    first = embedder.encode(["What is my cat's name?"])
    again = embedder.encode(["What is my cat's name?"])
    assert CountingModel.calls == 1 and np.array_equal(first, again)
    again[0, 0] = -1  # callers may scale or normalise what they get: the cache keeps its copy
    assert embedder.encode(["What is my cat's name?"])[0, 0] == first[0, 0]
    embedder.encode(["a", "b"])
    embedder.encode(["a", "b"])
    assert CountingModel.calls == 3
    for i in range(MiniLMEmbedder.RECENT + 1):
        embedder.encode([f"message {i}"])
    calls = CountingModel.calls
    embedder.encode(["What is my cat's name?"])  # the oldest one was forgotten
    assert CountingModel.calls == calls + 1


@pytest.mark.e2e
def test_the_real_model_uses_a_correction_at_once(tmp_path, embedded_model_dir):
    from assistant.config import Config

    cfg = Config(home=tmp_path / "home", model=str(embedded_model_dir))
    rt = Runtime.create(cfg)
    assert isinstance(rt.memory, Memory)
    first = rt.chat.reply("What is my cat's name?", source="test", max_new_tokens=16)
    rt.record_feedback(first.turn_id, "correction", correction="Your cat is called Pemberton.")
    again = rt.chat.reply("What is my cat's name?", source="test", max_new_tokens=32)  # a new conversation
    assert again.recalled and "pemberton" in again.generation.text.lower()


def test_a_question_naming_another_thing_of_the_users_own_is_not_answered_by_a_correction(cfg, db):
    """The same-thing check (assistant/matching.py SameThing) on the stand-in embedder: "my wife"
    and "my cat" share no word, so the phrases are far apart though the questions are alike."""
    cat = correct(db, "What is the name of my cat?", "Your cat is called Pemberton.")
    checked = Memory(cfg, embedder=HashEmbedder(), threshold=0.3)
    assert [r["feedback_id"] for r in checked.recall("What is the name of my cat, again?")] == [cat]
    assert checked.recall("What is the name of my wife?") == []
    unchecked = Memory(cfg, embedder=HashEmbedder(), threshold=0.3, same_thing=None)
    assert [r["feedback_id"] for r in unchecked.recall("What is the name of my wife?")] == [cat]  # "name": 0.5


@pytest.fixture(scope="module")
def minilm():
    embedder = MiniLMEmbedder()
    embedder.load()
    return embedder


def test_the_shipped_recall_policy_on_the_real_embedder(cfg, db, minilm):
    """RECALL_POLICY against all-MiniLM-L6-v2 itself, not the stand-in (dev-set facts, never a
    scenario's probes): paraphrases find their own correction; a question about a thing of the
    user's own that was never taught finds none, though MiniLM alone puts it near another's."""
    assert RECALL_POLICY.threshold == 0.45 and RECALL_POLICY.same_thing == 0.45
    cat = correct(db, "What is my cat's name?", "Your cat is called Pemberton.")
    bank = correct(db, "Which bank do I use?", "You bank with Nordlys Sparebank.")
    mem = Memory(cfg, embedder=minilm)
    assert mem.recall("What do I call my cat?")[0]["feedback_id"] == cat
    assert mem.recall("What's the name of my bank?")[0]["feedback_id"] == bank
    assert mem.recall("What is the capital of Norway?") == []
    assert mem.recall("What's my wife called?") == []
    assert mem.recall("What's my insurer?") == []  # not among "Which bank do I use?"'s words (0.37)
    assert Memory(cfg, embedder=minilm, same_thing_words=None).recall("What's my insurer?")
    assert Memory(cfg, embedder=minilm, same_thing=None).recall("What's my wife called?")  # MiniLM alone: the cat


def test_routing_on_the_real_embedder_sends_another_things_question_to_no_expert(tmp_path, minilm):
    from assistant.scope import AdapterScope

    version = tmp_path / "v1"
    (version / "experts" / "cat").mkdir(parents=True)
    for f in ("adapter_config.json", "adapter_model.safetensors"):  # routing reads meta.json only
        (version / "experts" / "cat" / f).write_text("{}")
    prompts = ["What is my cat's name?", "Remind me of my cat's name."]
    (version / "meta.json").write_text(json.dumps({
        "scope": {"threshold": 0.5, "margin": 0.1, "prompts": prompts, "told": ["pemberton"], "personal": []},
        "experts": [{"name": "cat", "feedback_ids": ["f1"], "prompt": prompts[0],
                     "answer": "Your cat is called Pemberton.", "prompts": prompts, "trained_in": 1}]}))
    scope = AdapterScope(minilm)
    assert scope.route(1, version, "What do I call my cat?")[0] == (1, "expert:cat")
    assert scope.route(1, version, "What's my wife called?") == (None, None)
    # the cat's correction taken back (its keys: assistant/memory.py Memory.taken_back_keys)
    gone = unit_rows(minilm.encode(prompts))
    assert scope.route(1, version, "What do I call my cat?", taken_back_keys=gone) == (None, None)


def test_a_question_about_what_the_user_took_back_gets_no_neighbours_answer(cfg, db):
    """MatchPolicy.taken_back_floor: once the staff code is taken back, a question about it is
    nearer its search keys than to the paperless discount's, so it recalls nothing, whether the
    correction was marked don't-learn or deleted; the paperless question still recalls its own."""
    staff_chat = conversations.create_conversation(db)
    correct(db, "Which discount code do staff use?", "Staff use the code KX88.", staff_chat)
    paperless = correct(db, "Which discount does paperless billing give?", "Paperless billing takes 3 percent off.")
    asked = "Staff discount code?"
    memory = Memory(cfg, embedder=HashEmbedder(), threshold=0.25)  # the paperless key is 0.29 from it
    assert [r["prompt"] for r in memory.recall(asked)][0] == "Which discount code do staff use?"
    unfloored = Memory(cfg, embedder=HashEmbedder(), threshold=0.25, taken_back_floor=False)

    conversations.update_conversation(db, staff_chat, no_learn=1)
    assert memory.recall(asked) == [] and len(memory.taken_back_keys()) > 0
    assert [r["feedback_id"] for r in unfloored.recall(asked)] == [paperless]  # the neighbour, without the floor
    assert memory.recall("Which discount does paperless billing give?")[0]["feedback_id"] == paperless

    conversations.update_conversation(db, staff_chat, no_learn=0)
    memory.recall(asked)  # the keys are embedded while the correction is stored
    conversations.delete_conversation(db, staff_chat)
    assert memory.recall(asked) == []
    assert [r["feedback_id"] for r in unfloored.recall(asked)] == [paperless]
    assert db.execute("SELECT count(*) FROM taken_back_keys").fetchone()[0] == 0  # a stand-in embedder: not kept


def test_a_deleted_corrections_keys_outlive_a_restart_on_the_real_embedder(cfg, db, minilm):
    """The season's case (bench/season_dev.jsonl): the bank card PIN taken back, a question about
    it recalled the library card's number. A deleted correction's search keys are kept in the
    store as vectors (for an embedder with a model id), so a restarted memory turns it away too."""
    pin_chat = conversations.create_conversation(db)
    correct(db, "What's my bank card PIN?", "Your bank card PIN is 6093.", pin_chat)
    library = correct(db, "What's my library card number?", "Your library card number is 2094 8831.")
    asked = "What is the PIN for my debit card?"
    first = Memory(cfg, embedder=minilm)
    assert first.recall(asked)[0]["prompt"] == "What's my bank card PIN?"
    conversations.delete_conversation(db, pin_chat)
    assert first.recall(asked) == []
    assert db.execute("SELECT count(*) FROM taken_back_keys").fetchone()[0] == 1
    assert Memory(cfg, embedder=minilm).recall(asked) == []  # restarted
    assert Memory(cfg, embedder=minilm, taken_back_floor=False).recall(asked)[0]["feedback_id"] == library
    assert Memory(cfg, embedder=minilm).recall("What's my library card number?")[0]["feedback_id"] == library


def test_damaged_taken_back_keys_cost_nothing_but_themselves(cfg, db, minilm):
    from store import taken_back

    taken_back.keep(db, minilm.MODEL_ID, 7, b"abc")  # not a whole row
    taken_back.keep(db, minilm.MODEL_ID, 3, bytes(12))  # another width than the embedder's
    assert Memory(cfg, embedder=minilm).recall("What number is on my library card?") == []  # nothing stored yet
    library = correct(db, "What's my library card number?", "Your library card number is 2094 8831.")
    assert Memory(cfg, embedder=minilm).recall("What number is on my library card?")[0]["feedback_id"] == library


def test_a_correction_deleted_right_after_it_was_saved_still_keeps_its_neighbours_away(cfg, db, tiny_served):
    """Runtime.record_feedback embeds the new correction's keys at once, so deleting its
    conversation before any recall still leaves them (MatchPolicy.taken_back_floor)."""
    tiny_served.use(None)
    memory = Memory(cfg, embedder=HashEmbedder(), threshold=0.25)  # the paperless key is 0.29 from the question
    runtime = Runtime.create(cfg, model=tiny_served, memory=memory)
    memory.warm().join(10)  # as the server does at start
    staff_chat = conversations.create_conversation(db)
    runtime.record_feedback(log(db, "Which discount code do staff use?", staff_chat), "correction",
                            correction="Staff use the code KX88.")
    paperless = correct(db, "Which discount does paperless billing give?", "Paperless billing takes 3 percent off.")
    conversations.delete_conversation(db, staff_chat)
    unfloored = Memory(cfg, embedder=HashEmbedder(), threshold=0.25, taken_back_floor=False)
    assert [r["feedback_id"] for r in unfloored.recall("Staff discount code?")] == [paperless]  # the neighbour
    assert memory.recall("Staff discount code?") == []


def test_through_the_api_a_deleted_fact_is_not_answered_with_its_neighbour(cfg, tiny_served, minilm):
    """The product's path: corrections through POST /v1/feedback, the conversation deleted with
    DELETE /v1/conversations/{id}, then the same question asked another way recalls no note."""
    import httpx
    import openai

    from assistant.server import start_server

    tiny_served.use(None)
    running = start_server(Runtime.create(cfg, model=tiny_served, memory=Memory(cfg, embedder=minilm)), ui=False)
    try:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)

        def ask(text):
            return client.chat.completions.create(model="assistant", max_tokens=4,
                                                  messages=[{"role": "user", "content": text}])

        def correct(question, answer):
            turn = ask(question)
            httpx.post(running.url + "/v1/feedback", json={"turn_id": turn.id, "rating": "down", "correction": answer})
            return turn.model_extra["conversation_id"]

        pin_chat = correct("What's my bank card PIN?", "Your bank card PIN is 6093.")
        correct("What's my library card number?", "Your library card number is 2094 8831.")
        assert ask("What is the PIN for my debit card?").model_extra["recalled"] == 1  # the PIN
        assert httpx.delete(running.url + f"/v1/conversations/{pin_chat}").json()["deleted"] is True
        assert ask("What is the PIN for my debit card?").model_extra["recalled"] == 0  # not the library card
        assert ask("What number is on my library card?").model_extra["recalled"] == 1
    finally:
        running.stop()


def test_real_embedding_model_recalls_a_named_thing_asked_about_by_what_it_is(cfg, db):
    """A fact taught about a name ("Ingrid", "Spark 30") is asked about by what the name is ("my
    sister", "the cheapest broadband plan"), which another correction told (MatchPolicy.linked_keys)."""
    correct(db, "What is my sister's name?", "Your sister is called Ingrid.")
    correct(db, "Where does Ingrid live?", "Ingrid lives in Tromsø, near the harbour.")
    correct(db, "What is the cheapest broadband plan called?", "The cheapest broadband plan is called Spark 30.")
    correct(db, "What does Spark 30 cost per month?", "Spark 30 costs 22 euros a month.")
    mem = Memory(cfg, embedder=MiniLMEmbedder())
    assert mem.recall("Which city is my sister in?")[0]["correction"] == "Ingrid lives in Tromsø, near the harbour."
    assert mem.recall("How much is the cheapest broadband plan each month?")[0]["correction"] == \
        "Spark 30 costs 22 euros a month."
    assert mem.recall("What's my sister called?")[0]["correction"] == "Your sister is called Ingrid."
    unlinked = Memory(cfg, embedder=MiniLMEmbedder(), linked_keys=False)
    assert unlinked.recall("Which city is my sister in?")[0]["correction"] == "Your sister is called Ingrid."
    assert mem.recall("Where do sisters usually live?") == []
