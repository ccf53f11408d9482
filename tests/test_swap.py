"""Hot swap on the tiny model: the served adapter follows the registry, rollback is exact,
broken adapters are refused while serving continues, and the ACTIVE pointer stays single
under concurrent promotions and a learner killed mid-promotion."""
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from assistant.chat import ChatService
from learning import versions
from store import adapters, open_db
from tests.lora import corrupt_adapter, make_adapter, register

MSG = [{"role": "user", "content": "What is the name of my dog?"}]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lora_dirs(tiny_model_path, tmp_path_factory):
    base = tmp_path_factory.mktemp("loras")
    return {v: make_adapter(tiny_model_path, base / f"v{v}", seed=v) for v in (1, 2, 3, 4, 5)}


@pytest.fixture
def chat(cfg, served):
    return ChatService(cfg, served)


def live_logits(chat):
    """Next-token logits as a request would get them: the adapter the registry says is live."""
    version, path = chat.serving_adapter()
    return chat.model.logits(MSG, version, path)


def _registry(db, lora_dirs, n=3):
    for v in range(1, n + 1):
        register(db, v, lora_dirs[v], parent=v - 1 or None)


def test_logits_change_after_swap_and_equal_exactly_after_rollback(chat, db, lora_dirs):
    _registry(db, lora_dirs)
    base = live_logits(chat)
    adapters.activate(db, 1)
    v1 = live_logits(chat)
    versions.promote(db, 2, force=True)  # never judged by a gate: the override
    v2 = live_logits(chat)
    assert not torch.equal(base, v1) and not torch.equal(v1, v2)
    assert versions.rollback(db) == {"from": 2, "to": 1, "quarantined": 0}
    for _ in range(3):  # and on every later request, not only the first
        assert torch.equal(live_logits(chat), v1)
    versions.rollback(db)  # v1 has no parent: back to the base model
    for _ in range(3):
        assert torch.equal(live_logits(chat), base)
    versions.rollback(db, 2)
    assert torch.equal(live_logits(chat), v2)


def test_rollback_is_served_from_memory(chat, db, lora_dirs, tmp_path):
    v1_dir = shutil.copytree(lora_dirs[1], tmp_path / "v1")
    register(db, 1, v1_dir)
    register(db, 2, lora_dirs[2], parent=1)
    adapters.activate(db, 1)
    v1 = live_logits(chat)
    adapters.activate(db, 2)
    for _ in range(3):
        live_logits(chat)
    shutil.rmtree(v1_dir)  # a rollback must not need the disk: the previous adapter stays loaded
    adapters.activate(db, 1)
    assert torch.equal(live_logits(chat), v1)


def test_new_versions_reuse_a_spare_adapter_exactly(served, tiny_model_path, lora_dirs):
    from assistant.model import ServedModel

    fresh = {v: ServedModel(str(tiny_model_path)).logits(MSG, v, lora_dirs[v]) for v in lora_dirs}
    for v in (1, 2, 3, 4, 5, 3, 1, 2):
        assert torch.equal(served.logits(MSG, v, lora_dirs[v]), fresh[v])
        assert len(served.loaded) <= 3 and len(served.model.peft_config) <= 3
        names = list(served.loaded.values())
        assert len(set(names)) == len(names) and set(names) <= set(served.model.peft_config)
    # v4 and later took over the layers of evicted versions instead of building new ones
    assert set(served.model.peft_config) == {"slot1", "slot2", "slot3"}
    assert torch.equal(served.logits(MSG, None), ServedModel(str(tiny_model_path)).logits(MSG))


@pytest.mark.parametrize("how", ["garbage", "truncated", "no-config", "wrong-targets", "wrong-shape",
                                 "missing-tensor"])
@pytest.mark.parametrize("first", [True, False], ids=["as-first-adapter", "after-a-good-one"])
def test_corrupt_adapter_is_refused_and_serving_continues(chat, db, lora_dirs, tiny_model_path, tmp_path,
                                                          how, first):
    base = live_logits(chat)
    good = None
    if not first:
        register(db, 1, lora_dirs[1])
        adapters.activate(db, 1)
        good = live_logits(chat)
    bad = corrupt_adapter(lora_dirs[1], tmp_path / "bad", how, base_path=tiny_model_path)
    register(db, 2, bad, parent=None if first else 1)
    adapters.activate(db, 2)
    turn = chat.reply("What is the name of my dog?", source="test", max_new_tokens=4)
    assert turn.generation.adapter_version == (None if first else 1)
    assert torch.equal(live_logits(chat), base if first else good)  # the last good adapter, untouched
    reason = chat._bad_versions[2]
    assert "v2" in reason or str(bad) in reason
    assert chat.model.current == (None if first else 1) and 2 not in chat.model.loaded


def test_stream_in_flight_finishes_on_the_adapter_it_started_with(chat, db, lora_dirs):
    _registry(db, lora_dirs, n=2)
    adapters.activate(db, 1)
    turn = chat.start_turn("Hello there, how are you today?")
    expected = chat.model.generate(turn.messages, max_new_tokens=12, version=1, adapter_path=lora_dirs[1]).text
    stream = chat.pieces(turn, source="test", max_new_tokens=12)
    first = next(stream)
    adapters.activate(db, 2)  # promotion while the reply is streaming
    other = {}
    waiter = threading.Thread(target=lambda: other.update(turn=chat.reply("Hello", source="test", max_new_tokens=3)))
    waiter.start()  # queues on the model lock until the stream is done
    text = first + "".join(stream)
    waiter.join(60)
    assert text == expected and turn.generation.adapter_version == 1
    assert other["turn"].generation.adapter_version == 2
    rows = {r["id"]: r["adapter_version"] for r in db["turns"].rows}
    assert rows[turn.turn_id] == 1 and rows[other["turn"].turn_id] == 2


def test_watcher_preloads_a_promoted_version_without_switching(chat, db, lora_dirs):
    _registry(db, lora_dirs, n=1)
    stop = chat.watch_adapters(interval_s=0.02)
    try:
        adapters.activate(db, 1)
        deadline = time.monotonic() + 20
        while 1 not in chat.model.loaded and time.monotonic() < deadline:
            time.sleep(0.02)
        assert 1 in chat.model.loaded and chat.model.current is None  # loaded, not yet switched
    finally:
        stop()
    assert live_logits(chat) is not None and chat.model.current == 1


def _count_active(db) -> int:
    return db.execute("SELECT count(*) FROM adapters WHERE status = 'active'").fetchone()[0]


def test_concurrent_promotions_from_threads_leave_exactly_one_active(cfg, db, lora_dirs):
    _registry(db, lora_dirs)
    seen, errors, done = [], [], threading.Event()

    def flip(seed):
        rng, conn = random.Random(seed), open_db(cfg.db_path)
        try:
            for _ in range(15):
                if rng.random() < 0.5:
                    versions.promote(conn, rng.choice([1, 2, 3]), force=True)
                else:
                    adapters.activate(conn, rng.choice([1, 2, 3]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def watch():
        conn = open_db(cfg.db_path)
        while not done.is_set():
            seen.append(_count_active(conn))

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=flip, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    watcher.join()
    assert not errors
    assert max(seen) <= 1 and _count_active(db) == 1
    assert sorted(a["status"] for a in adapters.list_adapters(db)).count("retired") == 2


FLIPPER = textwrap.dedent("""
    import random, sys
    from store import adapters, open_db
    db = open_db(sys.argv[1])
    rng = random.Random(int(sys.argv[2]))
    for _ in range(20):
        adapters.activate(db, rng.choice([1, 2, 3]))
""")


def test_concurrent_promotions_from_processes_leave_exactly_one_active(cfg, db, lora_dirs):
    _registry(db, lora_dirs)
    procs = [subprocess.Popen([sys.executable, "-c", FLIPPER, str(cfg.db_path), str(s)], cwd=ROOT)
             for s in range(4)]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    assert _count_active(db) == 1


KILLED_MID_PROMOTION = textwrap.dedent("""
    import sys, time
    import sqlite_utils
    from store import adapters, open_db

    execute = sqlite_utils.Database.execute

    def pausing(self, sql, *args, **kw):
        out = execute(self, sql, *args, **kw)
        if sql.startswith("UPDATE adapters SET status = 'retired'"):
            print("RETIRED", flush=True)  # between the two statements of the promotion
            time.sleep(120)
        return out

    sqlite_utils.Database.execute = pausing
    adapters.activate(open_db(sys.argv[1]), 2)
""")


def test_a_learner_killed_during_promotion_leaves_exactly_one_active(cfg, db, lora_dirs):
    _registry(db, lora_dirs, n=2)
    adapters.activate(db, 1)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_PROMOTION, str(cfg.db_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "RETIRED"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    fresh = open_db(cfg.db_path)
    assert _count_active(fresh) == 1 and adapters.active_version(fresh) == 1  # the promotion never happened
    versions.promote(fresh, 2, force=True)  # and the write lock was released with the dead process
    assert adapters.active_version(fresh) == 2 and _count_active(fresh) == 1


def test_a_versions_habit_adapter_does_not_push_the_previous_version_out(served, lora_dirs):
    """The chat moves between a version and its habit adapter turn by turn; the version before
    stays loaded for an instant rollback, and at most three versions (with their habit
    adapters) stay loaded."""
    served.use(1, lora_dirs[1])
    served.use(2, lora_dirs[2])
    for _ in range(3):
        served.use((2, "habit"), lora_dirs[3])
        served.use(2, lora_dirs[2])
    assert served.previous == 1 and {1, 2, (2, "habit")} <= set(served.loaded)
    served.use((2, "habit"), lora_dirs[3])
    served.use(4, lora_dirs[4])  # a promotion: the previous is now v2, habit included
    assert served.previous == (2, "habit") and {2, (2, "habit"), 4} <= set(served.loaded)
    served.use(5, lora_dirs[5])
    assert 4 in served.loaded and {v for v in served.loaded if v not in (4, 5)} <= {2, (2, "habit"), 1}
    assert len({k[0] if isinstance(k, tuple) else k for k in served.loaded}) <= 3
    served.use(None)


def test_keys_of_the_same_files_share_layers_and_a_shared_slot_is_never_overwritten(served, lora_dirs, tmp_path):
    """A version keeps its parent's experts as hard links (store/manifest.py link_tree): after a
    promotion the new version's key of a kept expert takes the layers already loaded for the old
    key (no second load, no second copy in memory); unloading one key keeps the other's layers,
    and layers two keys share are not taken over for a third adapter."""
    from store.manifest import link_tree

    kept = tmp_path / "v2-expert"
    link_tree(lora_dirs[1], kept)  # the same files, another directory
    reference = served.logits(MSG, (1, "expert:a"), lora_dirs[1])
    names = served._names
    assert torch.equal(served.logits(MSG, (2, "expert:a"), kept), reference)
    assert served._names == names and served.loaded[(1, "expert:a")] == served.loaded[(2, "expert:a")]
    served.use(None)
    served._release((1, "expert:a"))
    assert (1, "expert:a") not in served.loaded
    assert torch.equal(served.logits(MSG, (2, "expert:a"), kept), reference)  # still loaded, untouched
    assert served._names == names
    copied = tmp_path / "copied"
    shutil.copytree(lora_dirs[1], copied)  # equal bytes, other files: loaded on its own
    assert torch.equal(served.logits(MSG, (3, "expert:a"), copied), reference)
    assert served.loaded[(3, "expert:a")] != served.loaded[(2, "expert:a")] and served._names == names + 1
    served.use(None)
    served._release((3, "expert:a"))
    served.max_side_adapters = 1  # the cap bites: a new expert would take over an idle one's layers
    served._files[(4, "expert:b")] = served._files[(2, "expert:a")]
    served.loaded[(4, "expert:b")] = served.loaded[(2, "expert:a")]  # two keys on one slot
    served._side_use = {(4, "expert:b"): None, (2, "expert:a"): None}
    assert served._spare({**served.model.peft_config[served.loaded[(2, "expert:a")]].to_dict()},
                         (5, "expert:c")) is None  # shared: not a spare
