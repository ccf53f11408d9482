"""An adapter version's directory: its file layout and its manifest (`meta.json`), read in one place.

Contract: this module only touches files (no torch, no peft, no database), so the chat side
(assistant/) and the training side (learning/) share it without importing each other.
`read_manifest(path)` -> a `Manifest`: every field of meta.json typed and checked, a field of the
wrong type treated as absent (and logged), never an error; the fields a file written by an older
version lacks (scope, margin, told, personal, habits, experts, stats, ...) get their defaults, and keys
this code does not know are kept in `extra` (a newer version's file loads, and is written back whole).
A missing or unreadable meta.json is an empty Manifest. `write_manifest(path, manifest)` writes it
(learning/train.py, the one writer); `Manifest.from_dict` reads the copy the database keeps
(store/adapters.py "meta").
`read_meta(path)` -> the raw meta.json dict ({} when missing or unreadable);
`read_scope(path)` (a dict, or None: no scope), `read_experts(path)` (dicts, those whose files are
there), `habit_path(path)`, `read_lead(path)`, `weights_deleted(path)`: what serving needs from a
version directory.
"""
import json
import logging
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

log = logging.getLogger(__name__)

META_FILE = "meta.json"  # the manifest learning/train.py writes into every version directory
# Written into a version's directory before its weights are deleted (learning.pruning.prune_weights);
# the directory keeps its configs and meta.json, so what the version learned stays readable.
WEIGHTS_DELETED = "weights-deleted.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # what peft saves the LoRA tensors as
ADAPTER_CONFIG = "adapter_config.json"
EXPERTS_DIR = "experts"  # a version's per-correction experts (learning/experts.py)
HABIT_DIR = "habit"  # a version's habit adapter (learning/habits.py)
LEAD_FILE = "habit.json"  # in a habit adapter: {"openings", "lead_tokens"} (learning/train.py)


def weights_deleted(path) -> bool:
    """Were this version's weights deleted to save disk?"""
    return (Path(path) / WEIGHTS_DELETED).exists()


def has_weights(path) -> bool:
    """Does the adapter directory `path` hold a config and LoRA weights?"""
    path = Path(path)
    return (path / ADAPTER_CONFIG).exists() and any((path / f).exists() for f in WEIGHT_FILES)


def link_tree(src, dst) -> None:
    """Hard-link the files of the adapter directory `src` (not its subdirectories) into `dst`,
    created if needed (a copy where the filesystem cannot link): a later version keeps weights it
    did not change at no cost in disk. Safe because adapter files are never written again once
    their version exists (store_half_precision leaves a linked file alone)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in (META_FILE, WEIGHTS_DELETED):  # the new version writes its own
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copy2(f, dst / f.name)


def read_lead(adapter_path) -> tuple[int, tuple[str, ...]] | None:
    """(tokens, openings) of an adapter that leads (a habit adapter, learning/habits.py): it
    writes at most `tokens` tokens, of which only an opening they start with is kept. None: the
    adapter writes whole answers (every other adapter), or its habit.json is unreadable."""
    try:
        lead = json.loads((Path(adapter_path) / LEAD_FILE).read_text())
        tokens, openings = int(lead["lead_tokens"]), tuple(str(o) for o in lead["openings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (tokens, openings) if tokens > 0 and openings else None


def habit_path(path) -> Path | None:
    """The habit adapter inside the version directory `path`, if it has one."""
    habit = Path(path) / HABIT_DIR
    # without a readable lead it would write whole answers, which it must not (learning/habits.py)
    return habit if (habit / ADAPTER_CONFIG).exists() and read_lead(habit) else None


def read_meta(path) -> dict:
    """An adapter directory's meta.json, or {} when it is missing or unreadable."""
    try:
        meta = json.loads((Path(path) / META_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def read_experts(path) -> list[dict]:
    """The experts a version directory holds (meta.json "experts", learning/experts.py), those whose adapter files
    are all there, each with its "adapter" directory filled in; [] for a version without experts or an
    unreadable meta.json."""
    if path is None or weights_deleted(path):
        return []
    return [{**e.to_dict(), "adapter": e.directory} for e in read_manifest(path).experts or []
            if has_weights(Path(path) / EXPERTS_DIR / e.directory)]


def read_scope(path) -> dict | None:
    """`{"threshold", "margin", "prompts", "told", "personal", "sources"}` from an adapter directory's
    meta.json, or None (no scope). "told", "margin", "personal" and "sources" are missing from
    versions written before them: nothing told, the threshold alone decides, a prompt's own words
    say whether it is about the user, and no prompt's feedback is known (they read as None, [], []
    and {})."""
    scope = read_manifest(path).scope
    return None if scope is None or not scope.prompts else scope.to_dict()


# ---- the typed manifest ----------------------------------------------------------------------
def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _strings(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _ids(v) -> bool:  # feedback ids: strings (store/ids.py), numbers in hand-made versions (bench/routing.py)
    return isinstance(v, list) and all(isinstance(x, str) or _int(x) for x in v)


def _ids_by_text(v) -> bool:  # {prompt: feedback ids}
    return isinstance(v, dict) and all(isinstance(k, str) and _ids(x) for k, x in v.items())


def _optional(check):
    return lambda v: v is None or check(v)


def _kind(kind):
    return lambda v: isinstance(v, kind)


def _typed(cls, raw: dict, where: str) -> dict:
    """The keyword arguments of dataclass `cls` from `raw`: each known field whose value passes its
    check (`metadata["check"]`); a value that does not is left out (its default), and logged. The
    keys `cls` does not know go to `extra`."""
    known, extra = {}, {}
    names = {f.name: f for f in fields(cls) if f.name != "extra"}
    for key, value in raw.items():
        f = names.get(key)
        if f is None:
            extra[key] = value
        elif f.metadata["check"](value):
            known[key] = value
        else:
            log.warning("%s: %r is a %s, not what it should be; read as absent", where, key, type(value).__name__)
    return {**known, "extra": extra}


def _field(check, default=None, factory=None):
    if factory is not None:
        return field(default_factory=factory, metadata={"check": check})
    return field(default=default, metadata={"check": check})


@dataclass
class Scope:
    """meta.json "scope" (assistant/scope.py): the prompts a version answers and how near a prompt must be."""
    threshold: float | None = _field(_optional(_number))  # None: no scope
    prompts: list[str] = _field(_strings, factory=list)
    margin: float | None = _field(_optional(_number))  # None: written before it, the threshold alone decides
    told: list[str] = _field(_strings, factory=list)  # [] for versions written before it
    personal: list[str] = _field(_strings, factory=list)  # [] for versions written before it
    sources: dict = _field(_ids_by_text, factory=dict)  # prompt -> the feedback it was trained from
    # ({} for versions written before it: a take-back then reaches the shared adapter with the next version)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw, where: str = "scope") -> "Scope | None":
        """None when `raw` is no scope: not an object, or without a (numeric) threshold."""
        if not isinstance(raw, dict):
            return None
        scope = cls(**_typed(cls, raw, where))
        return None if scope.threshold is None else scope

    def to_dict(self) -> dict:
        return _as_dict(self)


@dataclass
class ExpertEntry:
    """One of meta.json "experts" (learning/experts.py): a correction's own adapter, `experts/<name>`."""
    name: str = _field(_kind(str), default="")
    feedback_ids: list = _field(_ids, factory=list)
    prompt: str | None = _field(_optional(_kind(str)))  # the corrected question
    answer: str = _field(_kind(str), default="")  # the corrected answer
    prompts: list[str] = _field(_strings, factory=list)  # every prompt it was trained on
    trained_in: int | None = _field(_optional(_int))  # the version that trained it
    adapter: str = _field(_kind(str), default="")  # its directory under experts/ when shared with the
    # other corrections of its group (LearnConfig.expert_group); "" (files before groups): `name`
    extra: dict = field(default_factory=dict)

    @property
    def directory(self) -> str:
        """The adapter directory under experts/ that holds this correction's weights."""
        return self.adapter or self.name

    @classmethod
    def from_dict(cls, raw, where: str = "experts") -> "ExpertEntry | None":
        """None (and logged) when `raw` names no expert: not an object, or no name."""
        entry = cls(**_typed(cls, raw, where)) if isinstance(raw, dict) else None
        if entry is None or not entry.name:
            log.warning("%s: an entry without a name is ignored", where)
            return None
        return entry

    def to_dict(self) -> dict:
        out = _as_dict(self)
        if not out["adapter"]:  # an entry written before groups reads back as it was
            del out["adapter"]
        return out


def expert_entries(raw: list, where: str = "experts") -> list[ExpertEntry]:
    """The entries of a meta.json "experts" list that name an expert (the others logged and left out)."""
    return [e for e in (ExpertEntry.from_dict(r, where) for r in raw) if e is not None]


def _scope(v) -> bool:
    return v is None or isinstance(v, dict)


def _experts(v) -> bool:
    return v is None or isinstance(v, list)


@dataclass
class Manifest:
    """An adapter version's meta.json (learning/train.py writes it; module docstring)."""
    version: int | None = _field(_optional(_int))
    parent_version: int | None = _field(_optional(_int))
    base_model: str | None = _field(_optional(_kind(str)))
    config: dict = _field(_kind(dict), factory=dict)  # the resolved LearnConfig
    feedback_ids: list = _field(_ids, factory=list)
    data_hash: str | None = _field(_optional(_kind(str)))
    package_version: str | None = _field(_optional(_kind(str)))
    device: str | None = _field(_optional(_kind(str)))
    torch: str | None = _field(_optional(_kind(str)))
    timings: dict = _field(_kind(dict), factory=dict)  # stage -> seconds ("<stage>_s")
    losses: list = _field(_kind(list), factory=list)
    stats: dict = _field(_kind(dict), factory=dict)  # stage -> its numbers
    rows: dict = _field(_kind(dict), factory=dict)  # {"sft", "pairs"}: how many it trained on
    scope: Scope | None = _field(_scope)  # None: answers every prompt
    habits: dict | None = _field(_optional(_kind(dict)))  # learning/habits.py; None: no habit
    experts: list[ExpertEntry] | None = _field(_experts)  # None: experts off
    extra: dict = field(default_factory=dict)  # every other key (learning/learner.py's job_id, trained_on, ...)

    @classmethod
    def from_dict(cls, raw, where: str = "meta.json") -> "Manifest":
        """The typed manifest of a meta.json's dict (anything else: an empty one)."""
        if not isinstance(raw, dict):
            return cls()
        known = _typed(cls, raw, where)
        if "scope" in known:
            known["scope"] = Scope.from_dict(known["scope"], f"{where} scope")
        if known.get("experts") is not None:
            known["experts"] = expert_entries(known["experts"], f"{where} experts")
        return cls(**known)

    def to_dict(self) -> dict:
        """The dict meta.json holds: `Manifest.from_dict(m.to_dict()) == m`."""
        out = _as_dict(self)
        out["scope"] = None if self.scope is None else self.scope.to_dict()
        out["experts"] = None if self.experts is None else [e.to_dict() for e in self.experts]
        return out

    def stat(self, *keys):
        """`stats[k1][k2]...`, or None where a level is missing or not an object."""
        value = self.stats
        for k in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(k)
        return value


def _as_dict(obj) -> dict:
    return {**{f.name: getattr(obj, f.name) for f in fields(obj) if f.name != "extra"}, **obj.extra}


def read_manifest(path) -> Manifest:
    """The typed manifest of the adapter directory `path` (module docstring); empty when its
    meta.json is missing or unreadable."""
    return Manifest.from_dict(read_meta(path), str(Path(path) / META_FILE))


def write_manifest(path, manifest: Manifest) -> None:
    """Write `manifest` as `path`/meta.json (learning/train.py, inside the version's temp directory)."""
    (Path(path) / META_FILE).write_text(json.dumps(manifest.to_dict(), indent=1))
