"""Benchmark of hot swap and gate evaluation on the embedded model, through a real server.

1. Swap latency: the server idles on one adapter; `store.adapters.activate` moves the ACTIVE
   pointer to another (the learner's promotion), and a streaming chat request is sent at
   once; latency = from the committed promotion to the first token that the response says
   came from the new adapter. Measured right after the promotion (the request loads the
   adapter if the server's watcher has not yet) and 1 s after it (the watcher preloaded it).
   The adapters have the learner's LoRA shape (learning.config.LearnConfig) with random
   non-zero weights; a swap's cost does not depend on what the weights learned.
2. Chaos: 4 client threads chat continuously through the API (streaming and not) while the
   versions are promoted and rolled back 20 times. A reply is garbled when it differs from
   the known greedy reply for that prompt under the adapter version the response reports
   (expected replies precomputed per version through the same API).
3. Gate evaluation time of the teaching scenario: its corrections (never its probes) are fed
   through the API, a candidate is registered with them, and `learning.evaluate.evaluate`
   scores candidate vs base (taught corrections, the 40 canaries) with batched generation.

Results: bench/results/swap.json and swap.md.

    .venv/bin/python bench/swap.py [--scenario PATH] [--trials 10] [--swaps 20]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
from benchkit import DEFAULT_SCENARIO, RESULTS, ROOT  # noqa: E402,F401 - sets the environment up first

# isort: split


import httpx  # noqa: E402

from assistant.config import Config  # noqa: E402
from assistant.model import ServedModel, convert_embedded  # noqa: E402
from assistant.runtime import Runtime  # noqa: E402
from assistant.server import start_server  # noqa: E402
from bench.learn import feed_corrections  # noqa: E402
from learning import probes  # noqa: E402
from learning.config import LearnConfig  # noqa: E402
from learning.evaluate import evaluate  # noqa: E402
from store import adapters, open_db  # noqa: E402

PROMPTS = ["Hello there, how are you today?", "What is the capital of Japan?",
           "Give me one tip for a rainy day.", "Name a famous painter."]
MAX_TOKENS = 16


def make_adapters(base_dir: str, out: Path, versions=(1, 2, 3, 4, 5), rank: int | None = None) -> dict[int, Path]:
    """LoRA adapters of the learner's shape with random weights (seeded per version); with
    `rank`, of that rank (alpha twice it, like a correction's expert)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = LearnConfig().lora_shape()
    if rank is not None:
        shape = {**shape, "r": rank, "lora_alpha": 2 * rank}
    dirs = {}
    for v in versions:
        torch.manual_seed(v)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(
            r=shape["r"], lora_alpha=shape["lora_alpha"], target_modules=shape["target_modules"],
            init_lora_weights=False))
        with torch.no_grad():  # small weights: a changed model that still writes sentences
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.02)
        model.save_pretrained(out / f"v{v}")
        dirs[v] = out / f"v{v}"
    return dirs


def logged_version(db, turn_id: str) -> int | None:
    """The adapter version the server logged for the turn (streamed chunks do not carry it)."""
    return db.execute("SELECT adapter_version FROM turns WHERE id = ?", [turn_id]).fetchone()[0]


def first_token(client: httpx.Client, db, prompt: str) -> tuple[float, int | None, str]:
    """Stream one reply; -> (perf_counter at the first content piece, adapter version, text)."""
    t_first, turn_id, text = None, None, ""
    body = {"model": "assistant", "stream": True, "temperature": 0, "max_tokens": MAX_TOKENS,
            "recall": False, "messages": [{"role": "user", "content": prompt}]}
    with client.stream("POST", "/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            turn_id = event.get("id", turn_id)
            for choice in event.get("choices", []):
                piece = choice["delta"].get("content")
                if piece:
                    t_first = t_first or time.perf_counter()
                    text += piece
    return t_first, logged_version(db, turn_id), text


def ask(client: httpx.Client, db, prompt: str, stream: bool) -> tuple[int | None, str]:
    if stream:
        _, version, text = first_token(client, db, prompt)
        return version, text
    r = client.post("/chat/completions", json={
        "model": "assistant", "temperature": 0, "max_tokens": MAX_TOKENS, "recall": False,
        "messages": [{"role": "user", "content": prompt}]})
    r.raise_for_status()
    return logged_version(db, r.json()["id"]), r.json()["choices"][0]["message"]["content"]


def swap_latency(db, client, trials: int, wait_s: float, start: int) -> list[float]:
    """Cycle through v1 .. v5 from `start`: the server keeps at most three adapters loaded, so
    every promotion is of a version that is not in memory (a fresh promotion, not a rollback)."""
    out = []
    for i in range(start, start + trials):
        target = i % 5 + 1
        adapters.activate(db, target)
        t0 = time.perf_counter()
        time.sleep(wait_s)
        t_first, version, _ = first_token(client, db, PROMPTS[0])
        assert version == target, f"served v{version}, expected v{target}"
        out.append(t_first - t0 - wait_s)
    return out


def chaos(db, db_path, client_factory, expected: dict, swaps: int) -> dict:
    stop, counts, lock = threading.Event(), {"replies": 0, "failed": 0, "garbled": 0}, threading.Lock()
    examples = []

    def chatter(n):
        client, conn = client_factory(), open_db(db_path)
        i = n
        while not stop.is_set():
            prompt, stream = PROMPTS[i % len(PROMPTS)], (i + n) % 2 == 0
            i += 1
            try:
                version, text = ask(client, conn, prompt, stream)
                bad = text != expected[version][prompt]
            except Exception as e:  # noqa: BLE001 - counted, the run goes on
                version, text, bad = None, f"{type(e).__name__}: {e}", None
            with lock:
                counts["replies"] += 1
                if bad is None:
                    counts["failed"] += 1
                elif bad:
                    counts["garbled"] += 1
                if bad is not False and len(examples) < 5:
                    examples.append({"prompt": prompt, "version": version, "reply": text})

    threads = [threading.Thread(target=chatter, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    sequence = []
    for k in range(swaps):  # promote a new version, then roll back to its parent
        target = (k // 2) % 3 + 1 if k % 2 == 0 else None
        adapters.activate(db, target)
        sequence.append(target)
        time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(300)
    return {**counts, "swaps": swaps, "sequence": sequence, "examples": examples}


def gate_time(cfg, runtime, served, scenario: Path, adapter_dir: Path) -> dict:
    items = probes.load_scenario(scenario)
    corrections = probes.corrections(items)  # the corrections only: probes are never used here
    feed_corrections(runtime, corrections, max_tokens=32)
    db = open_db(cfg.db_path)
    fids = [r["id"] for r in db.query("SELECT id FROM feedback WHERE kind = 'correction' ORDER BY id")]
    version = adapters.next_version(db)
    adapters.register_candidate(db, version, str(adapter_dir), None, {}, fids, len(fids), 0)
    t0 = time.perf_counter()
    ev = evaluate(cfg, db, version, None, fids, model=served)
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 1), "corrections": len(fids),
            "canaries": ev["candidate"]["canary"]["total"],
            "generations": 2 * (len(fids) + ev["candidate"]["canary"]["total"]),
            "base_canaries_passed": ev["incumbent"]["canary"]["passed"]}


def rewrite_report() -> None:
    """Re-render swap.md from swap.json (after annotating a run by hand)."""
    (RESULTS / "swap.md").write_text(report(json.loads((RESULTS / "swap.json").read_text())))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    ap.add_argument("--trials", type=int, default=9)
    ap.add_argument("--swaps", type=int, default=20)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    models = Path(os.environ.get("BENCH_MODELS", work / "models"))
    base_dir = str(convert_embedded(models))
    cfg = Config(home=work / "home", model=base_dir)
    served = ServedModel(base_dir)
    runtime = Runtime.create(cfg, model=served, with_memory=False)
    db = open_db(cfg.db_path)
    dirs = make_adapters(base_dir, work / "adapters")
    for v, d in dirs.items():
        adapters.register_candidate(db, v, str(d), v - 1 or None, {}, [], 0, 0)
    server = start_server(runtime, ui=False)
    new_client = lambda: httpx.Client(base_url=server.url + "/v1", timeout=300)  # noqa: E731
    client = new_client()
    try:
        for v in (None, 1, 2, 3):  # warm-up: the first adapter ever loaded wraps the base once
            adapters.activate(db, v)
            first_token(client, db, PROMPTS[0])
        ttft_same = []  # v3 stays active: no swap
        for _ in range(3):
            t0 = time.perf_counter()
            ttft_same.append(first_token(client, db, PROMPTS[0])[0] - t0)
        immediate = swap_latency(db, client, args.trials, 0.0, start=3)
        log("swap latency, request right after the promotion", _summary(immediate))
        preloaded = swap_latency(db, client, args.trials, 1.0, start=3 + args.trials)
        log("swap latency, request 1 s after the promotion", _summary(preloaded))
        expected = {}
        for v in (None, 1, 2, 3):
            adapters.activate(db, v)
            expected[v] = {p: ask(client, db, p, stream=False)[1] for p in PROMPTS}
        chaos_result = chaos(db, cfg.db_path, new_client, expected, args.swaps)
        log("chaos", {k: v for k, v in chaos_result.items() if k != "examples"})
    finally:
        client.close()
        server.stop()
    adapters.activate(db, None)
    gate = gate_time(cfg, runtime, served, args.scenario, dirs[1])
    log("gate evaluation", gate)
    result = {
        "model": "SmolLM2-135M-Instruct (embedded)", "cpu_threads": os.cpu_count(),
        "torch_threads": __import__("torch").get_num_threads(),
        "command": "bench/swap.py " + " ".join(sys.argv[1:]),
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "ttft_no_swap_s": _summary(ttft_same),
        "swap_latency_immediate_s": _summary(immediate),
        "swap_latency_after_preload_s": _summary(preloaded),
        "chaos": chaos_result, "gate_evaluation": gate,
        "targets": {"swap_latency_s": 0.5, "failed_or_garbled": 0, "gate_evaluation_s": 180},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "swap.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "swap.md").write_text(report(result))
    print(report(result))
    return 0


def log(what: str, value) -> None:
    print(f"{what}: {json.dumps(value)}", file=sys.stderr, flush=True)


def _summary(xs: list[float]) -> dict:
    return {"n": len(xs), "median": round(statistics.median(xs), 3), "max": round(max(xs), 3),
            "all": [round(x, 3) for x in xs]}


def report(r: dict) -> str:
    c, g = r["chaos"], r["gate_evaluation"]
    return "\n".join([
        "# Hot swap and gate evaluation (bench/swap.py)", "",
        f"Model: {r['model']}; CPU threads: {r['cpu_threads']}, torch threads: {r.get('torch_threads')}; "
        f"load average before/after: {r.get('load_average_1min')}. "
        f"Command: `.venv/bin/python {r.get('command', 'bench/swap.py').strip()}`", "",
        *([f"Note: {r['note']}", ""] if r.get("note") else []),
        "| measure | median | max | target |", "|---|---|---|---|",
        f"| first token, no swap (TTFT) | {r['ttft_no_swap_s']['median']} s | {r['ttft_no_swap_s']['max']} s | |",
        f"| promotion -> first token of the new adapter, request right away | "
        f"{r['swap_latency_immediate_s']['median']} s | {r['swap_latency_immediate_s']['max']} s | <= 0.5 s |",
        f"| request 1 s after the promotion (watcher preloaded) -> first token | "
        f"{r['swap_latency_after_preload_s']['median']} s | {r['swap_latency_after_preload_s']['max']} s | |", "",
        f"Chaos: 4 clients, {c['swaps']} promotions/rollbacks: {c['replies']} replies, "
        f"**{c['failed']} failed, {c['garbled']} garbled** (target 0 and 0).", "",
        f"Gate evaluation of the teaching scenario: **{g['seconds']} s** (target <= 180 s) for "
        f"{g['corrections']} corrections + {g['canaries']} canaries, candidate and base "
        f"({g['generations']} greedy replies of 32 tokens); base canaries {g['base_canaries_passed']}/{g['canaries']}.",
        ""])


if __name__ == "__main__":
    sys.exit(main())
