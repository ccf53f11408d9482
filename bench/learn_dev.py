"""Tuning the learner on OUR dev scenario (bench/teach_dev.jsonl), never on the judged one.

One cycle per call, gate included, from the same prepared home (the dev corrections fed through
the API once, `--prepare`), with LearnConfig overrides; the gate's canary verdict and the dev
probes (weights alone) are appended to bench/results/learn-dev.jsonl and the table
bench/results/learn-dev.md is rewritten from all rows.

    python bench/learn_dev.py --prepare                      # once: fresh home, corrections fed
    python bench/learn_dev.py NAME [FIELD=VALUE ...]         # e.g. rank32 lora_r=32 lora_alpha=64

Another dev scenario: `--scenario bench/season_dev.jsonl --cycles 2` (its facts, habits and
controls of cycles 1-2 taught at once) on both calls; its home is prepared apart. Each row also
counts leaks: replies saying another taught item's answer (bench/season.py `leaks_in`).
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchkit import RESULTS, ROOT  # noqa: F401 - sets the environment up first

# isort: split

from learning import learner, probes  # noqa: E402
from learning.config import LearnConfig  # noqa: E402

DEV = ROOT / "bench" / "teach_dev.jsonl"
OUT = RESULTS / "learn-dev"
TAUGHT_AT_ONCE = ("fact", "style", "control")  # one cycle: no updates or take-backs


def scenario_items(path: Path, cycles: int | None) -> list[dict]:
    """The items of a scenario one cycle teaches: all of them, or with `cycles`, the facts, habits
    and controls of its first `cycles` cycles."""
    items = probes.load_scenario(path)
    if cycles is None:
        return items
    return [it for it in items if it["kind"] in TAUGHT_AT_ONCE and it.get("cycle", 1) <= cycles]


def prepared_home(path: Path, cycles: int | None) -> Path:
    suffix = "" if (path, cycles) == (DEV, None) else f"-{path.stem}" + (f"-c{cycles}" if cycles else "")
    return Path(tempfile.gettempdir()) / f"learn-dev-home{suffix}"


def prepare(items: list[dict], home: Path) -> None:
    from learn import feed_corrections

    from assistant.config import Config
    from assistant.runtime import Runtime

    shutil.rmtree(home, ignore_errors=True)
    runtime = Runtime.create(Config(home=home, model="embedded"), with_memory=False)
    seconds = feed_corrections(runtime, probes.corrections(items), max_tokens=64)
    print(f"prepared {home} in {seconds:.0f} s")


def run(name: str, overrides: dict, items: list[dict], prepared: Path, scenario: str) -> dict:
    from season import leak_phrases, leaks_in

    from assistant.config import Config
    from assistant.runtime import Runtime
    from store import adapters

    home = Path(tempfile.mkdtemp(prefix=f"learn-dev-{name}-"))
    shutil.copytree(prepared, home, dirs_exist_ok=True)
    cfg = Config(home=home, model="embedded")
    runtime = Runtime.create(cfg, with_memory=False)
    try:
        t0 = time.perf_counter()
        result = learner.run_cycle(cfg, LearnConfig(**overrides))
        cycle_s = round(time.perf_counter() - t0)
        row = adapters.get_adapter(runtime.db, result["version"])
        scored = probes.score_probes(runtime.model, items, version=row["version"],
                                     path=row["path"], scope=runtime.chat.scope)
        files = [f for f in Path(row["path"]).rglob("*") if f.is_file()]
        experts_mb = sum(f.stat().st_size for f in files if "experts" in f.parts) / 1e6
        version_mb = sum(f.stat().st_size for f in files) / 1e6
    finally:
        shutil.rmtree(home, ignore_errors=True)
    phrases = leak_phrases(items, {"taught": {it["id"] for it in items}})
    by_id = {it["id"]: it for it in items}
    leaks = [{"prompt": p["prompt"], "reply": p["reply"], "said": said} for p in scored["probes"]
             if (said := leaks_in(p, p["reply"], phrases, by_id))]
    return {"name": name, "scenario": scenario, "set": overrides, "date": time.strftime("%Y-%m-%d %H:%M"),
            "cycle_s": cycle_s, "reasons": result.get("reasons"), "summary": scored["summary"],
            "experts_mb": round(experts_mb, 1), "version_mb": round(version_mb, 1),
            "stages_s": {k: round(v, 1) for k, v in (result.get("timings") or {}).items()},
            "leaks": leaks, "misses": [{k: p[k] for k in ("family", "prompt", "reply")} for p in scored["probes"] if not p["passed"]]}


def markdown(rows: list[dict]) -> str:
    lines = ["# Tuning the learner on our dev scenarios (bench/teach_dev.jsonl unless the run names another)", "",
             "`python bench/learn_dev.py NAME FIELD=VALUE...`: one cycle (gate included) from the same fed "
             "home; the gate's verdicts, then the dev probes with the candidate alone (recall off), and the "
             "replies saying another taught item's answer (leaks, counted since the `scenario` rows). Base model "
             "on teach_dev: re-asks 0/16, paraphrases 0/48, style 0/4, controls 15/20; canaries 40/40.", "",
             "| run | overrides | gate | dev probes (weights alone) | cycle s | experts MB / version MB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        scenario = f" ({r['scenario']})" if r.get("scenario", "teach_dev.jsonl") != "teach_dev.jsonl" else ""
        leaks = f" leaks {len(r['leaks'])}" if "leaks" in r else ""
        lines.append(f"| {r['name']}{scenario} | `{json.dumps(r['set'])}` | {'; '.join(r['reasons'] or [])} | "
                     + " ".join(f"{f} {s[f]['passed']}/{s[f]['total']}" for f in probes.FAMILIES if s[f]["total"])
                     + leaks
                     + f" | {r['cycle_s']}{'*' if r.get('cycle_s_with_scoring') else ''} | "
                     + (f"{r['experts_mb']} / {r['version_mb']} |" if "experts_mb" in r else "- |"))
    if any(r.get("cycle_s_with_scoring") for r in rows):
        lines += ["", "\\* measured with the dev probe scoring included (about 40 s)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepare", action="store_true")
    p.add_argument("--scenario", type=lambda s: Path(s).resolve(), default=DEV, help="a dev scenario (default %(default)s)")
    p.add_argument("--cycles", type=int, help="teach only the facts, habits and controls of these first cycles")
    p.add_argument("name", nargs="?")
    p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE")
    args = p.parse_args(argv)
    items, home = scenario_items(args.scenario, args.cycles), prepared_home(args.scenario, args.cycles)
    if args.prepare:
        prepare(items, home)
        return 0
    if not args.name or not home.exists():
        p.error("give a run NAME, after --prepare (with the same --scenario and --cycles)")
    scenario = args.scenario.name + (f" cycles 1-{args.cycles}" if args.cycles else "")
    row = run(args.name, {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.overrides)}, items, home, scenario)
    log = OUT.with_suffix(".jsonl")
    with log.open("a") as f:
        f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    OUT.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows[-1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
