"""Training beside chat (issue 29): how much a learning cycle slows the chat, and the chat the cycle.

One run, two fresh homes taught the same corrections (the first `--facts` facts of
`--scenario`, each asked through the API and corrected), each served by a real `assistant serve`
and learning with a real `assistant learn` (gate included), so both cycles do the same work:

  1. home A, idle: `--requests` streamed chat requests one after another -> chat alone;
  2. home A: `assistant learn` with nothing else running -> the cycle alone;
  3. home B: `assistant learn` while a light chat client asks one question, waits `--gap` s,
     asks the next... until the cycle ends -> chat during a cycle, and the cycle with chat.

The chat asks general questions (the gate's canaries, recall on, `--max-tokens` tokens). Only
requests that start and end inside the cycle count as "during". Time to first token is from
sending the request to the first content chunk; pieces/s is the streamed chunks after the first
over the time after it. Both processes use the thread budgets they would in use: the learner
`ASSISTANT_LEARNER_THREADS` (default every core but one), the server `ASSISTANT_CHAT_THREADS`
while idle and, during a cycle, the cores the learner leaves (assistant/threads.py).
Targets on 2 cores: chat TTFT p95 during a cycle <= 2x idle; the cycle with chat <= 1.3x alone.
Results: bench/results/cosched.{json,md}.

    python bench/cosched.py [--facts 8] [--requests 12] [--gap 5] [--max-tokens 48]
"""
import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchkit import RESULTS, ROOT, manual_learning  # noqa: E402 - sets the environment up first

# isort: split

from season import ask_stream, percentile  # noqa: E402
from teach import Server, cli  # noqa: E402

from learning.evaluate import load_canaries  # noqa: E402
from learning.probes import load_scenario  # noqa: E402

DEV_SCENARIO = ROOT / "bench" / "teach_dev.jsonl"


def home_env(model: str) -> tuple[Path, dict]:
    """A fresh home whose server never starts a cycle of its own (the benchmark runs them)."""
    home = Path(tempfile.mkdtemp(prefix="cosched-"))
    manual_learning(home)
    return home, {**os.environ, "ASSISTANT_HOME": str(home), "HF_HUB_OFFLINE": "1", "ASSISTANT_MODEL": model}


def teach(server: Server, facts: list[dict]) -> None:
    for item in facts:
        for t in item["teach"]:
            turn = server.ask(t["prompt"], recall=True, max_tokens=24)
            server.correct(turn["id"], t["correction"])


def chat_once(server: Server, prompt: str, max_tokens: int) -> dict:
    t0 = time.time()
    r = ask_stream(server, prompt, recall=True, max_tokens=max_tokens)
    pieces = max(r["pieces"] - 1, 0)
    after_first = r["total_s"] - (r["ttft_s"] or r["total_s"])
    return {"prompt": prompt, "start": t0, "end": time.time(), "ttft_s": r["ttft_s"],
            "pieces_per_s": pieces / after_first if after_first > 0 and pieces else None}


def learn(env: dict) -> dict:
    t0 = time.time()
    done = cli(env, "learn")
    if done.returncode != 0:
        raise RuntimeError(f"assistant learn failed: {done.stderr[-2000:]}")
    return {"start": t0, "end": time.time(), "wall_s": round(time.time() - t0, 1),
            "output": done.stdout.strip().splitlines()[-1:]}


def summary(requests: list[dict]) -> dict:
    ttft = [r["ttft_s"] for r in requests if r["ttft_s"] is not None]
    rates = [r["pieces_per_s"] for r in requests if r["pieces_per_s"]]
    return {"n": len(requests), "ttft_p50_s": percentile(ttft, 0.5), "ttft_p95_s": percentile(ttft, 0.95),
            "pieces_per_s_p50": percentile(rates, 0.5)}


def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


def markdown(run: dict) -> str:
    idle, during = run["chat_idle"], run["chat_during_cycle"]
    rows = [("chat alone", idle), ("chat during a cycle", during)]
    lines = [f"# Training beside chat (issue 29) — {run['stamp']}", "",
             f"`python bench/cosched.py {' '.join(run['argv'])}` on {run['cores']} cores; model `{run['model']}`, "
             f"{run['facts']} corrections per cycle; chat: {run['max_tokens']} tokens, recall on, one request "
             f"every {run['gap_s']} s during the cycle. Server threads {run['chat_threads']} idle, "
             f"{run['chat_threads_during_cycle']} during a cycle; learner threads {run['learner_threads']}.", "",
             "| chat | requests | TTFT p50 s | TTFT p95 s | pieces/s p50 |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {s['n']} | {s['ttft_p50_s']} | {s['ttft_p95_s']} | {s['pieces_per_s_p50']} |"
              for name, s in rows]
    r = run["ratios"]
    lines += ["", "| cycle | wall s |", "|---|---|", f"| alone | {run['cycle_alone']['wall_s']} |",
              f"| with chat | {run['cycle_with_chat']['wall_s']} |", "",
              f"- chat TTFT p95 during a cycle / idle: **{r['ttft_p95']}** (target <= 2)",
              f"- chat pieces/s during a cycle / idle: {r['pieces_per_s']}",
              f"- cycle with chat / alone: **{r['cycle']}** (target <= 1.3)"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from assistant.config import Config, cores

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default=str(DEV_SCENARIO))
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--facts", type=int, default=8)
    ap.add_argument("--requests", type=int, default=12, help="idle chat requests")
    ap.add_argument("--gap", type=float, default=5.0, help="seconds between chat requests during the cycle")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--out", default="cosched")
    args = ap.parse_args(argv)
    facts = [it for it in load_scenario(args.scenario) if it["kind"] == "fact"][:args.facts]
    prompts = [c["prompt"] for c in load_canaries()]
    cfg = Config()
    run = {"stamp": dt.datetime.now().strftime("%Y%m%d-%H%M%S"), "argv": sys.argv[1:] if argv is None else argv,
           "model": args.model, "facts": len(facts), "gap_s": args.gap, "max_tokens": args.max_tokens,
           "cores": cores(), "chat_threads": cfg.chat_threads, "learner_threads": cfg.learner_threads,
           "chat_threads_during_cycle": max(1, min(cfg.chat_threads, cores() - cfg.learner_threads))}

    home_a, env_a = home_env(args.model)
    server = Server(env_a, args.model)
    try:
        teach(server, facts)
        chat_once(server, prompts[-1], args.max_tokens)  # warm-up
        print("chat alone", flush=True)
        run["requests_idle"] = [chat_once(server, p, args.max_tokens) for p in prompts[:args.requests]]
        run["chat_idle"] = summary(run["requests_idle"])
        print("cycle alone", flush=True)
        run["cycle_alone"] = learn(env_a)
    finally:
        server.stop()

    home_b, env_b = home_env(args.model)
    server = Server(env_b, args.model)
    try:
        teach(server, facts)
        chat_once(server, prompts[-1], args.max_tokens)
        print("cycle with chat", flush=True)
        box: dict = {}
        learner = threading.Thread(target=lambda: box.update(learn(env_b)))
        learner.start()
        requests, i = [], 0
        while learner.is_alive():
            requests.append(chat_once(server, prompts[i % len(prompts)], args.max_tokens))
            i += 1
            learner.join(args.gap)
        run["cycle_with_chat"] = box
        inside = [r for r in requests if box and box["start"] <= r["start"] and r["end"] <= box["end"]]
        run["requests_during_cycle"] = inside
        run["chat_during_cycle"] = summary(inside)
    finally:
        server.stop()

    idle, during = run["chat_idle"], run["chat_during_cycle"]
    run["ratios"] = {"ttft_p95": ratio(during["ttft_p95_s"], idle["ttft_p95_s"]),
                     "pieces_per_s": ratio(during["pieces_per_s_p50"], idle["pieces_per_s_p50"]),
                     "cycle": ratio(run["cycle_with_chat"].get("wall_s"), run["cycle_alone"]["wall_s"])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(run, indent=1))
    (RESULTS / f"{args.out}.md").write_text(markdown(run))
    print(markdown(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
