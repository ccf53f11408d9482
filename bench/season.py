"""A season of use (issue 26): hundreds of corrections over many learning cycles, and what they cost.

Drives the product through its public interfaces only, as bench/teach.py does (its `Server` and
`cli` are reused): a real `assistant serve` on a fresh home, each correction given as a user gives
it (`/v1/chat/completions`, then `/v1/feedback`), a learning cycle run with `assistant learn
--force` (gate included) after each cycle's corrections, and every probe answered through the API
with recall off (weights alone) and on, streamed so the time to the first token is measured too.
Probes are only ever sent as questions to score: nothing derived from them reaches training,
prompts or configuration, so any scenario file of the shape works unchanged (`--scenario`).

Scenario (JSONL, one item a line), as bench/teach.py's plus two kinds and a schedule:
  fact     {"id", "teach": [{"prompt", "correction"}], "probes": [re-ask, paraphrases...], "expect"}
  style    {"id", "teach": [...], "probes": [new prompts], "expect": [the habit's words]}
  control  {"id", "probes", "expect"}: general questions the base model answers right
  update   {"id", "of": <fact id>, "teach", "probes", "expect": [new value], "stale": [old value]}:
           taught after its fact; from then on the fact's own probes are no longer scored as a
           fact, the update's are (new value right, old value said).
  forget   {"id", "teach", "probes", "expect": [what must NOT be said once taken back],
           "how": "delete" | "no_learn", "back_cycle": N}: taught in its cycle, taken back
           (conversation deleted, or marked "don't learn") in cycle `back_cycle` (default: the next),
           before that cycle's learning. Until then it is scored as a fact.
  "cycle": N (1-based) on any taught item schedules it; items without one are spread evenly.

Each cycle: teach its items, take back what is due, `assistant learn --force`, the first reply
after it (the server swaps to the new version itself: the cycle's wall time includes the swap),
then measure and save (bench/results/<out>-<stamp>.{json,md,png} and <out>-latest.*), so a run
cut off keeps every finished cycle. Columns are explained in bench/README.md.

    python bench/season.py [--scenario bench/season_dev.jsonl] [--cycles-limit N] [--out season]
"""
import argparse
import datetime as dt
import json
import math
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from benchkit import RESULTS, ROOT, frac, manual_learning  # noqa: F401 - sets the environment up first

# isort: split

import httpx  # noqa: E402
from teach import Server, cli  # noqa: E402

from assistant.embedders import embedder_name  # noqa: E402
from learning.evaluate import contains_phrase, load_canaries  # noqa: E402
from learning.probes import load_scenario, passes  # noqa: E402
from store.manifest import Manifest  # noqa: E402

DEFAULT = ROOT / "bench" / "season_dev.jsonl"
TAUGHT_KINDS = ("fact", "style", "update", "forget")
KINDS = TAUGHT_KINDS + ("control",)
FACT_TOKENS, STYLE_TOKENS = 32, 64  # a sign-off habit needs room to reach the end of a reply
FIRST_CYCLES = 3  # retention: facts taught in cycles 1..3


# ---- the scenario ---------------------------------------------------------------------------------
def schedule(items: list[dict], default_cycles: int = 10) -> int:
    """Give every taught item its `_cycle` (forget items their `_back` too); returns the number of
    cycles. Items with a "cycle" keep it; the others are spread evenly in file order; an update
    comes at least one cycle after its fact, a take-back no earlier than its teaching."""
    taught = [it for it in items if it["kind"] in TAUGHT_KINDS]
    given = [it["cycle"] for it in taught if it.get("cycle")]
    n = max(given + [it["back_cycle"] for it in taught if it.get("back_cycle")] or [default_cycles])
    loose = [it for it in taught if not it.get("cycle")]
    for i, it in enumerate(loose):
        it["_cycle"] = 1 + i * n // max(len(loose), 1)
    for it in taught:
        if it.get("cycle"):
            it["_cycle"] = int(it["cycle"])
    by_id = {it["id"]: it for it in items}
    for it in taught:
        if it["kind"] == "update" and it["_cycle"] <= by_id[it["of"]]["_cycle"]:
            if it.get("cycle"):
                raise ValueError(f"update {it['id']} is scheduled no later than its fact {it['of']}")
            it["_cycle"] = by_id[it["of"]]["_cycle"] + 1
            n = max(n, it["_cycle"])
        if it["kind"] == "forget":
            it["_back"] = max(int(it.get("back_cycle") or it["_cycle"] + 1), it["_cycle"])
            n = max(n, it["_back"])
    return n


def corrections_of(it: dict) -> int:
    return len(it.get("teach") or [])


# ---- talking to the server ------------------------------------------------------------------------
def ask_stream(server: Server, prompt: str, recall: bool, max_tokens: int) -> dict:
    """One streamed reply: text, adapter version, content chunks, seconds to the first and in all."""
    body = {"model": "assistant", "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": max_tokens, "temperature": 0, "recall": recall}
    text, version, ttft = [], None, None
    t0 = time.perf_counter()
    with server.http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"generation failed for {prompt!r}: {chunk['error']}")
            version = chunk.get("adapter_version", version)
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    text.append(piece)
    return {"reply": "".join(text), "adapter_version": version, "ttft_s": ttft, "pieces": len(text),
            "total_s": time.perf_counter() - t0}


def take_back(server: Server, home: Path, conversation_id: str, how: str) -> str:
    """Delete a conversation or mark it "don't learn". Through the API when it offers that
    (`DELETE /v1/conversations/{id}`, `PATCH /v1/conversations/{id}` {"no_learn": true}); while it
    does not, through the store functions the web UI's buttons call (assistant/ui_conversations.py),
    on the same database. Returns which way it went."""
    path = f"/v1/conversations/{conversation_id}"
    try:
        r = (server.http.delete(path) if how == "delete"
             else server.http.patch(path, json={"no_learn": True}))
        if r.status_code < 300:
            return "api"
        code = ((r.json() if r.headers.get("content-type", "").startswith("application/json") else {})
                .get("error") or {}).get("code")
        if r.status_code not in (404, 405) or code == "conversation_not_found":
            r.raise_for_status()
    except httpx.HTTPStatusError:
        raise
    except httpx.HTTPError:
        pass
    from store import open_db
    from store.conversations import delete_conversation, update_conversation

    db = open_db(home / "assistant.db")
    if how == "delete":
        delete_conversation(db, conversation_id)
    else:
        update_conversation(db, conversation_id, no_learn=1)
    db.conn.close()
    return "store (as the web UI does)"


# ---- costs ----------------------------------------------------------------------------------------
def disk_mb(home: Path) -> dict:
    """Bytes on disk under the home, split: adapters (every kept version), database (with its WAL),
    cache, models (the converted embedded model), other. A file hard-linked into several versions
    (an expert or adapter a version kept unchanged) counts once, as the disk holds it once."""
    parts = {"adapters": 0, "database": 0, "cache": 0, "models": 0, "other": 0}
    seen = set()
    for root, _, files in os.walk(home):
        rel = Path(root).relative_to(home).parts
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            size = st.st_size
            if rel and rel[0] in ("adapters", "cache", "models"):
                parts[rel[0]] += size
            elif not rel and f.startswith("assistant.db"):
                parts["database"] += size
            else:
                parts["other"] += size
    out = {k: round(v / 1e6, 2) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / 1e6, 2)
    return out


def rss_mb(pid: int) -> dict:
    """The server's resident memory now and at its peak (/proc/<pid>/status VmRSS, VmHWM)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return {"rss": out.get("VmRSS"), "peak": out.get("VmHWM")}


def job_span(home: Path) -> float | None:
    """Seconds the newest learning job ran inside its process (its row's started_at to ended_at)."""
    try:
        with sqlite3.connect(f"file:{home / 'assistant.db'}?mode=ro", uri=True) as db:
            row = db.execute("SELECT started_at, ended_at FROM jobs ORDER BY started_at DESC LIMIT 1").fetchone()
        if row and row[0] and row[1]:
            return round((dt.datetime.fromisoformat(row[1]) - dt.datetime.fromisoformat(row[0])).total_seconds(), 1)
    except (sqlite3.Error, ValueError):
        pass
    return None


def stages(adapters: dict, version: int | None, learn_s: float, span: float | None) -> dict:
    """The cycle's stages: what the new version's meta.json "timings" (GET /v1/adapters) and the
    job row say; `evaluate_gate_s` is the job's time left after data and training (evaluation,
    gate, pruning), `startup_s` the `assistant learn` process's time outside the job."""
    row = next((a for a in adapters.get("data") or [] if a.get("version") == version), None)
    meta = Manifest.from_dict((row or {}).get("meta"))
    out = {"data_s": meta.extra.get("data_s"),
           **{k: round(v, 1) for k, v in meta.timings.items() if isinstance(v, int | float)}}
    measured = sum(v for v in out.values() if isinstance(v, int | float))
    if span is not None:
        out["evaluate_gate_s"] = round(max(span - measured, 0.0), 1)
        out["startup_s"] = round(max(learn_s - span, 0.0), 1)
    else:
        out["evaluate_gate_startup_s"] = round(max(learn_s - measured, 0.0), 1)
    out["experts"] = None if meta.experts is None else len(meta.experts)
    out["status"] = (row or {}).get("status")
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))], 3)


# ---- scoring --------------------------------------------------------------------------------------
def state_at(items: list[dict], n: int) -> dict:
    """What has been taught and taken back by the end of cycle `n`."""
    taught = {it["id"] for it in items if it["kind"] in TAUGHT_KINDS and it["_cycle"] <= n}
    back = {it["id"] for it in items if it["kind"] == "forget" and it["_back"] <= n}
    updated = {it["of"] for it in items if it["kind"] == "update" and it["id"] in taught}
    return {"taught": taught, "back": back, "updated": updated}


def probes_at(items: list[dict], state: dict, canaries: list[dict], everything: bool = False,
              per_item: int | None = None, cycle: int = 0) -> list[dict]:
    """The probes scored after a cycle, each with its role: fact (a live taught fact: a fact not
    updated, an update, a forget item not yet taken back), back (taken back), style, control,
    canary; `everything`: also the facts not taught yet (role "untaught", the base reference).
    `per_item`: at most this many probes of each item, taken in turn by `cycle` (cycle n starts
    at its n-th probe), so every item is scored every cycle and every probe over the cycles."""
    out = []
    for it in items:
        tid, kind = it["id"], it["kind"]
        if kind == "control":
            role = "control"
        elif kind == "style":
            role = "style"
        elif tid not in state["taught"]:
            if not everything or kind != "fact":
                continue
            role = "untaught"
        elif kind == "forget" and tid in state["back"]:
            role = "back"
        elif kind == "fact" and tid in state["updated"]:
            continue  # its update's probes are scored instead
        else:
            role = "fact"
        for i, p in rotation(it["probes"], per_item, cycle):
            out.append({"item": tid, "kind": kind, "role": role, "family": "reask" if i == 0 else "paraphrase",
                        "prompt": p, "expect": it.get("expect") or [], "format": it.get("format"),
                        "stale": it.get("stale") or []})
    out += [{"item": f"canary:{c['id']}", "kind": "canary", "role": "canary", "family": "canary",
             "prompt": c["prompt"], "expect": c["expect"], "stale": []} for c in canaries]
    return out


def rotation(values: list, n: int | None, cycle: int) -> list[tuple[int, object]]:
    """(index, value) of `n` of `values` starting at position `cycle` and wrapping (all when n is
    None or covers them), in index order."""
    if n is None or n >= len(values):
        return list(enumerate(values))
    picked = sorted((cycle + k) % len(values) for k in range(n))
    return [(i, values[i]) for i in picked]


def leak_phrases(items: list[dict], state: dict) -> list[tuple[str, str, str]]:
    """(item id, its family's root fact id, phrase) for every taught fact, update and forget item."""
    out = []
    for it in items:
        if it["kind"] in ("fact", "update", "forget") and it["id"] in state["taught"]:
            root = it.get("of") or it["id"]
            out += [(it["id"], root, e) for e in it["expect"]]
    return out


def leaks_in(p: dict, reply: str, phrases, items_by_id: dict) -> list[str]:
    """A taught answer in a reply where it does not belong: a phrase of another item (not of the
    probe's own fact and its updates), not in the probe's prompt, not in its own item's corrections."""
    own = items_by_id.get(p["item"]) or {}
    root = own.get("of") or p["item"]
    own_text = " ".join(t["correction"] for t in own.get("teach") or []) + " " + " ".join(own.get("expect") or [])
    found = []
    for iid, iroot, phrase in phrases:
        if iroot == root or iid == p["item"]:
            continue
        if contains_phrase(p["prompt"], phrase) or contains_phrase(own_text, phrase):
            continue
        if contains_phrase(reply, phrase):
            found.append(f"{iid}:{phrase}")
    return found


def score(server: Server, probes: list[dict], recall: bool, items: list[dict], state: dict) -> dict:
    """Every probe streamed through the API; counts per role and the leaks."""
    by_id = {it["id"]: it for it in items}
    phrases = leak_phrases(items, state)
    first = {it["id"] for it in items if it["kind"] == "fact" and it["_cycle"] <= FIRST_CYCLES}
    rows, ttfts = [], []
    for p in probes:
        r = ask_stream(server, p["prompt"], recall, STYLE_TOKENS if p["role"] == "style" else FACT_TOKENS)
        row = {**p, "reply": r["reply"], "adapter_version": r["adapter_version"], "ttft_s": r["ttft_s"]}
        row["passed"] = passes(p, r["reply"])
        row["stale_said"] = any(contains_phrase(r["reply"], s) for s in p["stale"])
        row["leaks"] = leaks_in(p, r["reply"], phrases, by_id)
        if r["ttft_s"] is not None:
            ttfts.append(r["ttft_s"])
        rows.append(row)

    def count(pred, field="passed"):
        sel = [r for r in rows if pred(r)]
        return {"passed": sum(bool(r[field]) for r in sel), "total": len(sel)}

    style_taught = lambda r: r["role"] == "style" and r["item"] in state["taught"]  # noqa: E731
    return {
        "facts": count(lambda r: r["role"] == "fact"),
        "reask": count(lambda r: r["role"] == "fact" and r["family"] == "reask"),
        "paraphrase": count(lambda r: r["role"] == "fact" and r["family"] == "paraphrase"),
        "first": count(lambda r: r["role"] == "fact" and r["item"] in first and r["kind"] == "fact"),
        "updated": count(lambda r: r["role"] == "fact" and r["kind"] == "update"),
        "stale": count(lambda r: r["role"] == "fact" and r["kind"] == "update", "stale_said"),
        "back_said": count(lambda r: r["role"] == "back"),
        "untaught": count(lambda r: r["role"] == "untaught"),
        "style": count(style_taught),
        "style_untaught": count(lambda r: r["role"] == "style" and not style_taught(r)),
        "control": count(lambda r: r["role"] == "control"),
        "canary": count(lambda r: r["role"] == "canary"),
        "leaks": {"passed": sum(bool(r["leaks"]) for r in rows), "total": len(rows)},
        "ttft_p50_s": percentile(ttfts, 0.5), "ttft_p95_s": percentile(ttfts, 0.95),
        "probes": rows,
    }


# ---- reporting ------------------------------------------------------------------------------------
ACC = ("facts", "first", "updated", "stale", "back_said", "control", "canary", "style", "leaks")


def markdown(run: dict) -> str:
    lines = [f"# A season of use — {run['stamp']}", "",
             f"Scenario `{run['scenario']}`, model `{run['model']}`, sentence embedder `{run['embedder']}`, "
             f"{run['cycles_done']} of {run['cycles']} cycles. Command: `{run['command']}`. "
             "Columns: bench/README.md (\"A season of use\"). `w`: recall off (weights alone), `r`: recall on. "
             "`stale` and `taken back`, `leaks`: how many replies said it (lower is better)."
             + ("" if not (run.get("probes_per_item") or run.get("canaries_per_cycle")) else
                f" Before the last cycle each item is scored on {run.get('probes_per_item') or 'all'} of its "
                f"probes and {run.get('canaries_per_cycle') or 'all'} canaries are asked, in turn; the last "
                f"cycle scores {run.get('last_probes_per_item') or 'all'} probes of each item and every canary."), "",
             "| cycle | corrections (new) | facts w | facts r | first 3 cycles w | first 3 r | updated w | "
             "updated r | stale w | stale r | taken back said w | taken back said r | control w | control r | "
             "canary w | canary r | style w | style r | leaks w | leaks r |",
             "|" + "---|" * 20]
    for row in run["rows"]:
        w, r = row["weights"], row.get("recall") or {}
        cells = []
        for c in ("facts", "first", "updated", "stale", "back_said", "control", "canary", "style", "leaks"):
            cells += [frac(w[c]), frac(r[c]) if r else "-"]
        lines.append(f"| {row['cycle']} | {row['corrections']} ({row['new_corrections']}) | " + " | ".join(cells) + " |")
    lines += ["", "Costs:", "",
              "| cycle | cycle wall s | s per new correction | teach s | learn s | swap s | stages s | "
              "active | adapters MB | database MB | cache MB | models MB | server RSS MB (peak) | "
              "learn peak RSS MB | TTFT p50/p95 s w | TTFT p50/p95 s r |",
              "|" + "---|" * 16]
    for row in run["rows"]:
        d, m = row["disk_mb"], row["rss_mb"]
        w, r = row["weights"], row.get("recall") or {}
        st = ", ".join(f"{k.removesuffix('_s')} {v}" for k, v in (row.get("stages") or {}).items()
                       if k.endswith("_s") and v is not None)
        lines.append(
            f"| {row['cycle']} | {row.get('cycle_s', '-')} | {row.get('s_per_correction', '-')} | "
            f"{row.get('teach_s', '-')} | {row.get('learn_s', '-')} | {row.get('swap_s', '-')} | {st or '-'} | "
            f"{row.get('active')} | {d['adapters']} | {d['database']} | {d['cache']} | {d['models']} | "
            f"{m['rss']} ({m['peak']}) | {row.get('learn_peak_rss_mb', '-')} | "
            f"{w['ttft_p50_s']}/{w['ttft_p95_s']} | "
            f"{(str(r['ttft_p50_s']) + '/' + str(r['ttft_p95_s'])) if r else '-'} |")
    lines += ["", "Learner output and take-backs per cycle:", ""]
    for row in run["rows"]:
        if row["cycle"]:
            back = "; ".join(f"{b['item']} ({b['how']} via {b['via']})" for b in row.get("taken_back") or [])
            lines.append(f"- cycle {row['cycle']}: {row.get('learn_summary', '-')}"
                         + (f" Taken back: {back}." if back else ""))
    last = run["rows"][-1]
    examples = [(mode, p) for mode in ("weights", "recall") for p in (last.get(mode) or {}).get("probes", [])
                if p["leaks"] or p["stale_said"] or (p["role"] == "back" and p["passed"])]
    if examples:
        lines += ["", f"Leaks, stale values and taken-back facts said after cycle {last['cycle']}:", ""]
        for mode, p in examples[:40]:
            what = ", ".join(p["leaks"]) or ("stale" if p["stale_said"] else "taken back")
            lines.append(f"- {mode}, {p['item']}: \"{p['prompt']}\" -> \"{p['reply'][:120]}\" ({what})")
    return "\n".join(lines) + "\n"


def plot(run: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run["rows"]
    xs = [r["corrections"] for r in rows]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))

    def share(c):
        return c["passed"] / c["total"] if c["total"] else None

    for ax, mode in zip(axes[0][:2], ("weights", "recall"), strict=True):
        for col in ("facts", "first", "updated", "control", "canary", "style"):
            ys = [share(r[mode][col]) if r.get(mode) else None for r in rows]
            ax.plot(xs, ys, marker="o", label=col)
        for col in ("stale", "back_said", "leaks"):
            ys = [r[mode][col]["passed"] if r.get(mode) else None for r in rows]
            ax.plot(xs, [None if y is None else y / 100 for y in ys], ls=":", marker="x", label=f"{col} (count/100)")
        ax.set_title("weights alone" if mode == "weights" else "with recall")
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("share of probes right")
    axes[0][1].legend(fontsize=7, loc="lower left")
    ax = axes[0][2]
    ax.plot(xs, [r.get("cycle_s") for r in rows], marker="o", label="cycle wall s")
    ax.plot(xs, [r.get("learn_s") for r in rows], marker="o", label="learn s")
    ax2 = ax.twinx()
    ax2.plot(xs, [r.get("s_per_correction") for r in rows], marker="s", color="grey", label="s per new correction")
    ax.set_title("time per cycle")
    ax.legend(fontsize=7, loc="upper left")
    ax2.legend(fontsize=7, loc="lower right")
    ax = axes[1][0]
    for k in ("adapters", "database", "cache"):
        ax.plot(xs, [r["disk_mb"][k] for r in rows], marker="o", label=k)
    ax.set_title("disk MB in the home")
    ax.legend(fontsize=7)
    ax = axes[1][1]
    ax.plot(xs, [r["rss_mb"]["rss"] for r in rows], marker="o", label="server RSS")
    ax.plot(xs, [r["rss_mb"]["peak"] for r in rows], marker="o", label="server peak RSS")
    ax.plot(xs, [r.get("learn_peak_rss_mb") for r in rows], marker="o", label="learn peak RSS")
    ax.set_title("memory MB")
    ax.legend(fontsize=7)
    ax = axes[1][2]
    for mode in ("weights", "recall"):
        for q in ("p50", "p95"):
            ax.plot(xs, [r[mode][f"ttft_{q}_s"] if r.get(mode) else None for r in rows], marker="o",
                    label=f"{mode} {q}")
    ax.set_title("time to first token s")
    ax.legend(fontsize=7)
    for a in axes.flat:
        a.set_xlabel("corrections given")
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the run --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default=str(DEFAULT))
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--cycles-limit", type=int, help="stop after this many cycles (a quick check)")
    ap.add_argument("--default-cycles", type=int, default=10, help="cycles when no item says (default %(default)s)")
    ap.add_argument("--home", help="assistant home to use (default: a fresh temp dir)")
    ap.add_argument("--no-canaries", action="store_true", help="skip the 40 canary questions (learning/canaries.jsonl)")
    ap.add_argument("--base-facts", action="store_true", help="cycle 0 also scores every fact (the base reference)")
    ap.add_argument("--probes-per-item", type=int, metavar="N",
                    help="score at most N probes of each item per cycle, in turn (default: all); the last "
                         "cycle scores all")
    ap.add_argument("--last-probes-per-item", type=int, metavar="N",
                    help="score at most N probes of each item in the last cycle (default: all)")
    ap.add_argument("--canaries-per-cycle", type=int, metavar="N",
                    help="score N of the canaries per cycle, in turn (default: all); the last cycle scores all")
    ap.add_argument("--learn", action="append", metavar="KEY=VALUE",
                    help="a LearnConfig field for this run's home (repeatable), e.g. expert_r=4")
    ap.add_argument("--out", default="season", help="stem of the result files (default %(default)s)")
    args = ap.parse_args(argv)

    items = load_scenario(args.scenario)
    cycles = schedule(items, args.default_cycles)
    todo = min(cycles, args.cycles_limit or cycles)
    canaries = [] if args.no_canaries else load_canaries()
    home = Path(args.home or tempfile.mkdtemp(prefix="season-bench-"))
    env = {**os.environ, "ASSISTANT_HOME": str(home), "HF_HUB_OFFLINE": "1", "ASSISTANT_MODEL": args.model}
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    scenario = Path(args.scenario).resolve()
    run = {"stamp": stamp, "scenario": str(scenario.relative_to(ROOT) if scenario.is_relative_to(ROOT) else scenario),
           "model": args.model, "embedder": embedder_name(), "cycles": cycles, "cycles_done": 0,
           "command": "python bench/season.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "home": str(home), "cpus": os.cpu_count(), "probes_per_item": args.probes_per_item,
           "canaries_per_cycle": args.canaries_per_cycle, "last_probes_per_item": args.last_probes_per_item,
           "rows": []}
    RESULTS.mkdir(parents=True, exist_ok=True)

    def save():
        md = markdown(run)
        for name in (f"{args.out}-{stamp}", f"{args.out}-latest"):
            (RESULTS / f"{name}.json").write_text(json.dumps(run, indent=1, ensure_ascii=False))
            (RESULTS / f"{name}.md").write_text(md)
            plot(run, RESULTS / f"{name}.png")

    run["learn_config"] = manual_learning(home, args.learn)
    server = Server(env, args.model)
    conversations: dict[str, list[str]] = {}
    given = 0
    try:
        print(f"cycle 0: scoring the base model ({cycles} cycles scheduled, {todo} to run)", flush=True)
        state = state_at(items, 0)
        base = score(server, probes_at(items, state, canaries, everything=args.base_facts), False, items, state)
        run["rows"].append({"cycle": 0, "corrections": 0, "new_corrections": 0, "active": None,
                            "weights": base, "recall": None, "disk_mb": disk_mb(home),
                            "rss_mb": rss_mb(server.proc.pid)})
        save()
        for n in range(1, todo + 1):
            batch = [it for it in items if it["kind"] in TAUGHT_KINDS and it["_cycle"] == n]
            t0 = time.perf_counter()
            new = 0
            for it in batch:
                for t in it["teach"]:
                    turn = server.ask(t["prompt"], recall=False, max_tokens=48)
                    conversations.setdefault(it["id"], []).append(turn["conversation_id"])
                    server.correct(turn["id"], t["correction"])
                    new += 1
            teach_s = time.perf_counter() - t0
            taken = []
            for it in items:
                if it["kind"] == "forget" and it["_back"] == n:
                    how = it.get("how", "delete")
                    via = {take_back(server, home, cid, how) for cid in conversations.get(it["id"], [])}
                    taken.append({"item": it["id"], "how": how, "via": ", ".join(sorted(via))})
            given += new
            print(f"cycle {n}: taught {new} corrections ({given} in all), took back {len(taken)}; learning...",
                  flush=True)
            t1 = time.perf_counter()
            learn = cli(env, "--model", args.model, "learn", "--force")
            learn_s = time.perf_counter() - t1
            probe_prompt = next(it for it in items if it["kind"] == "control")["probes"][0] \
                if any(it["kind"] == "control" for it in items) else batch[0]["teach"][0]["prompt"]
            first_reply = server.ask(probe_prompt, recall=False)
            cycle_s = time.perf_counter() - t0
            adapters = server.adapters()
            newest = max((a["version"] for a in adapters.get("data") or []), default=None)
            row = {"cycle": n, "corrections": given, "new_corrections": new, "active": adapters.get("active"),
                   "newest": newest, "learn_rc": learn.returncode, "teach_s": round(teach_s, 1),
                   "learn_s": round(learn_s, 1), "swap_s": round(cycle_s - teach_s - learn_s, 1),
                   "cycle_s": round(cycle_s, 1), "s_per_correction": round(cycle_s / max(new, 1), 1),
                   "served_by": first_reply.get("adapter_version"), "taken_back": taken,
                   "stages": stages(adapters, newest, learn_s, job_span(home)),
                   "learn_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                   "learn_summary": (learn.stdout.strip().splitlines() or [learn.stderr.strip()[-300:]])[-1]}
            row["disk_mb"] = disk_mb(home)
            state = state_at(items, n)
            last = n == todo
            probes = probes_at(items, state, [c for _, c in rotation(
                canaries, None if last else args.canaries_per_cycle, n * (args.canaries_per_cycle or 0))],
                per_item=args.last_probes_per_item if last else args.probes_per_item, cycle=n)
            row["weights"] = score(server, probes, False, items, state)
            row["recall"] = score(server, probes, True, items, state)
            row["rss_mb"] = rss_mb(server.proc.pid)  # with every expert asked about loaded
            w, r = row["weights"], row["recall"]
            print(f"cycle {n}: {row['learn_summary']} | facts w {frac(w['facts'])} r {frac(r['facts'])} | "
                  f"cycle {row['cycle_s']} s | adapters {row['disk_mb']['adapters']} MB | "
                  f"RSS {row['rss_mb']['rss']} MB", flush=True)
            run["rows"].append(row)
            run["cycles_done"] = n
            save()
    finally:
        server.stop()
    print(markdown(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
