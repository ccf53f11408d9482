"""Time to first token of routed chat turns in a home with many experts, with the serving path's
two costs that grow with the number of loaded adapters switched on and off in one run.

    python bench/routed_ttft.py --home DIR [--max-side-adapters 8] [--questions 80]

DIR is a home a season left behind (`python bench/season.py --cycles-limit 4 --home DIR`); it is
copied (database and cache; adapters linked), never changed. Two runtimes of the same home, both
on its active version, answer the same questions in turn (a/b, then b/a), each turn through
`ChatService` as the API does (routing, reranking under the base weights, the expert's load, the
first generated piece), recall off:
  peft    the base weights by peft's `disable_adapter` (it inspects every loaded adapter's layers
          on each call), and an expert past `max_side_adapters` loaded anew (peft builds its LoRA
          modules) while the least recently used one is unloaded: the serving path before c1fc1f7.
  now     `ServedModel.base_weights` (a flag on the LoRA layers), an expert past the cap taking
          over the least recently used one's layers (assistant/adapter_slots.py), and the
          version's experts preloaded into free room as the server's adapter watcher does after a
          promotion (timed apart: the server does it in the background).
Both arms start from a fresh runtime, as a server right after a promotion: the first question
routed to each expert pays its load unless it was preloaded.
`--max-side-adapters` below the home's number of expert groups makes the cap bite as it does in a
home with more corrections (Config.max_side_adapters is 16; 122 corrections make about 30 groups).
Questions: the dev season scenario's fact probes (2 per item), which reach experts, the base weights
and everything between. Results: bench/results/routed-ttft.{json,md}.
"""
import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchkit import RESULTS, ROOT  # noqa: F401 - sets the environment up first

# isort: split

from assistant.config import Config  # noqa: E402
from assistant.model import ServedModel  # noqa: E402
from assistant.runtime import Runtime  # noqa: E402


def copy_home(home: Path, to: Path) -> Path:
    """The home's database and cache copied, its models and adapters linked (read only here)."""
    to.mkdir(parents=True)
    for item in home.iterdir():
        if item.name in ("models", "adapters"):
            (to / item.name).symlink_to(item.resolve())
        elif item.is_dir():
            shutil.copytree(item, to / item.name)
        elif item.name != "learner.lock":
            shutil.copy2(item, to / item.name)
    return to


def as_before(served: ServedModel) -> None:
    """The serving path before c1fc1f7, on this instance only."""
    served.base_weights = lambda: (served.model.disable_adapter() if served.model is not served.base
                                   else contextlib.nullcontext())
    served._spare = lambda cfg, key: ServedModel._spare(served, cfg, None)  # no side adapter's layers reused


def first_piece_s(rt: Runtime, question: str) -> float:
    t0 = time.perf_counter()
    turn = rt.chat.start_turn(question, max_new_tokens=4, recall=False)
    pieces = rt.chat.pieces(turn, source="bench", max_new_tokens=4)
    next(pieces)
    elapsed = time.perf_counter() - t0
    pieces.close()
    return elapsed


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", required=True, help="a home with versions and experts (a season's)")
    ap.add_argument("--max-side-adapters", type=int, default=Config.max_side_adapters)
    ap.add_argument("--questions", type=int, default=80)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="routed-ttft-"))
    items = [json.loads(line) for line in (ROOT / "bench" / "season_dev.jsonl").read_text().splitlines() if line]
    questions = [p for it in items if it["kind"] in ("fact", "update") for p in it["probes"][1:3]][:args.questions]
    runtimes = {}
    for arm in ("peft", "now"):
        cfg = Config(home=copy_home(Path(args.home), work / arm), model="embedded",
                     max_side_adapters=args.max_side_adapters)
        runtimes[arm] = Runtime.create(cfg)
        if arm == "peft":
            as_before(runtimes[arm].model)
        first_piece_s(runtimes[arm], "Hello!")  # warm: the active version loaded, the scope embedded
        if arm == "now":  # what the server's adapter watcher now does after a promotion, in the background
            t0 = time.perf_counter()
            runtimes[arm].chat._preload_experts(*runtimes[arm].chat.serving_adapter())
            preload_s = time.perf_counter() - t0
    times = {arm: [] for arm in runtimes}
    for i, q in enumerate(questions):
        for arm in (("peft", "now") if i % 2 == 0 else ("now", "peft")):
            times[arm].append(first_piece_s(runtimes[arm], q))
    stats = {arm: {"p50_s": round(statistics.median(t), 3), "p95_s": round(p95(t), 3), "mean_s": round(statistics.fmean(t), 3)}
             for arm, t in times.items()}
    groups = len({f.stat().st_ino for f in Path(args.home, "adapters").glob("v*/experts/*/adapter_model.*")})
    result = {"command": "python bench/routed_ttft.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M"),
              "questions": len(questions), "preload_s": round(preload_s, 1),
              "max_side_adapters": args.max_side_adapters, "expert_adapters": groups,
              "stats": stats, "now_over_peft": {k: round(stats["now"][k] / stats["peft"][k], 2) for k in stats["now"]},
              "times": times}
    (RESULTS / "routed-ttft.json").write_text(json.dumps(result, indent=1))
    md = (f"# Time to first token of routed turns\n\n`{result['command']}` on {result['date']}: {len(questions)} "
          f"questions, {groups} expert adapters in the home, max_side_adapters {args.max_side_adapters}, recall "
          "off, the arms alternating per question; each arm starts as a server does after a promotion (the `now` "
          f"arm with its experts preloaded, {result['preload_s']} s in the background).\n\n"
          "| serving path | p50 s | p95 s | mean s |\n|---|---|---|---|\n"
          + "".join(f"| {arm} | {s['p50_s']} | {s['p95_s']} | {s['mean_s']} |\n" for arm, s in stats.items())
          + f"\nnow / peft: p50 **{result['now_over_peft']['p50_s']}**, p95 **{result['now_over_peft']['p95_s']}**.\n")
    (RESULTS / "routed-ttft.md").write_text(md)
    print(md)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
