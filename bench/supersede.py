"""Supersession by meaning on its dev sets: updates caught, different facts wrongly merged.

Two kinds of input:
- a pair set (`--pairs`): each line a pair of corrections (old, new) that either update one fact
  ("same": true) or state two different facts;
- teaching scenarios (`--scenarios`, bench/teach.py's shape): every correction in teaching order
  against the earlier ones MiniLM proposes (assistant/supersede.py `candidates`), as the server
  meets them; a pair is one fact when the new item is an update "of" the old one.
For every pair: the chat model's shifts (assistant/supersede.py `Shifts`) and the decision of the
policy in use (merged, offered to the user to confirm, or neither). Targets: no wrong merge; as
many updates as possible. With `--matcher`, also whether recall's matcher (assistant/matching.py,
RECALL_POLICY, the chat's reranker and answer-fit check) finds the old correction for the new
question: would a reply to the new question have been answered from the old correction?

    python bench/supersede.py [--pairs bench/supersede_dev.jsonl] [--scenarios a.jsonl,b.jsonl] [--matcher] [--out supersede]
"""
import argparse
import json
import sys
from pathlib import Path

from benchkit import RESULTS, ROOT  # noqa: F401 - sets the environment up first

# isort: split

from assistant.config import DEFAULT_SYSTEM_PROMPT, Config  # noqa: E402
from assistant.embedders import embedder_name, make_embedder  # noqa: E402
from assistant.matching import (  # noqa: E402
    RECALL_POLICY,
    KeyIndex,
    learned,
    ordinary_requests,
    rank,
    same_thing,
    search_keys,
    unit_rows,
)
from assistant.model import ServedModel, resolve_model  # noqa: E402
from assistant.rerank import chat_reranker  # noqa: E402
from assistant.supersede import Correction, ModelJudge, Superseder  # noqa: E402


def pair_set(path: str) -> list[tuple[str, bool, Correction, Correction]]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [(r["id"], r["same"], Correction("old", *r["old"]), Correction("new", *r["new"])) for r in rows]


def scenario_pairs(path: str, superseder: Superseder) -> list[tuple[str, bool, Correction, Correction]]:
    """Each taught correction against the earlier ones MiniLM proposes, in teaching order (a
    scenario's cycle, updates after the facts of their cycle)."""
    items = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    items = [i for i in items if i.get("kind") in ("fact", "update", "forget")]
    items.sort(key=lambda i: (i.get("cycle", 1), i.get("kind") == "update"))
    taught, about, out = [], {}, []
    for item in items:
        for t in item["teach"] if isinstance(item["teach"], list) else [item["teach"]]:
            new = Correction(item["id"], t["prompt"], t["correction"])
            for old in superseder.candidates(new, taught):
                same = item.get("of") is not None and item.get("of") in (old.id, about[old.id].get("of"))
                out.append((f"{Path(path).stem}: {old.id} < {new.id}", same, old, new))
            taught.append(new)
            about[new.id] = item
    return out


class RecallMatcher:
    """Does recall's matcher find correction `c` for `text`, with `c` the only one stored?"""

    def __init__(self, embedder, reranker):
        self.embedder, self.reranker = embedder, reranker
        self.ordinary, self.things = ordinary_requests(embedder), same_thing(embedder)

    def finds(self, text: str, c: Correction) -> bool:
        keys = search_keys(c.prompt, c.answer, RECALL_POLICY)
        index = KeyIndex(unit_rows(self.embedder.encode(keys)), [0] * len(keys), [learned(c.prompt, c.answer)] * len(keys))
        top = index.candidates(text, unit_rows(self.embedder.encode([text]))[0], RECALL_POLICY, self.ordinary,
                               self.things, limit=1)
        return bool(top) and bool(rank(text, top, [(c.prompt, c.answer)], self.reranker, RECALL_POLICY))


def measure(pairs, superseder: Superseder, candidates_only: bool, matcher: RecallMatcher | None = None) -> list[dict]:
    out = []
    for name, same, old, new in pairs:
        s = superseder.shifts(new, old)
        candidate = candidates_only or bool(superseder.candidates(new, [old]))
        out.append({"id": name, "same": same, "candidate": candidate, "answer_shift": round(s.answer, 3),
                    "question_shift": round(s.question, 3), "worst_token": round(s.worst_token, 3),
                    "merged": candidate and superseder.same_fact(s), "asked": candidate and superseder.unsure(s)})
        if matcher is not None:
            out[-1]["recall_finds_old"] = matcher.finds(new.prompt, old)
    return out


def markdown(found: list[dict], policy, source: str) -> str:
    updates = [f for f in found if f["same"]]
    others = [f for f in found if not f["same"]]
    lines = [f"# Supersession by meaning — {source}", "",
             f"Policy: {policy}; sentence embedder `{embedder_name()}`. Shifts: how much less likely "
             "(log-probability) under the base weights, mean per token and the worst token; see assistant/supersede.py.",
             "", f"- updates caught: **{sum(f['merged'] for f in updates)}/{len(updates)}**",
             f"- different facts wrongly merged: **{sum(f['merged'] for f in others)}/{len(others)}** (target 0)",
             f"- offered to the user to confirm (`ask_tolerance`): updates {sum(f['asked'] for f in updates)}/"
             f"{len(updates)}, different facts {sum(f['asked'] for f in others)}/{len(others)}"]
    if found and "recall_finds_old" in found[0]:
        lines += [f"- recall's matcher finds the old correction for the new question (`--matcher`): updates "
                  f"{sum(f['recall_finds_old'] for f in updates)}/{len(updates)}, different facts "
                  f"{sum(f['recall_finds_old'] for f in others)}/{len(others)}; of those offered to confirm, updates "
                  f"{sum(f['asked'] and f['recall_finds_old'] for f in updates)}, different facts "
                  f"{sum(f['asked'] and f['recall_finds_old'] for f in others)}"]
    lines += ["",
             "| pair | same fact | MiniLM candidate | answer shift | question shift | worst token | merged |",
             "|---|---|---|---|---|---|---|"]
    for f in sorted(found, key=lambda f: (not f["same"], f["worst_token"])):
        lines.append(f"| {f['id']} | {'yes' if f['same'] else 'no'} | {'yes' if f['candidate'] else 'no'} | "
                     f"{f['answer_shift']:.2f} | {f['question_shift']:.2f} | {f['worst_token']:.2f} | "
                     f"{'**yes**' if f['merged'] else 'asked' if f['asked'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default=str(Path(__file__).parent / "supersede_dev.jsonl"),
                    help="a pair set; '' for none")
    ap.add_argument("--scenarios", default="", help="comma-separated teaching scenarios")
    ap.add_argument("--matcher", action="store_true", help="also ask recall's matcher (slower)")
    ap.add_argument("--out", default="supersede")
    args = ap.parse_args(argv)
    cfg = Config()
    served = ServedModel(resolve_model(cfg.model, cfg.models_dir))
    superseder = Superseder(make_embedder(), ModelJudge(served, DEFAULT_SYSTEM_PROMPT))
    matcher = RecallMatcher(superseder.embedder, chat_reranker(served, cfg)) if args.matcher else None
    found, sources = [], []
    if args.pairs:
        found += measure(pair_set(args.pairs), superseder, candidates_only=False, matcher=matcher)
        sources.append(Path(args.pairs).name)
    for path in filter(None, args.scenarios.split(",")):
        found += measure(scenario_pairs(path, superseder), superseder, candidates_only=True, matcher=matcher)
        sources.append(Path(path).name)
    md = markdown(found, superseder.policy, ", ".join(sources))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(found, indent=1))
    (RESULTS / f"{args.out}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
