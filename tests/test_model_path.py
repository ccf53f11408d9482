"""Where the embedded model's GGUF file is found (no model is loaded here)."""
import pytest

from assistant import model_loading as model
from assistant.errors import ModelLoadError


def test_the_environment_names_another_copy_of_the_gguf(tmp_path, monkeypatch):
    copy = tmp_path / "smollm2.gguf"
    copy.write_bytes(b"GGUF")
    monkeypatch.setenv(model.EMBEDDED_GGUF_ENV, str(copy))
    assert model.embedded_gguf_path() == copy


def test_a_missing_override_fails_with_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv(model.EMBEDDED_GGUF_ENV, str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelLoadError, match=model.EMBEDDED_GGUF_ENV):
        model.embedded_gguf_path()


def test_without_the_override_the_package_file_is_used(monkeypatch):
    monkeypatch.delenv(model.EMBEDDED_GGUF_ENV, raising=False)
    assert model.embedded_gguf_path().name == model.EMBEDDED_GGUF
