"""Could the chat model admit a match that MiniLM leaves just under recall's bar? Dev sets only.

Most paraphrases that reach no correction on the dev sets (bench/results/routing-rerank.md) are
near one, under recall's threshold and relative margin. This measures whether the chat model's
pointwise mutual information of the question with a correction's answer,
    PMI = log P(question | TEMPLATE(answer)) - log P(question | TEMPLATE("")),
per token of the question (assistant/rerank.py's TEMPLATE, base weights), tells those
paraphrases from the unrelated questions, ordinary requests and advice questions that are just
as near some correction. Only questions for which recall finds nothing today, and whose nearest
correction that recall's guards allow (first person, told names, advice) is at least FLOOR, are
candidates for such an admission; each is labelled by whether that correction is its own.

Run: python bench/admission.py [--floor 0.3] [--out admission]
"""
import argparse
import json
import tempfile
from pathlib import Path

from benchkit import RESULTS
from routing import ADVICE, DEV_SETS, dev_items, model_reranker, ordinary_requests, recall_memory

from assistant.embedders import make_embedder


def candidates(dev: Path, embedder, floor: float) -> list[dict]:
    """The dev set's questions recall leaves unmatched whose nearest allowed correction is >= floor."""
    facts, controls = dev_items(dev)
    _, advice = dev_items(ADVICE)
    questions = [(q, "paraphrase", f["id"]) for f in facts for q in f["paraphrases"]]
    questions += [(q, kind, None) for kind, qs in (("control", controls), ("advice", advice),
                                                   ("ordinary", ordinary_requests())) for q in qs]
    taught = {prompt: f["id"] for f in facts for prompt, _ in f["teach"]}
    with tempfile.TemporaryDirectory() as tmp:
        recall = recall_memory(Path(tmp) / "a", facts, embedder)
        loose = recall_memory(Path(tmp) / "b", facts, embedder,  # the guards alone: no bar, no margin
                              threshold=-1.0, relative_margin=None, margin=None, top_k=1)
        found = []
        for q, kind, own in questions:
            if recall.recall(q):
                continue
            nearest = loose.recall(q)
            if nearest and nearest[0]["score"] >= floor:
                fact = taught[nearest[0]["prompt"]]
                found.append({"dev_set": dev.name, "question": q, "kind": kind, "nearest": fact,
                              "answer": nearest[0]["correction"], "similarity": nearest[0]["score"],
                              "own": fact == own})
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--floor", type=float, default=0.3)
    p.add_argument("--out", default="admission")
    args = p.parse_args(argv)
    embedder = make_embedder("minilm")
    embedder.load()
    reranker = model_reranker()
    tok = reranker.served.tokenizer
    rows = []
    for dev in DEV_SETS:
        for c in candidates(dev, embedder, args.floor):
            with_answer, without = reranker.likelihoods(c["question"], [c["answer"], ""])
            n = len(tok(" " + c["question"], add_special_tokens=False)["input_ids"])
            rows.append({**c, "pmi_per_token": round((with_answer - without) / n, 3)})
    rows.sort(key=lambda r: -r["pmi_per_token"])
    right = [r for r in rows if r["own"]]
    wrong = [r for r in rows if not r["own"]]
    bars = []
    for r in right:  # admitting from each right one's PMI down: what else comes in
        bar = r["pmi_per_token"]
        bars.append((bar, sum(x["pmi_per_token"] >= bar for x in right), sum(x["pmi_per_token"] >= bar for x in wrong)))
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"floor": args.floor, "rows": rows}, indent=1) + "\n")
    lines = ["# Admitting near misses by the chat model's likelihood (dev sets only)", "",
             f"Command: `python bench/admission.py --floor {args.floor}`  ",
             f"Questions recall leaves unmatched whose nearest allowed correction is at least {args.floor} similar: "
             f"**{len(right)}** whose nearest is their own correction (a paraphrase an admission would save), "
             f"**{len(wrong)}** whose nearest is not (an admission would recall a wrong note).", "",
             "| PMI/token bar | own corrections admitted | wrong ones admitted |", "|---|---|---|"]
    lines += [f"| {bar} | {a}/{len(right)} | {b}/{len(wrong)} |" for bar, a, b in bars]
    lines += ["", "| PMI/token | kind | own | question | nearest | similarity | dev set |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['pmi_per_token']} | {r['kind']} | {'yes' if r['own'] else 'no'} | {r['question']} | {r['nearest']} "
              f"| {r['similarity']} | {r['dev_set']} |" for r in rows]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8 + len(bars)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
