"""Sentence embedders: which one is chosen, one loaded model per process, and the optional MPNet
model's unpacking from its split wheels (checked against pinned hashes, never half-written)."""
import hashlib
import io
import zipfile

import numpy as np
import pytest

import assistant.embedders as embedders
from assistant.embedders import (
    ENV_EMBEDDER,
    MiniLMEmbedder,
    MPNetEmbedder,
    embedder_name,
    installed_embedders,
    make_embedder,
)


def test_default_and_environment_choose_the_embedder(monkeypatch):
    monkeypatch.delenv(ENV_EMBEDDER, raising=False)
    assert embedder_name() == "minilm" and isinstance(make_embedder(), MiniLMEmbedder)
    monkeypatch.setenv(ENV_EMBEDDER, " MPNet ")
    assert isinstance(make_embedder(), MPNetEmbedder)  # constructing loads nothing
    monkeypatch.setenv(ENV_EMBEDDER, "bert-large")
    with pytest.raises(ValueError, match="unknown embedder 'bert-large'.*minilm, mpnet"):
        make_embedder()
    assert "minilm" in installed_embedders()


def test_embedders_of_one_model_share_the_loaded_model():
    first, second = MiniLMEmbedder(), MiniLMEmbedder()
    assert first.load() is second.load()
    vectors = first.encode(["Where do I work?", "Who is my manager?"])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(second.encode(["Where do I work?"])[0], vectors[0], atol=1e-6)


def split_model(tmp_path, files: dict[str, bytes], parts: int = embedders.MPNET_PARTS):
    """A zip of `files` under all-mpnet-base-v2/, cut into `parts` pieces like the wheels'."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(f"all-mpnet-base-v2/{name}", data)
    blob = buf.getvalue()
    cut = -(-len(blob) // parts)
    paths = []
    for i in range(parts):
        p = tmp_path / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        p.write_bytes(blob[i * cut:(i + 1) * cut])
        paths.append(p)
    return paths


@pytest.fixture
def fake_mpnet(tmp_path, monkeypatch):
    files = {"config.json": b'{"model_type": "mpnet"}', "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}'}
    monkeypatch.setattr(embedders, "MPNET_FILES", {n: hashlib.sha256(d).hexdigest() for n, d in files.items()})
    parts = split_model(tmp_path, files)
    monkeypatch.setattr(embedders, "_mpnet_parts", lambda: parts)
    return files, parts


def test_mpnet_is_joined_unpacked_and_checked_once(tmp_path, fake_mpnet):
    files, _ = fake_mpnet
    target = tmp_path / "cache" / "all-mpnet-base-v2"
    assert MPNetEmbedder(target).model_dir() == target
    for name, data in files.items():
        assert (target / name).read_bytes() == data
    assert (target / ".verified").exists()
    assert [p.name for p in target.parent.iterdir()] == ["all-mpnet-base-v2"]  # no work files left
    (target / "config.json").write_bytes(b"changed after the check")
    MPNetEmbedder(target).model_dir()  # a verified directory is not unpacked again
    assert (target / "config.json").read_bytes() == b"changed after the check"


def test_a_tampered_part_is_an_error_and_leaves_nothing(tmp_path, fake_mpnet):
    _, parts = fake_mpnet
    data = bytearray(parts[0].read_bytes())
    at = data.index(b'"model_type"')  # inside the stored (uncompressed) config.json
    data[at + 1:at + 11] = b"MODEL_TYPE"
    parts[0].write_bytes(bytes(data))
    target = tmp_path / "cache" / "all-mpnet-base-v2"
    with pytest.raises(RuntimeError, match="not the pinned archive.*make install-mpnet"):
        MPNetEmbedder(target).model_dir()
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_missing_mpnet_wheels_say_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("all-mpnet") else real(name, *a))
    with pytest.raises(RuntimeError, match="make install-mpnet"):
        embedders._mpnet_parts()
    assert installed_embedders() == ["minilm"]


def test_a_file_that_differs_from_its_pin_is_named(tmp_path, fake_mpnet, monkeypatch):
    monkeypatch.setitem(embedders.MPNET_FILES, "config.json", "0" * 64)  # a well-formed archive, other content
    target = tmp_path / "cache" / "all-mpnet-base-v2"
    with pytest.raises(RuntimeError, match="config.json differ from the pinned SHA-256"):
        MPNetEmbedder(target).model_dir()
    assert not target.exists()
