"""The teaching benchmark: does the assistant learn, and does it keep what it learned?

Drives the whole product through its public interfaces only: a real server on 127.0.0.1
with a fresh home (`assistant serve`), corrections given through the OpenAI-compatible API
(`/v1/chat/completions` then `/v1/feedback`), learning cycles run with `assistant learn`
(gate included), and every probe of the scenario scored through the API with recall off
(weights alone) and on. The probes are only ever sent as questions to score: nothing derived
from them reaches training, prompts or configuration, so the benchmark works unchanged on a
scenario file it has never seen (`--scenario`).

Schedule: the facts are split into three batches (a third per batch), the style items go
with the last batch, an update (a later correction of a fact, learning/probes.py) with the batch
after its fact's (the last one at the latest), taught after the batch's facts; a learning cycle
follows each batch. Right after a batch is taught, before its cycle, its updates' probes are
scored with recall ("at once"). Once an update is taught its fact's own probes no longer count:
the update's do (`update`: the new value said; `stale`: replies that say the old value). `leaks`:
replies to any probe that say what another taught fact or update expects (a taught answer given
to a question about something else). Style probes are answered in full (STYLE_TOKENS): a
closing habit shows only at the end of a reply. Results: bench/results/teach-<stamp>.json
and .md, and teach-latest.{json,md,png} (`--out NAME`: NAME-<stamp>... and NAME-latest..., so a
run on our dev scenario leaves the judged scenario's latest figures alone).

    python bench/teach.py [--scenario PATH] [--model embedded] [--cycles 3] [--out teach]
"""
import argparse
import datetime as dt
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import DEFAULT_SCENARIO, RESULTS, ROOT, frac, manual_learning  # noqa: E402,F401 - sets the environment up first

# isort: split

import httpx

from assistant.embedders import DEFAULT_EMBEDDER, embedder_name  # noqa: E402
from learning.evaluate import contains_phrase  # noqa: E402
from learning.probes import load_scenario, passes, probe_list  # noqa: E402

COLUMNS = ("reask", "paraphrase", "facts", "earlier", "update", "style", "control")
PROBE_TOKENS = 32
STYLE_TOKENS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env: dict, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "assistant.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


class Server:
    """`assistant serve` as a subprocess on a free loopback port."""

    def __init__(self, env: dict, model: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(env["ASSISTANT_HOME"]) / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assistant.cli", "--model", model, "serve", "--port", str(self.port)],
            env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=600)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: see {self.log.name}")
            try:
                if self.http.get("/v1/models").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError("server did not start in 300 s")

    def ask(self, prompt: str, recall: bool, max_tokens: int = 32) -> dict:
        r = self.http.post("/v1/chat/completions", json={
            "model": "assistant", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "recall": recall})
        r.raise_for_status()
        return r.json()

    def correct(self, turn_id: str, correction: str) -> None:
        r = self.http.post("/v1/feedback", json={"turn_id": turn_id, "rating": "down",
                                                 "correction": correction})
        r.raise_for_status()

    def adapters(self) -> dict:
        return self.http.get("/v1/adapters").json()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def schedule(items: list[dict], cycles: int) -> list[list[dict]]:
    """Facts split into `cycles` batches in file order; style items join the last batch; an update
    the batch after its fact's (the last at the latest), after the batch's facts."""
    facts = [it for it in items if it["kind"] == "fact"]
    style = [it for it in items if it["kind"] == "style"]
    size = math.ceil(len(facts) / cycles)
    batches = [facts[i * size:(i + 1) * size] for i in range(cycles)]
    batches[-1] = batches[-1] + style
    batch_of = {it["id"]: i for i, batch in enumerate(batches) for it in batch}
    for it in items:
        if it["kind"] == "update":
            batches[min(batch_of[it["of"]] + 1, cycles - 1)].append(it)
    return batches


def scored_probes(items: list[dict], taught: set[str]) -> list[dict]:
    """The probes that count now: an update's once taught, its fact's no longer."""
    updated = {it["of"] for it in items if it["kind"] == "update" and it["id"] in taught}
    live = [it for it in items if not (it["kind"] == "fact" and it["id"] in updated)
            and not (it["kind"] == "update" and it["id"] not in taught)]
    stale = {it["id"]: it.get("stale") or [] for it in items}
    return [{**p, "stale": stale[p["item"]]} for p in probe_list(live)]


def same_fact(probe: dict, items: list[dict]) -> set[str]:
    """The probe's own item, the fact it updates and the updates of it: one fact's family."""
    return {probe["item"]} | {it["of"] for it in items if it["id"] == probe["item"] and it.get("of")} | \
        {it["id"] for it in items if it.get("of") == probe["item"]}


def leaked(probe: dict, items: list[dict], taught: set[str]) -> list[str]:
    """What other taught facts or updates expect that the probe's reply says: a taught answer given
    to a question about something else. The probe's own item and the fact it updates (or that
    updates it) do not count, nor phrases the probe's item expects too."""
    related = same_fact(probe, items)
    own = {e.lower() for e in probe["expect"]}
    return sorted({e for it in items if it["kind"] in ("fact", "update") and it["id"] in taught
                   and it["id"] not in related for e in it["expect"]
                   if e.lower() not in own and contains_phrase(probe["reply"], e)})


ECHO_WORDS = 5  # a run of this many words of another correction, said verbatim, is its content


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", (text or "").lower())


def _runs(text: str) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i:i + ECHO_WORDS]) for i in range(len(w) - ECHO_WORDS + 1)}


def echoed(probe: dict, items: list[dict], taught: set[str]) -> list[str]:
    """The taught items whose correction the probe's reply repeats ECHO_WORDS words of, verbatim:
    content a correction taught reaching another question ("How do I keep my laptop running
    fast?" getting the wifi correction's advice). Facts, updates and style items count, a style
    item's own probes included (its corrections answer other prompts); not the probe's own fact
    (or the fact it updates), nor a habit (a run two corrections of a style item share)."""
    mine = same_fact(probe, items)
    said, found = _runs(probe["reply"]), set()
    for it in items:
        if it["id"] not in taught or (it["id"] in mine and it["kind"] != "style"):
            continue
        runs = [_runs(t["correction"]) for t in it.get("teach", [])]
        habit = {r for i, a in enumerate(runs) for b in runs[i + 1:] for r in a & b}
        if any((r - habit) & said for r in runs):
            found.add(it["id"])
    return sorted(found)


def score(server: Server, items: list[dict], recall: bool, taught_before: set[str],
          first_batch: set[str], taught: set[str] | None = None, only: set[str] | None = None) -> dict:
    """The probes that count (`scored_probes`) through the API; accuracy per column. `earlier`:
    facts taught in earlier cycles (retention); `first`: facts of cycle 1; `only`: these items'
    probes alone."""
    taught = set(taught_before) if taught is None else taught
    probes = [p for p in scored_probes(items, taught) if only is None or p["item"] in only]
    tokens, t0 = 0, time.perf_counter()
    for p in probes:
        reply = server.ask(p["prompt"], recall=recall,
                           max_tokens=STYLE_TOKENS if p["family"] == "style" else PROBE_TOKENS)
        tokens += reply["usage"]["completion_tokens"]
        p["reply"] = reply["choices"][0]["message"]["content"]
        p["adapter_version"] = reply.get("adapter_version")
        p["passed"] = passes(p, p["reply"])
        p["said_stale"] = any(contains_phrase(p["reply"], e) for e in p["stale"])
        p["leaked"] = leaked(p, items, taught)
        p["echoed"] = echoed(p, items, taught)
    reply_tok_s = round(tokens / max(time.perf_counter() - t0, 1e-9), 1)
    kind = {it["id"]: it["kind"] for it in items}

    def acc(pred):
        sel = [p for p in probes if pred(p)]
        return {"passed": sum(p["passed"] for p in sel), "total": len(sel)}

    is_fact = lambda p: kind[p["item"]] == "fact"  # noqa: E731
    return {
        "reask": acc(lambda p: p["family"] == "reask"),
        "paraphrase": acc(lambda p: p["family"] == "paraphrase"),
        "facts": acc(is_fact),
        "earlier": acc(lambda p: is_fact(p) and p["item"] in taught_before),
        "first": acc(lambda p: is_fact(p) and p["item"] in first_batch),
        "update": acc(lambda p: p["family"] == "update"),
        "stale": sum(p["said_stale"] for p in probes),
        "leaks": sum(bool(p["leaked"]) for p in probes),
        "echoes": sum(bool(p["echoed"]) for p in probes),
        "style": acc(lambda p: p["family"] == "style"),
        "control": acc(lambda p: p["family"] == "control"),
        "reply_tok_s": reply_tok_s,
        "probes": probes,
    }


def learn_overrides(run: dict) -> str:
    """", LearnConfig expert_r=4" for the fields a run set with --learn (the schedule is always set)."""
    extra = {k: v for k, v in (run.get("learn_config") or {}).items() if k not in ("min_new_feedback", "interval_s")}
    return ", LearnConfig " + ", ".join(f"{k}={v}" for k, v in extra.items()) if extra else ""


def markdown(run: dict) -> str:
    lines = [f"# Teaching benchmark — {run['stamp']}", "",
             f"Scenario `{run['scenario']}`, model `{run['model']}`, "
             f"sentence embedder `{run.get('embedder', DEFAULT_EMBEDDER)}`, {run['cycles']} cycles"
             f"{learn_overrides(run)}. "
             "`earlier`: facts taught in earlier cycles (retention); `first`: facts of cycle 1. `weights`: "
             "recall off, so nothing is added to the prompt; the active adapter answers the prompts inside "
             "its scope (near a prompt it was trained on, assistant/scope.py) and the base weights the rest. "
             "`recall`: the same with recalled corrections in the prompt. `reply tok/s`: the probes' replies "
             "through the API, one at a time: how fast this machine ran (cycle 0, the base model, is the "
             "reference to compare runs on different machines by). `update`: updated facts, the new value "
             "said; `stale`: replies saying an updated fact's old value; `leaks`: replies saying another "
             "taught item's answer; `echoes`: replies repeating 5 words in a row of another taught item's "
             "correction, style items' included; `at once`: the batch's updates right after they were taught, with recall, "
             "before the cycle (new value said / stale).", ""]
    head = ("| cycle | mode | active | " + " | ".join(COLUMNS + ("first",))
            + " | stale | leaks | echoes | at once | reply tok/s | cycle wall s |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for row in run["rows"]:
        for mode in ("weights", "recall"):
            s = row[mode]
            cells = [frac(s[c]) for c in COLUMNS + ("first",)]
            at_once = row.get("at_once") if mode == "recall" else None
            once = f"{frac(at_once)} / {at_once['stale']}" if at_once and at_once["total"] else "-"
            lines.append(f"| {row['cycle']} | {mode} | {row['active']} | " + " | ".join(cells)
                         + f" | {s.get('stale', '-')} | {s.get('leaks', '-')} | {s.get('echoes', '-')} | {once}"
                         + f" | {s.get('reply_tok_s', '-')} | {row.get('cycle_s') or '-'} |")
    lines += ["", "Learner output per cycle:", ""]
    lines += [f"- cycle {r['cycle']}: {r.get('learn_summary', '-')}" for r in run["rows"] if r["cycle"]]
    return "\n".join(lines) + "\n"


def plot(run: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, mode in zip(axes, ("weights", "recall"), strict=True):
        xs = [r["cycle"] for r in run["rows"]]
        for col in ("reask", "paraphrase", "update", "style", "earlier", "control"):
            ys = [(r[mode][col]["passed"] / r[mode][col]["total"]) if r[mode][col]["total"] else None
                  for r in run["rows"]]
            ax.plot(xs, ys, marker="o", label=col)
        ax.set_title(f"{'weights alone' if mode == 'weights' else 'with recall'}")
        ax.set_xlabel("learning cycle (0 = base model)")
        ax.set_xticks(xs)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("probes right")
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def rescore(path: Path) -> None:
    """Count `echoes` in a saved run that predates them (its replies and scenario are in the
    JSON), and write its Markdown again."""
    run = json.loads(path.read_text())
    items = load_scenario(run["scenario"])
    batches = schedule(items, run["cycles"])
    for row in run["rows"]:
        taught = {it["id"] for batch in batches[:row["cycle"]] for it in batch}
        for mode in ("weights", "recall"):
            for p in row[mode]["probes"]:
                p["echoed"] = echoed(p, items, taught)
            row[mode]["echoes"] = sum(bool(p["echoed"]) for p in row[mode]["probes"])
    path.write_text(json.dumps(run, indent=1))
    path.with_suffix(".md").write_text(markdown(run))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default=str(DEFAULT_SCENARIO))
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--home", help="assistant home to use (default: a fresh temp dir)")
    ap.add_argument("--learn", action="append", metavar="KEY=VALUE",
                    help="a LearnConfig field for this run's home (repeatable), e.g. expert_r=4")
    ap.add_argument("--out", default="teach", help="stem of the result files (default %(default)s)")
    ap.add_argument("--rescore", type=Path, nargs="+", metavar="JSON",
                    help="only count echoes in saved runs (their .json) and rewrite their .md")
    args = ap.parse_args(argv)
    if args.rescore:
        for path in args.rescore:
            rescore(path)
        return 0

    items = load_scenario(args.scenario)
    home = Path(args.home or tempfile.mkdtemp(prefix="teach-bench-"))
    env = {**os.environ, "ASSISTANT_HOME": str(home), "HF_HUB_OFFLINE": "1", "ASSISTANT_MODEL": args.model}
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = {"stamp": stamp, "scenario": str(args.scenario), "model": args.model, "cycles": args.cycles,
           "embedder": embedder_name(),  # recall's and routing's (ASSISTANT_EMBEDDER, as the server reads it)
           "home": str(home), "rows": []}
    RESULTS.mkdir(parents=True, exist_ok=True)

    def save():
        md = markdown(run)
        for name in (f"{args.out}-{stamp}", f"{args.out}-latest"):
            (RESULTS / f"{name}.json").write_text(json.dumps(run, indent=1))
            (RESULTS / f"{name}.md").write_text(md)
        plot(run, RESULTS / f"{args.out}-latest.png")

    run["learn_config"] = manual_learning(home, args.learn)
    server = Server(env, args.model)
    try:
        taught: set[str] = set()
        batches = schedule(items, args.cycles)
        first = {it["id"] for it in batches[0] if it["kind"] == "fact"}
        print("cycle 0: scoring the base model", flush=True)
        run["rows"].append({"cycle": 0, "active": None,
                            "weights": score(server, items, False, set(), first),
                            "recall": score(server, items, True, set(), first)})
        save()
        for n, batch in enumerate(batches, 1):
            before = set(taught)
            for it in batch:
                for t in it["teach"]:
                    # as a user would: the assistant answers (recall on, as the chat runs), then is corrected
                    turn = server.ask(t["prompt"], recall=it["kind"] == "update", max_tokens=48)
                    server.correct(turn["id"], t["correction"])
                taught.add(it["id"])
            updates = {it["id"] for it in batch if it["kind"] == "update"}
            at_once = score(server, items, True, before, first, taught=taught, only=updates) if updates else None
            print(f"cycle {n}: taught {len(batch)} items; learning...", flush=True)
            t0 = time.perf_counter()
            learn = cli(env, "--model", args.model, "learn", "--force")
            learn_s = time.perf_counter() - t0
            # The server notices the new active version itself: the first reply after the
            # cycle comes from it, so the cycle's wall time includes the swap.
            first_reply = server.ask(batch[0]["teach"][0]["prompt"], recall=False)
            cycle_s = time.perf_counter() - t0
            active = server.adapters().get("active")
            row = {"cycle": n, "active": active, "learn_rc": learn.returncode,
                   "at_once": at_once and {**at_once["update"], "stale": at_once["stale"], "probes": at_once["probes"]},
                   "learn_s": round(learn_s, 1), "cycle_s": round(cycle_s, 1),
                   "served_by": first_reply.get("adapter_version"),
                   "learn_summary": (learn.stdout.strip().splitlines() or [learn.stderr.strip()[-300:]])[-1]}
            row["weights"] = score(server, items, False, before, first, taught=taught)
            row["recall"] = score(server, items, True, before, first, taught=taught)
            print(f"cycle {n}: {row['learn_summary']}", flush=True)
            run["rows"].append(row)
            save()
    finally:
        server.stop()
    print(markdown(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
