"""Does a matched correction's answer fit the question? The measurement behind
the match policy's fit_tolerance (assistant/matching.py), on our dev sets only (never a teaching scenario's probes).

For every paraphrase of a dev fact: its own correction and MiniLM's nearest other corrections of
the same set (by each correction's search keys, as recall finds them). For each pair, the answer
shift: the mean log-probability per token of the correction's answer after the question it
corrected, minus after the paraphrase (the chat model's base weights, chat template, the
default system prompt). Only pairs MiniLM matches (similarity >= recall's threshold) count: the
check only turns matches away. Reports, per tolerance, the own answers kept and the other
answers turned away.

Run: python bench/answer_fit.py [--sets a.jsonl,b.jsonl] [--out answer-fit]
"""
import argparse
import json
from pathlib import Path

import numpy as np
from benchkit import RESULTS, ROOT
from routing import DEV_SETS, dev_items, shown

from assistant.config import DEFAULT_SYSTEM_PROMPT, Config
from assistant.embedders import make_embedder
from assistant.matching import RECALL_POLICY, search_keys, unit_rows
from assistant.model import ServedModel, resolve_model
from assistant.rerank import answer_logprobs

NEAREST = 3  # other corrections paired with each paraphrase
TOLERANCES = (0.5, 1.0, 1.5, 2.0, 2.25, 2.5, 3.0)
BATCH = 16


def pairs_of(dev: Path, embedder) -> tuple[list[tuple[str, str]], list[dict]]:
    """The corrections of a dev set, and each paraphrase paired with its own and its NEAREST nearest others."""
    facts, _ = dev_items(dev)
    corrections = [(f["id"], q, a) for f in facts for q, a in f["teach"]]
    keys, owner = [], []
    for i, (_, q, a) in enumerate(corrections):
        found = search_keys(q, a)
        keys += found
        owner += [i] * len(found)
    matrix, owner = unit_rows(embedder.encode(keys)), np.array(owner)
    asked = []
    for fact in facts:
        for q in fact["paraphrases"]:
            best = np.full(len(corrections), -1.0)
            np.maximum.at(best, owner, matrix @ unit_rows(embedder.encode([q]))[0])
            own = [i for i, c in enumerate(corrections) if c[0] == fact["id"]]
            others = [int(i) for i in np.argsort(-best) if corrections[i][0] != fact["id"]][:NEAREST]
            asked += [{"set": shown(dev), "question": q, "correction": i, "own": i in own,
                       "similarity": round(float(best[i]), 4)} for i in own + others]
    return [(q, a) for _, q, a in corrections], asked


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", type=lambda v: [Path(x).resolve() for x in v.split(",")],
                   default=DEV_SETS + [ROOT / "bench" / "recall_dev_company.jsonl"])
    p.add_argument("--out", default="answer-fit")
    args = p.parse_args(argv)
    cfg = Config()
    served = ServedModel(resolve_model(cfg.model, cfg.models_dir))
    embedder = make_embedder()
    rows = []
    for dev in args.sets:
        corrections, asked = pairs_of(dev, embedder)
        own = answer_logprobs(served, DEFAULT_SYSTEM_PROMPT, corrections)
        pairs = [(a["question"], corrections[a["correction"]][1]) for a in asked]
        found = [lp for i in range(0, len(pairs), BATCH)
                 for lp in answer_logprobs(served, DEFAULT_SYSTEM_PROMPT, pairs[i:i + BATCH])]
        for a, lp in zip(asked, found, strict=True):
            q, answer = corrections[a["correction"]]
            rows.append({**a, "corrected": q, "answer": answer, "shift": round(own[a["correction"]] - lp, 4)})
        print(f"{dev.name}: {len(asked)} pairs", flush=True)
    matched = [r for r in rows if r["similarity"] >= RECALL_POLICY.threshold]
    own, other = [r for r in matched if r["own"]], [r for r in matched if not r["own"]]
    table = [{"tolerance": t, "own_kept": sum(r["shift"] <= t for r in own), "own": len(own),
              "other_turned_away": sum(r["shift"] > t for r in other), "other": len(other)} for t in TOLERANCES]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"table": table, "pairs": rows}, indent=1))
    lines = ["# Does a matched correction's answer fit the question? (dev sets only)", "",
             f"Command: `python bench/answer_fit.py --out {args.out}`; sets: "
             + ", ".join(f"`{shown(s)}`" for s in args.sets) + ".  ",
             f"Pairs MiniLM matches (similarity >= {RECALL_POLICY.threshold}): each paraphrase with its own correction "
             f"and its {NEAREST} nearest others. Shipped tolerance: {RECALL_POLICY.fit_tolerance}.", "",
             "| tolerance | own answers kept | other answers turned away |", "|---|---|---|"]
    lines += [f"| {t['tolerance']} | {t['own_kept']}/{t['own']} | {t['other_turned_away']}/{t['other']} |" for t in table]
    lines += ["", "Own answers turned away at the shipped tolerance:", ""]
    lines += [f"- \"{r['question']}\" -> \"{r['answer']}\" (shift {r['shift']})" for r in own if r["shift"] > RECALL_POLICY.fit_tolerance]
    lines += ["", "Other answers still matched at the shipped tolerance, nearest first:", ""]
    lines += [f"- \"{r['question']}\" -> \"{r['answer']}\" (shift {r['shift']}, similarity {r['similarity']})"
              for r in sorted(other, key=lambda r: -r["similarity"]) if r["shift"] <= RECALL_POLICY.fit_tolerance]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote bench/results/{args.out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
