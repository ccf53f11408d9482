"""Benchmark of the served chat path (issue 2): is serving nearly as fast as the bare model?

    python bench/chat.py                 # writes bench/results/chat.{json,md} and prints them
    options: --model DIR (a converted embedded model; default: convert once into the assistant's
             home), --repeats N (runs per prompt and path, default 2), --max-new-tokens 48

Two paths generate greedily on the same 5 short prompts with the same prompt (default system
prompt + the user message, SmolLM2's chat template), in the same process and run:
  bare    `model.generate` on the tokenized chat template (no streaming machinery), in a worker
          thread like the served path (see run_bare); its time to first token is taken by a
          minimal streamer that only notes when the first new token arrives.
  served  the product path: a real HTTP server on 127.0.0.1 (`start_server`, API only: the UI
          mount is not on the /v1 path), the `openai` client streaming, ChatService building the
          prompt and logging the turn. TTFT is from just before the request to the first content
          chunk; tokens/s uses the completion_tokens LOGGED for the turn over the whole request.
The paths alternate per prompt and repeat (a/b, then b/a) so that drifting machine load hits both
alike; each path is warmed up once first. The ratio is served tokens/s over bare tokens/s (total
tokens over total time); the target is >= 0.95. Chat turns go to a throwaway home directory.
"""
import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchkit import RESULTS  # noqa: E402,F401 - sets the environment up first

# isort: split

import openai  # noqa: E402
import torch  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

from assistant.config import DEFAULT_SYSTEM_PROMPT, Config  # noqa: E402
from assistant.model import ServedModel, resolve_model  # noqa: E402
from assistant.runtime import Runtime  # noqa: E402
from assistant.server import start_server  # noqa: E402
from store import conversations  # noqa: E402

# Generic requests of our own (nothing from the teaching scenario).
PROMPTS = [
    "Give me three tips for staying focused while studying.",
    "Write a short poem about the sea.",
    "Explain what a CPU does in two sentences.",
    "What should I pack for a weekend hiking trip?",
    "How do I make a good cup of green tea?",
]
TARGET_RATIO = 0.95


class FirstTokenClock(BaseStreamer):
    """Notes when generate() emits its first new token (the first put() is the prompt)."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self):
        pass


def run_bare(model: ServedModel, prompt: str, max_new_tokens: int) -> dict:
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    clock, box = FirstTokenClock(), {}

    def work():
        with model.lock, torch.inference_mode():
            box["ids"] = ids = model.encode(messages).to(model.device)
            box["out"] = model.base.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                             streamer=clock, **model._generate_kwargs(max_new_tokens, 0.0))

    # Generate off the main thread, as ServedModel.stream does: on a loaded CPU, OpenMP's
    # spin-waiting team of the main thread ran ~10x slower here (measured; OMP_WAIT_POLICY=PASSIVE
    # removes the gap), which would flatter the served path. Same threading, fair comparison.
    start = time.perf_counter()
    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    elapsed = time.perf_counter() - start
    ids, out = box["ids"], box["out"]
    tokens = int(out.shape[1] - ids.shape[1])
    return {"path": "bare", "prompt": prompt, "prompt_tokens": int(ids.shape[1]), "tokens": tokens,
            "seconds": elapsed, "ttft_ms": (clock.first - start) * 1000 if clock.first else None,
            "text": model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)}


def run_served(client: openai.OpenAI, db, prompt: str, max_new_tokens: int) -> dict:
    start = time.perf_counter()
    first, turn_id, text = None, None, ""
    stream = client.chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": prompt}], stream=True,
        max_tokens=max_new_tokens, temperature=0, extra_body={"recall": False})
    for chunk in stream:
        turn_id = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text += chunk.choices[0].delta.content
    elapsed = time.perf_counter() - start
    row = conversations.get_turn(db, turn_id)
    return {"path": "served", "prompt": prompt, "prompt_tokens": row["prompt_tokens"],
            "tokens": row["completion_tokens"], "seconds": elapsed,
            "ttft_ms": (first - start) * 1000 if first else None, "text": text, "turn_id": turn_id}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for path in ("bare", "served"):
        rs = [r for r in rows if r["path"] == path]
        tokens, seconds = sum(r["tokens"] for r in rs), sum(r["seconds"] for r in rs)
        out[path] = {"runs": len(rs), "tokens": tokens, "seconds": round(seconds, 3),
                     "tokens_per_s": round(tokens / seconds, 2),
                     "median_tokens_per_s": round(statistics.median(r["tokens"] / r["seconds"] for r in rs), 2),
                     "median_ttft_ms": round(statistics.median(r["ttft_ms"] for r in rs), 1)}
    ratio = out["served"]["tokens_per_s"] / out["bare"]["tokens_per_s"]
    out["ratio_served_over_bare"] = round(ratio, 3)
    out["meets_target"] = ratio >= TARGET_RATIO
    out["same_text"] = all(  # greedy: both paths should say the same thing
        len({r["text"].strip() for r in rows if r["prompt"] == p}) == 1 for p in PROMPTS)
    return out


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [
        "# Chat serving benchmark", "",
        f"{result['model_name']} on {result['device']}, {result['torch_threads']} torch threads, "
        f"greedy, {result['max_new_tokens']} new tokens max, {len(PROMPTS)} prompts x "
        f"{result['repeats']} repeats per path, interleaved, after one warm-up each ({result['date']}).", "",
        "| path | runs | tokens | tokens/s (total) | tokens/s (median run) | TTFT median (ms) |",
        "|---|---|---|---|---|---|"]
    for path in ("bare", "served"):
        p = s[path]
        lines.append(f"| {path} | {p['runs']} | {p['tokens']} | {p['tokens_per_s']} | "
                     f"{p['median_tokens_per_s']} | {p['median_ttft_ms']} |")
    verdict = "meets" if s["meets_target"] else "misses"
    lines += ["", f"served / bare tokens/s: **{s['ratio_served_over_bare']}** ({verdict} the target "
              f">= {TARGET_RATIO}); same greedy text on both paths: {s['same_text']}.", "",
              "bare = `model.generate` on the tokenized chat template; served = HTTP streaming through "
              "`start_server` with the openai client, tokens counted from the logged turn, time from "
              "request to last chunk.", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a converted model directory (default: the embedded model)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args(argv)

    model_path = args.model or resolve_model("embedded", Config().models_dir)
    home = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    model = ServedModel(str(model_path))
    runtime = Runtime.create(Config(home=home, model=str(model_path)), model=model, with_memory=False)
    server = start_server(runtime, ui=False)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="bench", max_retries=0, timeout=300)
    bare = lambda p: run_bare(model, p, args.max_new_tokens)  # noqa: E731
    served = lambda p: run_served(client, runtime.db, p, args.max_new_tokens)  # noqa: E731
    try:
        bare(PROMPTS[0]), served(PROMPTS[0])  # warm-up: first-call allocations, thread pools
        rows = []
        for rep in range(args.repeats):
            for prompt in PROMPTS:
                order = (bare, served) if rep % 2 == 0 else (served, bare)
                rows += [run(prompt) for run in order]
    finally:
        server.stop()
    result = {"model_name": Path(str(model_path)).name, "model": str(model_path), "device": model.device,
              "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "repeats": args.repeats,
              "max_new_tokens": args.max_new_tokens, "prompts": PROMPTS, "summary": summarise(rows),
              "runs": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chat.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "chat.md").write_text(markdown(result))
    print(json.dumps(result["summary"], indent=2))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
