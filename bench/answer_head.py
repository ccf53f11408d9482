"""What applying the LM head only where an answer token is predicted saves in training
(learning/trainers.py `answer_logits_only`).

One correction's expert as the learner trains it (the correction and its 9 rewrites, 6 epochs
at the expert's learning rate, rank 16 on the embedded model), trained twice per round on the
same weights: with the LM head on every position (the model's own loss path) and on the answer
positions only. Rounds alternate the order; the figure is the ratio of the fastest times of
each in this one run (the machines are noisy). Dev data only: a correction of
bench/teach_dev.jsonl. Results: bench/results/answer-head.json and .md.

    .venv/bin/python bench/answer_head.py [--rounds 3]
"""
import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from benchkit import RESULTS, ROOT  # noqa: F401 - sets the environment up first

# isort: split

from assistant.model import convert_embedded  # noqa: E402
from learning import train, trainers  # noqa: E402
from learning.augment import augment_sft  # noqa: E402
from learning.config import LearnConfig  # noqa: E402

SYSTEM = {"role": "system", "content": "You are a helpful personal assistant."}


def dev_correction() -> list[dict]:
    first = json.loads((ROOT / "bench" / "teach_dev.jsonl").read_text().splitlines()[0])["teach"][0]
    return [{"messages": [SYSTEM, {"role": "user", "content": first["prompt"]},
                          {"role": "assistant", "content": first["correction"]}],
             "feedback_ids": ["f0"], "source": "correction"}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-head-"))
    base = convert_embedded(Path.home() / ".assistant" / "models")
    rows = dev_correction()
    rows += augment_sft(rows, n_rewrites=LearnConfig().augment_rewrites)
    lcfg = LearnConfig()
    lcfg = dataclasses.replace(lcfg, lora_r=lcfg.expert_r, lora_alpha=2 * lcfg.expert_r,
                               sft_epochs=lcfg.expert_epochs, sft_lr=lcfg.expert_lr)
    job = train.TrainJob(base_path=str(base), adapters_dir=work, version=1, sft_rows=rows, pairs=[], lcfg=lcfg)
    model, tok, device = train.load_trainable(job)
    sliced = trainers.slices_logits
    seconds: dict[str, list[float]] = {"every position": [], "answer positions": []}
    tokens = 0
    for r in range(args.rounds):
        for mode in (list(seconds) if r % 2 == 0 else list(seconds)[::-1]):
            trainers.slices_logits = sliced if mode == "answer positions" else (lambda m: False)
            t0 = time.perf_counter()
            tokens = trainers.run_sft(model, tok, rows, job, device, work / "w", [], stage="expert")["tokens"]
            seconds[mode].append(round(time.perf_counter() - t0, 2))
            print(f"round {r + 1}: LM head on {mode}: {seconds[mode][-1]} s", flush=True)
    trainers.slices_logits = sliced
    best = {m: min(s) for m, s in seconds.items()}
    ratio = round(best["answer positions"] / best["every position"], 3)
    run = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python bench/answer_head.py", "rows": len(rows),
           "epochs": lcfg.sft_epochs, "tokens": tokens, "seconds": seconds, "best": best, "ratio": ratio}
    (RESULTS / "answer-head.json").write_text(json.dumps(run, indent=1))
    lines = ["# LM head on answer positions only", "",
             f"`{run['command']}` on {run['date']}: one expert's SFT ({len(rows)} rows x {lcfg.sft_epochs:g} "
             f"epochs, {tokens} tokens), {args.rounds} rounds, alternating order.", "",
             "| LM head on | seconds per round | fastest |", "|---|---|---|"]
    lines += [f"| {m} | {', '.join(map(str, s))} | {best[m]} |" for m, s in seconds.items()]
    lines += ["", f"Answer positions / every position: **{ratio}**."]
    (RESULTS / "answer-head.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
