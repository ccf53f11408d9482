"""Questions about what the user took back: do they get a neighbouring fact instead?

A user who deletes a correction, or marks its conversation don't-learn, and then asks about it
again should get what the base model says, not the nearest other correction's answer
(assistant/matching.py MatchPolicy.taken_back_floor). Measured on our dev sets only, with the
stand-in version of bench/routing.py (scope and experts as the learner writes them, no training):
each set's facts in two halves by position; in turn one half is taught and the other taught and
taken back (a don't-learn conversation; the next version was trained without it). Counted: the
taken-back half's paraphrases that reach an expert or recall a note (a neighbour's fact: a leak),
and the taught half's paraphrases that reach their own expert and recall their own note first
(what the floor may cost).

Run: python bench/taken_back.py [--floor on|off] [--sets a.jsonl,b.jsonl] [--out taken-back]
"""
import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import routing
from benchkit import RESULTS

import assistant.scope as scope_mod
from assistant.embedders import make_embedder
from assistant.scope import AdapterScope
from learning.config import LearnConfig


def measure(dev: Path, embedder, lcfg: LearnConfig, reranker) -> dict:
    facts, _ = routing.dev_items(dev)
    out = {"dev_set": routing.shown(dev), "taken_back": 0, "to_an_expert": 0, "recalling": 0,
           "live": 0, "own_expert": 0, "own_note_first": 0, "leaks": [], "lost": []}
    with tempfile.TemporaryDirectory() as tmp:
        for half in (0, 1):
            live = [f for i, f in enumerate(facts) if i % 2 != half]
            gone = [f for i, f in enumerate(facts) if i % 2 == half]
            version = Path(tmp) / f"half-{half}" / "v1"
            owner, _ = routing.write_version(version, live, lcfg)
            scope = AdapterScope(embedder, reranker, routing.POLICIES["routing"])
            memory = routing.recall_memory(Path(tmp) / f"half-{half}" / "home", live, embedder, reranker,
                                           taken_back=gone)
            memory.warm().join()  # as the server does at start
            keys = memory.taken_back_keys()
            taught = {prompt: f["id"] for f in live for prompt, _ in f["teach"]}
            for fact in gone + live:
                for q in fact["paraphrases"]:
                    key, _ = scope.route(1, version, q, taken_back_keys=keys)
                    expert = owner[key[1].removeprefix(scope_mod.EXPERT_KEY)] if isinstance(key, tuple) else None
                    notes = [taught[r["prompt"]] for r in memory.recall(q)]
                    if fact in gone:
                        out["taken_back"] += 1
                        out["to_an_expert"] += bool(expert)
                        out["recalling"] += bool(notes)
                        if expert or notes:
                            out["leaks"].append({"question": q, "fact": fact["id"], "expert": expert, "notes": notes})
                    else:
                        out["live"] += 1
                        out["own_expert"] += expert == fact["id"]
                        out["own_note_first"] += bool(notes) and notes[0] == fact["id"]
                        if expert != fact["id"] or not notes or notes[0] != fact["id"]:
                            out["lost"].append({"question": q, "fact": fact["id"], "expert": expert, "notes": notes})
    return out


def markdown(results: list[dict], cmd: str) -> str:
    lines = ["# Questions about what the user took back (dev sets only)", "", f"Command: `{cmd}`  ",
             "Each set's facts in two halves; in turn one half taught, the other taught and taken back "
             "(don't-learn). A taken-back fact's paraphrase that reaches an expert or recalls a note gets a "
             "neighbour's fact.", "",
             "| dev set | taken back: to an expert | taken back: recalling a note | taught: own expert "
             "| taught: own note first |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['dev_set']} | {r['to_an_expert']}/{r['taken_back']} | {r['recalling']}/{r['taken_back']} "
                     f"| {r['own_expert']}/{r['live']} | {r['own_note_first']}/{r['live']} |")
    total = {k: sum(r[k] for r in results) for k in ("taken_back", "to_an_expert", "recalling", "live",
                                                      "own_expert", "own_note_first")}
    lines.append(f"| all | {total['to_an_expert']}/{total['taken_back']} | {total['recalling']}/{total['taken_back']} "
                 f"| {total['own_expert']}/{total['live']} | {total['own_note_first']}/{total['live']} |")
    lines += ["", "Taken-back questions answered from another fact:", ""]
    for r in results:
        lines += [f"- {Path(r['dev_set']).name}: \"{u['question']}\" ({u['fact']}, taken back) -> "
                  + ", ".join(([f"expert {u['expert']}"] if u["expert"] else []) + [f"note {n}" for n in u["notes"]])
                  for u in r["leaks"]]
    lines += ["", "Taught paraphrases not routed to their own expert or not recalling their own note first:", ""]
    for r in results:
        lines += [f"- {Path(r['dev_set']).name}: \"{u['question']}\" ({u['fact']}) -> expert {u['expert']}, "
                  f"notes {', '.join(u['notes']) or 'none'}" for u in r["lost"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--floor", choices=("on", "off"), default="on",
                   help="MatchPolicy.taken_back_floor for recall and routing (default %(default)s)")
    p.add_argument("--sets", type=lambda v: [Path(x).resolve() for x in v.split(",")], default=routing.DEV_SETS,
                   help="comma-separated scenario files (default: bench/routing.py's dev sets)")
    p.add_argument("--out", default="taken-back", help="file stem under bench/results")
    args = p.parse_args(argv)
    floor = args.floor == "on"
    for kind in ("routing", "recall"):
        routing.POLICIES[kind] = replace(routing.POLICIES[kind], taken_back_floor=floor)
    embedder = make_embedder("minilm")
    embedder.load()
    reranker = routing.model_reranker()
    results = []
    for dev in args.sets:
        r = measure(dev, embedder, LearnConfig(), reranker)
        results.append(r)
        print(f"{Path(r['dev_set']).name:28s} taken back: {r['to_an_expert']}/{r['taken_back']} to an expert, "
              f"{r['recalling']} recalling; taught: own expert {r['own_expert']}/{r['live']}, "
              f"own note first {r['own_note_first']}", flush=True)
    sets = "" if args.sets == routing.DEV_SETS else " --sets " + ",".join(map(routing.shown, args.sets))
    cmd = f"python bench/taken_back.py --floor {args.floor}{sets} --out {args.out}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"command": cmd, "results": results}, indent=2))
    (RESULTS / f"{args.out}.md").write_text(markdown(results, cmd))
    print(f"wrote bench/results/{args.out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
