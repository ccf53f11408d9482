"""Training beside chat: the learner process sets its own torch thread budget, leaving the
server's replies a core (issue 29: two processes each using every core thrashed)."""
import pytest

from assistant.config import Config, cores
from learning import learner


@pytest.fixture
def threads_set(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(learner, "run_cycle", lambda cfg, **kw: {"message": "stand-in cycle"})
    return calls


def test_the_learner_process_leaves_a_core_to_the_chat(home, threads_set, monkeypatch):
    monkeypatch.delenv("ASSISTANT_LEARNER_THREADS", raising=False)
    assert learner.main(["--home", str(home)]) == 0
    assert threads_set == [max(1, cores() - 1)]


def test_the_budgets_can_be_set(home, threads_set, monkeypatch):
    monkeypatch.setenv("ASSISTANT_LEARNER_THREADS", "3")
    monkeypatch.setenv("ASSISTANT_CHAT_THREADS", "2")
    assert learner.main(["--home", str(home)]) == 0
    assert threads_set == [3] and Config().chat_threads == 2


@pytest.mark.parametrize("value", ["0", "-1", "two", "١"])
def test_a_bad_budget_says_what_is_wrong(monkeypatch, value):
    monkeypatch.setenv("ASSISTANT_LEARNER_THREADS", value)
    with pytest.raises(ValueError, match="ASSISTANT_LEARNER_THREADS must be a whole number"):
        Config()
