"""Benchmark of ONE learning cycle on the embedded model, fed through the real API.

1. A fresh ASSISTANT_HOME; a real server on 127.0.0.1 (assistant.server.start_server); every
   correction of the scenario given as a user would: POST /v1/chat/completions with the prompt,
   then POST /v1/feedback with rating "down" and the correction.
2. One cycle (learning.learner.run_cycle): data, SFT, DPO timed separately (evaluation and gate
   excluded unless --with-gate: bench/teach.py measures the whole loop).
3. Training speed: TRL's SFT tokens/s vs a bare PyTorch LoRA loop (peft + AdamW, the same rows,
   tokenized the same way, one epoch) measured in the same run -> ratio.
4. Every probe of the scenario scored with the candidate adapter alone (recall off, greedy
   32 tokens, learning/probes.py), base model vs candidate, by family.

The probes are only scored, never trained on. Results: bench/results/learn.json and learn.md.

    .venv/bin/python bench/learn.py [--scenario PATH] [--model embedded] [--with-gate]
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
from benchkit import DEFAULT_SCENARIO, RESULTS, ROOT  # noqa: E402,F401 - sets the environment up first

# isort: split

from learning import learner, probes  # noqa: E402
from learning.config import LearnConfig  # noqa: E402


def feed_corrections(runtime, corrections: list[dict], max_tokens: int) -> float:
    """Ask each prompt and correct the answer through the HTTP API; returns seconds."""
    import httpx

    from assistant.server import start_server

    server = start_server(runtime, ui=False)
    t0 = time.perf_counter()
    try:
        with httpx.Client(base_url=server.url, timeout=300) as http:
            for c in corrections:
                r = http.post("/v1/chat/completions", json={
                    "model": "assistant", "messages": [{"role": "user", "content": c["prompt"]}],
                    "max_tokens": max_tokens, "temperature": 0, "recall": False})
                r.raise_for_status()
                f = http.post("/v1/feedback", json={"turn_id": r.json()["id"], "rating": "down",
                                                    "correction": c["correction"]})
                f.raise_for_status()
    finally:
        server.stop()
    return time.perf_counter() - t0


def bare_lora_loop(cfg, lcfg: LearnConfig) -> dict:
    """The same SFT rows (corrections + rewrites + self-replay), tokenized like TRL does
    (chat template, loss on the answer only), trained one epoch by a plain peft + AdamW loop."""
    import torch

    from learning import datasets
    from learning.train import TrainJob, load_trainable, training_rows
    from store import open_db

    db = open_db(cfg.db_path)
    data = datasets.build(db, lcfg)
    job = TrainJob(base_path=str(cfg.models_dir / "smollm2-135m-instruct") if cfg.model == "embedded" else cfg.model,
                   adapters_dir=cfg.home / "bare", version=999, sft_rows=data.sft, pairs=[], lcfg=lcfg,
                   cache_dir=cfg.home / "cache")
    model, tok, device = load_trainable(job)
    _, rows, _ = training_rows(job, model, tok)  # no experts planned: every row trains
    seqs = []
    for r in rows:
        prompt = tok.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
        full = tok.apply_chat_template(r["messages"], return_dict=True)["input_ids"][:lcfg.sft_max_length]
        seqs.append((full, [-100] * len(prompt) + full[len(prompt):]))
    random.Random(0).shuffle(seqs)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lcfg.sft_lr)
    model.train()
    tokens, t0 = 0, time.perf_counter()
    for i in range(0, len(seqs), lcfg.sft_batch_size):
        batch = seqs[i:i + lcfg.sft_batch_size]
        width = max(len(s) for s, _ in batch)
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s, _ in batch], device=device)
        labels = torch.tensor([lab[:len(s)] + [-100] * (width - len(s)) for s, lab in batch], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in batch], device=device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        tokens += int(mask.sum())
    dt = time.perf_counter() - t0
    return {"rows": len(rows), "tokens": tokens, "seconds": round(dt, 2), "tokens_per_s": round(tokens / dt, 1)}


def markdown(run: dict) -> str:
    t, s = run["timings"], run["scores"]
    lines = [f"# One learning cycle ({run['n_corrections']} corrections, {run['model']})", "",
             f"`{run['command']}` on {run['date']} ({run['host_note']})", "",
             "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in t.items()]
    sp = run["speed"]
    lines += ["", f"SFT: TRL {sp['trl_tokens_per_s']} tokens/s, bare PyTorch LoRA loop {sp['bare_tokens_per_s']} "
                  f"tokens/s: ratio **{sp['ratio']}** (target >= 0.8). DPO: {sp.get('dpo_tokens_per_s')} tokens/s.", "",
              "| probes (recall off, greedy 32 tokens) | re-asks | paraphrases | style | controls |",
              "|---|---|---|---|---|"]
    for who in ("base", "candidate"):
        lines.append(f"| {who} | " + " | ".join(f"{s[who][f]['passed']}/{s[who][f]['total']}"
                                                for f in probes.FAMILIES) + " |")
    lines += ["", "Training data: " + json.dumps(run["rows"]), "", "Config: " + json.dumps(run["config"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default=str(DEFAULT_SCENARIO))
    p.add_argument("--model", default="embedded")
    p.add_argument("--with-gate", action="store_true", help="also run evaluation and the gate")
    p.add_argument("--answer-tokens", type=int, default=64, help="max_tokens of the answers being corrected")
    p.add_argument("--no-speed", action="store_true", help="skip the bare-loop speed comparison")
    p.add_argument("--out", default=str(RESULTS / "learn"))
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a LearnConfig field (JSON value), e.g. --set sft_lr=5e-4")
    args = p.parse_args(argv)

    from assistant.config import Config
    from assistant.runtime import Runtime
    from store import adapters

    items = probes.load_scenario(args.scenario)
    corrections = probes.corrections(items)
    home = Path(tempfile.mkdtemp(prefix="learn-bench-"))
    cfg = Config(home=home, model=args.model)
    runtime = Runtime.create(cfg, with_memory=False)
    feed_s = feed_corrections(runtime, corrections, args.answer_tokens)
    print(f"fed {len(corrections)} corrections through the API in {feed_s:.0f} s", flush=True)

    if not args.with_gate:
        learner._gate = lambda: None  # measure the learner alone; teach.py runs the gate
    lcfg = LearnConfig(**{k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)})
    t0 = time.perf_counter()
    result = learner.run_cycle(cfg, lcfg, progress=lambda s: s["loss"] is not None and print(
        f"{s['stage']:<15} {s['progress'] * 100:5.1f}%  loss {s['loss']:.3f}  eta {s['eta_s'] or 0:.0f}s", flush=True))
    cycle_s = time.perf_counter() - t0
    print(f"\n{result['message']} in {cycle_s:.0f} s", flush=True)
    row = adapters.get_adapter(runtime.db, result["version"])
    meta = row["meta"]
    bare = {"tokens_per_s": float("nan")} if args.no_speed else bare_lora_loop(cfg, lcfg)
    trl_tps = meta["stats"]["sft"]["tokens_per_s"]
    scores = {"base": probes.score_probes(runtime.model, items),
              "candidate": probes.score_probes(runtime.model, items, version=row["version"], path=row["path"],
                                               scope=runtime.chat.scope)}
    experts = meta["stats"].get("experts") or {}
    run = {
        "command": "python bench/learn.py" + (" --with-gate" if args.with_gate else ""),
        "date": time.strftime("%Y-%m-%d %H:%M"), "model": args.model, "scenario": args.scenario,
        "host_note": f"{os.cpu_count()} CPU cores; other processes may share them",
        "n_corrections": len(corrections), "config": lcfg.to_dict(), "rows": meta["stats"].get("sft_rows"),
        "timings": {"feed through API": round(feed_s, 1), "data": meta.get("data_s"),
                    "load + self-replay": round(meta["timings"]["load_s"] + meta["timings"]["extra_rows_s"], 1),
                    "SFT": round(meta["timings"].get("sft_s", 0), 1), "DPO": round(meta["timings"].get("dpo_s", 0), 1),
                    "habit adapter (its self-replay answers, SFT, save)": round(meta["timings"].get("habit_s", 0), 1),
                    f"experts ({experts.get('trained', 0)} trained, {experts.get('waiting', 0)} waiting for "
                    "the next cycle)": round(meta["timings"].get("experts_s", 0), 1),
                    "cycle (wall" + (", gate included)" if args.with_gate else ", no evaluation)"): round(cycle_s, 1)},
        "speed": {"trl_tokens_per_s": round(trl_tps, 1), "bare_tokens_per_s": bare["tokens_per_s"],
                  "ratio": round(trl_tps / bare["tokens_per_s"], 2), "bare": bare,
                  "dpo_tokens_per_s": round(meta["stats"]["dpo"]["tokens_per_s"], 1) if "dpo" in meta["stats"] else None},
        "result": result, "losses": meta["losses"],
        "scores": {k: v["summary"] for k, v in scores.items()},
        "probes": {k: v["probes"] for k, v in scores.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(run, indent=1))
    out.with_suffix(".md").write_text(markdown(run))
    print(markdown(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
