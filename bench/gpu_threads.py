"""Tokens/s of one greedy reply on a GPU: plain `generate` in the main thread, in a new thread
per reply (what ServedModel.stream did), in one long-lived thread (GenerationWorker, what it
does now), and ServedModel.generate itself. A random-init model of the embedded model's shape:
the cost per token does not depend on the weights' values, and no weights need to travel.

    python bench/gpu_threads.py --model-dir DIR --out OUT   # DIR: config.json + tokenizer files

DIR can be the converted embedded model (<home>/models/smollm2-135m-instruct); on the lent GPU
machine it was a copy of its config and tokenizer files alone (.devmodel/tok, 3.4 MB).

Results: OUT/gpu-threads.json and OUT/gpu-threads.md (default OUT: bench/results).
"""
import argparse
import json
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchkit import RESULTS  # noqa: F401 - sets the environment up first

# isort: split

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from assistant.model import ServedModel  # noqa: E402

TOKENS = 64
ROUNDS = 3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True, help="config.json and tokenizer files of the model's shape")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    path = tempfile.mkdtemp(prefix="gpu-threads-")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model_dir)).save_pretrained(path)
    AutoTokenizer.from_pretrained(args.model_dir).save_pretrained(path)
    served = ServedModel(path)
    messages = [{"role": "user", "content": "Tell me about the ocean."}]
    ids = served.encode(messages).to(served.device)
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False,
              pad_token_id=served.tokenizer.pad_token_id)

    def plain():
        with torch.inference_mode():
            served.model.generate(ids, **kw)

    def new_thread():
        t = threading.Thread(target=plain)
        t.start()
        t.join()

    jobs, done = queue.SimpleQueue(), queue.SimpleQueue()

    def work_forever():
        while True:
            jobs.get()()
            done.put(None)

    threading.Thread(target=work_forever, daemon=True).start()

    def long_lived_thread():
        jobs.put(plain)
        done.get()

    counted = {}

    def served_generate():
        counted["tokens"] = served.generate(messages, max_new_tokens=TOKENS).completion_tokens

    def synchronize():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def tokens_per_s(fn) -> float:
        synchronize()
        t0 = time.perf_counter()
        fn()
        synchronize()
        return round(counted.pop("tokens", TOKENS) / (time.perf_counter() - t0), 1)

    ways = {"generate, main thread": plain, "generate, a new thread per reply": new_thread,
            "generate, one long-lived thread": long_lived_thread, "ServedModel.generate": served_generate}
    res = {name: [] for name in ways}
    for _ in range(ROUNDS):  # interleaved; the first round includes each way's warm-up
        for name, fn in ways.items():
            res[name].append(tokens_per_s(fn))
    env = {"device": str(served.device), "dtype": str(served.dtype), "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    out = {"command": "python bench/gpu_threads.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M"), "environment": env, "tokens": TOKENS, "tokens_per_s": res}
    lines = ["# Tokens/s of one greedy reply, by the thread that generates (bench/gpu_threads.py)", "",
             f"`{out['command']}` on {out['date']}: {env['gpu'] or 'CPU'}, {env['dtype']}, torch {env['torch']}; "
             f"{TOKENS} new tokens, random-init SmolLM2-135M shape, {ROUNDS} interleaved rounds (the first "
             "includes warm-up).", "", "| how | tokens/s per round |", "|---|---|"]
    lines += [f"| {name} | {' / '.join(map(str, v))} |" for name, v in res.items()]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu-threads.json").write_text(json.dumps(out, indent=1))
    (Path(args.out) / "gpu-threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
