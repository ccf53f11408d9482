"""An adapter version's directory: its file layout and its manifest (`meta.json`), read in one place.

Contract: this module only touches files (no torch, no peft, no database), so the chat side
(assistant/) and the training side (learning/) share it without importing each other.
`read_meta(path)` -> the raw meta.json dict ({} when missing or unreadable);
`read_scope(path)`, `read_experts(path)`, `habit_path(path)`, `read_lead(path)`,
`weights_deleted(path)`: what serving needs from a version directory.
"""
import json
from pathlib import Path

META_FILE = "meta.json"  # the manifest learning/train.py writes into every version directory
# Written into a version's directory before its weights are deleted (learning.versions.prune_weights);
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
    are all there; [] for a version without experts or an unreadable meta.json."""
    if path is None or weights_deleted(path):
        return []
    found = []
    for e in read_meta(path).get("experts") or []:
        if e.get("name") and has_weights(Path(path) / EXPERTS_DIR / str(e.get("name", ""))):
            found.append(e)
    return found


def read_scope(path) -> dict | None:
    """`{"threshold", "margin", "prompts", "told", "personal"}` from an adapter directory's meta.json,
    or None (no scope). "told", "margin" and "personal" are missing from versions written before
    them: nothing told, the threshold alone decides, and a prompt's own words say whether it is
    about the user."""
    scope = read_meta(path).get("scope")
    if not scope or scope.get("threshold") is None or not scope.get("prompts"):
        return None
    return scope
