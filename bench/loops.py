"""Benchmark of stopping replies that loop (assistant/model.py `stop_on_loop`).

    python bench/loops.py [--model DIR] [--prompts 48] [--max-new-tokens 128]
    # writes bench/results/loops.{json,md}

The base model answers the first N generic prompts of learning/replay_prompts.jsonl (general
questions and requests, none of them a scenario probe) greedily, in batches of 16 as the gate
scores, twice in the same process: with the loop stop off and on. Reported: how many replies end
in a loop (the same block of 4+ tokens three times), tokens generated, wall time, and whether the
replies that did not loop are unchanged (they must be: the stop only ends a reply). Then the
prompts whose replies the stop cut are asked one at a time as in a chat turn (`ServedModel.generate`,
the chat's default of 256 new tokens), off and on: the time a user waits for a looping reply.
"""
import argparse
import json
import time

from benchkit import RESULTS  # noqa: F401 - sets the environment up first

# isort: split

from assistant.config import DEFAULT_SYSTEM_PROMPT, Config  # noqa: E402
from assistant.model import ServedModel, loops, resolve_model  # noqa: E402
from learning.augment import replay_prompts  # noqa: E402
from learning.scoring import Scorer  # noqa: E402


def run(served: ServedModel, prompts: list[str], max_new_tokens: int, stop_loops: bool) -> dict:
    served.stop_loops = stop_loops
    scorer = Scorer(served, max_new_tokens=max_new_tokens)
    conversations = [[{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": p}]
                     for p in prompts]
    t0 = time.perf_counter()
    replies = scorer.generate(conversations)
    seconds = time.perf_counter() - t0
    ids = [served.tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies]
    return {"stop_loops": stop_loops, "seconds": round(seconds, 1), "tokens": sum(map(len, ids)),
            "looping": sum(loops(i) for i in ids), "replies": replies}


def chat_turn(served: ServedModel, prompt: str, max_new_tokens: int) -> dict:
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    out = {"prompt": prompt}
    for stop_loops in (False, True):
        served.stop_loops = stop_loops
        g = served.generate(messages, max_new_tokens=max_new_tokens)
        out["on" if stop_loops else "off"] = {"tokens": g.completion_tokens, "seconds": round(g.duration_ms / 1000, 1)}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a converted model directory (default: the embedded model)")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args(argv)
    cfg = Config()
    served = ServedModel(args.model or str(resolve_model(cfg.model, cfg.models_dir)))
    prompts = replay_prompts(args.prompts)
    run(served, prompts[:16], 8, True)  # warm-up
    off = run(served, prompts, args.max_new_tokens, False)
    on = run(served, prompts, args.max_new_tokens, True)
    cut = [i for i, (a, b) in enumerate(zip(off["replies"], on["replies"], strict=True)) if a != b]
    chat = [chat_turn(served, prompts[i], cfg.default_max_new_tokens) for i in cut]
    result = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "off": off, "on": on, "chat": chat,
              "chat_max_new_tokens": cfg.default_max_new_tokens,
              "changed": len(cut), "changed_are_prefixes": all(off["replies"][i].startswith(on["replies"][i].rstrip())
                                                               for i in cut),
              "examples": [{"prompt": prompts[i], "off": off["replies"][i], "on": on["replies"][i]} for i in cut[:5]]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loops.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    (RESULTS / "loops.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    off, on = r["off"], r["on"]
    lines = ["# Stopping replies that loop", "",
             f"`python bench/loops.py`: the base model, greedy, {r['prompts']} generic prompts "
             f"(learning/replay_prompts.jsonl), at most {r['max_new_tokens']} new tokens, batches of 16.", "",
             "| loop stop | replies ending in a loop | tokens generated | wall s |", "|---|---|---|---|"]
    for x in (off, on):
        lines.append(f"| {'on' if x['stop_loops'] else 'off'} | {x['looping']} | {x['tokens']} | {x['seconds']} |")
    lines += ["", f"Replies changed by the stop: {r['changed']} (each the start of the reply without it: "
              f"{'yes' if r['changed_are_prefixes'] else 'NO'}); tokens saved "
              f"{off['tokens'] - on['tokens']}, time ratio on/off {on['seconds'] / off['seconds']:.2f}.", ""]
    if r["chat"]:
        off_s, on_s = (sum(c[k]["seconds"] for c in r["chat"]) for k in ("off", "on"))
        lines += [f"The same prompts as chat turns (one at a time, at most {r['chat_max_new_tokens']} new tokens):", "",
                  "| prompt | tokens off / on | seconds off / on |", "|---|---|---|"]
        lines += [f"| {c['prompt']} | {c['off']['tokens']} / {c['on']['tokens']} | "
                  f"{c['off']['seconds']} / {c['on']['seconds']} |" for c in r["chat"]]
        lines += ["", f"Waiting time for these replies: {off_s:.1f} s -> {on_s:.1f} s "
                  f"(ratio on/off {on_s / off_s:.2f}).", ""]
    for e in r["examples"]:
        lines.append(f"- {e['prompt']!r}: off {e['off'][-80:]!r} -> on {e['on'][-80:]!r}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
