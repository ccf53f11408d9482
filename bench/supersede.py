"""Supersession by meaning on its dev set: updates caught, different facts wrongly merged.

Each line of the dev set is a pair of corrections (old, new) that either update one fact
("same": true) or state two different facts. For every pair: MiniLM's candidate test, the chat
model's answer and question shifts (assistant/supersede.py) and the decision of the policy in
use. Targets: no wrong merge; as many updates as possible.

    python bench/supersede.py [--dev-set bench/supersede_dev.jsonl]
"""
import argparse
import json
import sys
from pathlib import Path

from benchkit import RESULTS, ROOT  # noqa: F401 - sets the environment up first

# isort: split

from assistant.config import DEFAULT_SYSTEM_PROMPT, Config  # noqa: E402
from assistant.embedders import embedder_name, make_embedder  # noqa: E402
from assistant.model import ServedModel, resolve_model  # noqa: E402
from assistant.supersede import Correction, ModelJudge, Superseder  # noqa: E402


def measure(rows: list[dict], superseder: Superseder) -> list[dict]:
    out = []
    for r in rows:
        old, new = Correction("old", *r["old"]), Correction("new", *r["new"])
        candidate = bool(superseder.candidates(new, [old]))
        answer_shift, question_shift = superseder.shifts(new, old)
        out.append({"id": r["id"], "same": r["same"], "candidate": candidate,
                    "answer_shift": round(answer_shift, 3), "question_shift": round(question_shift, 3),
                    "merged": superseder.decide(new, [old]) == ["old"]})
    return out


def markdown(found: list[dict], policy, dev_set: str) -> str:
    updates = [f for f in found if f["same"]]
    others = [f for f in found if not f["same"]]
    lines = [f"# Supersession by meaning — {dev_set}", "",
             f"Policy: {policy}; sentence embedder `{embedder_name()}`. `answer shift`, `question shift`: how "
             "much less likely (mean log-probability per token) under the base weights; see assistant/supersede.py.",
             "", f"- updates caught: **{sum(f['merged'] for f in updates)}/{len(updates)}**",
             f"- different facts wrongly merged: **{sum(f['merged'] for f in others)}/{len(others)}** (target 0)", "",
             "| pair | same fact | MiniLM candidate | answer shift | question shift | merged |", "|---|---|---|---|---|---|"]
    for f in sorted(found, key=lambda f: (not f["same"], f["answer_shift"])):
        lines.append(f"| {f['id']} | {'yes' if f['same'] else 'no'} | {'yes' if f['candidate'] else 'no'} | "
                     f"{f['answer_shift']:.2f} | {f['question_shift']:.2f} | {'**yes**' if f['merged'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dev-set", default=str(Path(__file__).parent / "supersede_dev.jsonl"))
    ap.add_argument("--out", default="supersede")
    args = ap.parse_args(argv)
    rows = [json.loads(line) for line in Path(args.dev_set).read_text().splitlines() if line.strip()]
    cfg = Config()
    served = ServedModel(resolve_model(cfg.model, cfg.models_dir))
    superseder = Superseder(make_embedder(), ModelJudge(served, DEFAULT_SYSTEM_PROMPT))
    found = measure(rows, superseder)
    md = markdown(found, superseder.policy, Path(args.dev_set).name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(found, indent=1))
    (RESULTS / f"{args.out}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
