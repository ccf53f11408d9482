"""Training beside chat: the learner process sets its own torch thread budget, leaving the
server's replies a core (issue 29: two processes each using every core thrashed)."""
import os
from types import SimpleNamespace

import pytest

from assistant.config import Config, cores
from learning import learner


@pytest.fixture
def threads_set(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(os, "nice", lambda n: calls.append(f"nice {n}") or n)  # never renice the tests
    monkeypatch.setattr(learner, "run_cycle", lambda cfg, **kw: {"message": "stand-in cycle"})
    return calls


def test_the_learner_process_leaves_a_core_to_the_chat_and_yields_a_contended_one(home, threads_set, monkeypatch):
    monkeypatch.delenv("ASSISTANT_LEARNER_THREADS", raising=False)
    assert learner.main(["--home", str(home)]) == 0
    assert threads_set[:2] == [max(1, cores() - 1), f"nice {Config().learner_niceness}"]
    assert Config().learner_niceness == 10


def test_the_budgets_can_be_set(home, threads_set, monkeypatch):
    monkeypatch.setenv("ASSISTANT_LEARNER_THREADS", "3")
    monkeypatch.setenv("ASSISTANT_CHAT_THREADS", "2")
    assert learner.main(["--home", str(home)]) == 0
    assert threads_set[0] == 3 and Config().chat_threads == 2


def test_the_learner_lowers_its_priority_by_the_configs_niceness(threads_set, tmp_path):
    learner.yield_to_chat(Config(home=tmp_path, learner_threads=1, learner_niceness=5))
    assert threads_set[:2] == [1, "nice 5"]


@pytest.mark.parametrize("value", ["0", "-1", "two", "١"])
def test_a_bad_budget_says_what_is_wrong(monkeypatch, value):
    monkeypatch.setenv("ASSISTANT_LEARNER_THREADS", value)
    with pytest.raises(ValueError, match="ASSISTANT_LEARNER_THREADS must be a whole number"):
        Config()


def _budget(home, chat_threads, learner_threads):
    from assistant.threads import ThreadBudget

    return ThreadBudget(Config(home=home, chat_threads=chat_threads, learner_threads=learner_threads))


def test_replies_use_the_cores_a_running_cycle_leaves(home, db, monkeypatch):
    import torch

    from store import jobs

    monkeypatch.setattr("assistant.threads.cores", lambda: 4)
    budget = _budget(home, chat_threads=4, learner_threads=3)
    assert budget.threads_for(db) == 4
    job = jobs.start_job(db)  # this process: alive
    assert budget.threads_for(db) == 1
    jobs.update_job(db, job, pid=2 ** 22 + 12345)  # above Linux's pid_max: no such process, a dead learner
    assert budget.threads_for(db) == 4
    jobs.update_job(db, job, pid=os.getpid())
    assert _budget(home, chat_threads=1, learner_threads=1).threads_for(db) == 1  # never above the chat's own
    assert _budget(home, chat_threads=4, learner_threads=4).threads_for(db) == 1  # and at least one
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert budget.apply(db) == 1 and calls == [1]


def test_the_chat_sets_its_threads_before_each_reply(cfg, tiny_served, monkeypatch):
    from assistant.chat import ChatService
    from store import jobs

    tiny_served.use(None)
    chat = ChatService(cfg, tiny_served)
    seen = []
    chat.threads = SimpleNamespace(apply=lambda db: seen.append(jobs.learner_running(db)))
    chat.reply("Hello", max_new_tokens=2)
    jobs.start_job(chat.db)
    chat.reply("Hello again", max_new_tokens=2)
    assert seen == [False, True]


def test_a_database_that_cannot_be_read_keeps_the_thread_count(home, monkeypatch):
    import torch

    budget = _budget(home, chat_threads=2, learner_threads=1)
    monkeypatch.setattr(budget, "threads_for", lambda db: (_ for _ in ()).throw(RuntimeError("locked")))
    assert budget.apply(None) == torch.get_num_threads()
