"""Shared fixtures: a temp ASSISTANT_HOME per test, a tiny local model, the real embedded model."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from assistant.config import Config  # noqa: E402
from tests.tiny import build_tiny_model  # noqa: E402


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Every test gets its own assistant home: database, models and adapters under tmp."""
    h = tmp_path / "home"
    monkeypatch.setenv("ASSISTANT_HOME", str(h))
    return h


@pytest.fixture
def db(home):
    from store import open_db

    return open_db(home / "assistant.db")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def cfg(home, tiny_model_path):
    return Config(home=home, model=str(tiny_model_path), default_max_new_tokens=8)


@pytest.fixture(scope="session")
def tiny_served(tiny_model_path):
    """One ServedModel on the tiny model, shared: loading is the slow part."""
    from assistant.model import ServedModel

    return ServedModel(str(tiny_model_path))


@pytest.fixture
def served(tiny_model_path):
    """A fresh ServedModel for tests that load adapters (they change its state)."""
    from assistant.model import ServedModel

    return ServedModel(str(tiny_model_path))


@pytest.fixture(scope="session")
def embedded_model_dir(tmp_path_factory):
    """The real SmolLM2-135M-Instruct, converted once per test session (about 20 s)."""
    from assistant.model import convert_embedded

    return convert_embedded(tmp_path_factory.mktemp("models"))
