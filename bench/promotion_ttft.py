"""Time to first token of the first questions after a promotion, while the server's adapter
watcher preloads the new version's experts in the background.

    python bench/promotion_ttft.py --home DIR [--from 9 --to 10] [--max-side-adapters 40] [--questions 12]

DIR is a home a season left behind (`python bench/season.py --home DIR`), copied (database and cache;
adapters linked), never changed. Each arm is a fresh runtime serving version FROM with the watcher
running; version TO is then activated in the registry, as `assistant learn` does, and the dev
season scenario's fact probes are asked at once, one after another, as the season benchmark does:
  pause   the watcher preloads an expert, pauses 0.05 s, preloads the next (before this bench)
  quiet   it preloads only while no chat turn is open and none began or ended within
          chat_routing.PRELOAD_QUIET_S (now)
The arms run pause, quiet, quiet, pause. `--max-side-adapters` above the version's number of
expert adapters leaves room to preload them all, as in a season's first cycles (the cap is 16;
a season's cycle 3 had room for about 9). The first reply (a control question) pays the swap
itself (the version's adapter and scope) and is reported apart. Results:
bench/results/promotion-ttft.{json,md}.
"""
import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchkit import RESULTS, ROOT  # noqa: F401 - sets the environment up first

# isort: split

from routed_ttft import copy_home, first_piece_s, p95  # noqa: E402

from assistant.config import Config  # noqa: E402
from assistant.runtime import Runtime  # noqa: E402
from store import adapters  # noqa: E402


def one_arm(arm: str, home: Path, work: Path, args, questions: list[str]) -> dict:
    cfg = Config(home=copy_home(home, work), model="embedded", max_side_adapters=args.max_side_adapters)
    rt = Runtime.create(cfg)
    if arm == "pause":  # the watcher as before: a fixed pause between two preloads
        rt.chat.activity.wait_quiet = lambda quiet_s, stop=None: not (stop or threading.Event()).wait(0.05)
    adapters.activate(rt.db, args.from_version)
    stop = rt.chat.watch_adapters()
    try:
        first_piece_s(rt, "Hello!")
        time.sleep(args.settle_s)  # FROM fully warm: its experts preloaded
        adapters.activate(rt.db, args.to_version)
        swap = first_piece_s(rt, "What is the capital of France?")
        times = [first_piece_s(rt, q) for q in questions]
    finally:
        stop()
    return {"arm": arm, "swap_s": round(swap, 3), "times": [round(t, 3) for t in times]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", required=True)
    ap.add_argument("--from", dest="from_version", type=int, default=9)
    ap.add_argument("--to", dest="to_version", type=int, default=10)
    ap.add_argument("--max-side-adapters", type=int, default=40)
    ap.add_argument("--questions", type=int, default=12)
    ap.add_argument("--settle-s", type=float, default=20.0)
    args = ap.parse_args()
    items = [json.loads(line) for line in (ROOT / "bench" / "season_dev.jsonl").read_text().splitlines() if line]
    questions = [p for it in items if it["kind"] == "fact" for p in it["probes"][:2]][:args.questions]
    work = Path(tempfile.mkdtemp(prefix="promotion-ttft-"))
    runs = [one_arm(arm, Path(args.home), work / f"{i}-{arm}", args, questions)
            for i, arm in enumerate(("pause", "quiet", "quiet", "pause"))]
    stats = {}
    for arm in ("pause", "quiet"):
        times = [t for r in runs if r["arm"] == arm for t in r["times"]]
        stats[arm] = {"p50_s": round(statistics.median(times), 3), "p95_s": round(p95(times), 3),
                      "max_s": max(times), "swap_s": [r["swap_s"] for r in runs if r["arm"] == arm]}
    result = {"command": "python bench/promotion_ttft.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "questions": questions, "stats": stats, "runs": runs,
              "quiet_over_pause": {k: round(stats["quiet"][k] / stats["pause"][k], 2) for k in ("p50_s", "p95_s")}}
    (RESULTS / "promotion-ttft.json").write_text(json.dumps(result, indent=1))
    md = (f"# Time to first token right after a promotion\n\n`{result['command']}` on {result['date']}: v"
          f"{args.from_version} -> v{args.to_version}, max_side_adapters {args.max_side_adapters}, "
          f"{len(questions)} fact probes asked at once after the swap, recall off; arms pause, quiet, quiet, "
          "pause (bench/promotion_ttft.py).\n\n| preloading | p50 s | p95 s | max s | swap (first reply) s |\n"
          "|---|---|---|---|---|\n"
          + "".join(f"| {arm} | {s['p50_s']} | {s['p95_s']} | {s['max_s']} | {', '.join(map(str, s['swap_s']))} |\n"
                    for arm, s in stats.items())
          + f"\nquiet / pause: p50 **{result['quiet_over_pause']['p50_s']}**, "
            f"p95 **{result['quiet_over_pause']['p95_s']}**.\n")
    (RESULTS / "promotion-ttft.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
