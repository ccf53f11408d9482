"""What a correction's expert costs at serving time: the first prompt routed to an expert that is
not loaded yet reads its LoRA from disk (learning/experts.py; the served model keeps it loaded
afterwards), so that reply starts later than the next one.

Adapters of the learner's shapes with random weights (bench/swap.py make_adapters): a version's
shared adapter, loaded and current, and EXPERTS experts of rank `LearnConfig.expert_r`. Each
expert answers PROMPT twice through `ServedModel.generate` (greedy, 16 tokens): first cold (the
load included), then warm. Results: bench/results/experts.json and experts.md.

    .venv/bin/python bench/experts.py
"""
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchkit import RESULTS, ROOT  # noqa: F401 - sets the environment up first

# isort: split

from swap import make_adapters  # noqa: E402

from assistant.model import ServedModel, convert_embedded  # noqa: E402
from learning.config import LearnConfig  # noqa: E402

EXPERTS = 8
PROMPT = [{"role": "user", "content": "What is the name of my dog?"}]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-experts-"))
    base = str(convert_embedded(work / "models"))
    shared = make_adapters(base, work, versions=(1,))[1]
    experts = make_adapters(base, work / "experts", versions=range(2, 2 + EXPERTS), rank=LearnConfig().expert_r)
    served = ServedModel(base)
    served.use(1, shared)
    served.generate(PROMPT, max_new_tokens=16, version=1, adapter_path=shared)  # warm the shared path
    rows = []
    for v, path in experts.items():
        key = (1, f"expert:{v}")
        times = {}
        for run in ("cold", "warm"):  # the served model's clock starts before it selects (and loads) the adapter
            g = served.generate(PROMPT, max_new_tokens=16, version=key, adapter_path=path)
            times[run] = {"first_token_ms": round(g.ttft_ms, 1), "reply_ms": round(g.duration_ms, 1)}
        rows.append(times)
        served.use(1, shared)
    med = {run: {k: statistics.median(r[run][k] for r in rows) for k in ("first_token_ms", "reply_ms")}
           for run in ("cold", "warm")}
    size = sum(f.stat().st_size for f in next(iter(experts.values())).glob("adapter_model.*"))
    result = {"command": "python bench/experts.py", "date": time.strftime("%Y-%m-%d %H:%M"), "experts": EXPERTS,
              "expert_r": LearnConfig().expert_r, "expert_mb": round(size / 1e6, 1), "median": med,
              "cold_over_warm_first_token": round(med["cold"]["first_token_ms"] / med["warm"]["first_token_ms"], 2),
              "runs": rows}
    (RESULTS / "experts.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "experts.md").write_text(
        f"# A correction's expert at serving time\n\n`{result['command']}` on {result['date']}: {EXPERTS} experts of "
        f"rank {result['expert_r']} ({result['expert_mb']} MB each), greedy 16 tokens, medians.\n\n"
        "| first use of an expert | time to first token | whole reply |\n|---|---|---|\n"
        + "".join(f"| {run} | {med[run]['first_token_ms']:.0f} ms | {med[run]['reply_ms']:.0f} ms |\n"
                  for run in ("cold", "warm"))
        + f"\nCold / warm time to first token: **{result['cold_over_warm_first_token']}**.\n")
    print((RESULTS / "experts.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
