"""Benchmark of recall memory (issue 5): corrections given, no training, probes answered with recall.

    python bench/memory.py                 # the scenario: writes bench/results/memory.{json,md}
    python bench/memory.py --dev           # choose threshold and prompt form on OUR dev set
                                           # (bench/recall_dev.jsonl): bench/results/memory.dev.{json,md}
    options: --model DIR (a converted embedded model, skips the ~17 s conversion), --n-timing 10000
             --dev --forms notes,lines@top1 (only these forms) --cache FILE (reuse replies generated before)

Scenario run: a fresh home; every correction of ../shared/scenarios/teach.jsonl is given the way a
user gives it (ChatService answers the prompt on the real embedded model, then
Runtime.record_feedback stores the correction); then every probe goes through
ChatService.start_turn (the product's prompt, recall on and off) and is answered greedily with 32
new tokens, batched. A probe passes when one `expect` occurs as a whole word or phrase,
case-insensitively (`passes`). Nothing here feeds back into configuration: the threshold and the
form are chosen by `--dev` on our own facts, never on the scenario's probes.

Retrieval timing: 10,000 distinct correction rows are written into a second fresh database and
`Memory.recall` is timed per turn (fingerprint query + query embedding + matrix product).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchkit import DEFAULT_SCENARIO, RESULTS, ROOT  # noqa: E402,F401 - sets the environment up first
from benchkit import frac as pct  # noqa: E402 - "47/48 (97.9%)", never rounded up to a target

# isort: split

import numpy as np  # noqa: E402
import torch  # noqa: E402

from assistant import matching, notes  # noqa: E402
from assistant import memory as memory_mod  # noqa: E402
from assistant.config import DEFAULT_SYSTEM_PROMPT, Config  # noqa: E402
from assistant.matching import RECALL_POLICY  # noqa: E402
from assistant.model import ServedModel, resolve_model  # noqa: E402
from assistant.rerank import chat_reranker  # noqa: E402
from assistant.runtime import Runtime  # noqa: E402
from learning.evaluate import contains_phrase  # noqa: E402
from learning.probes import corrections, load_scenario, probe_list  # noqa: E402
from learning.scoring import Scorer  # noqa: E402

SCENARIO = DEFAULT_SCENARIO
DEV = ROOT / "bench" / "recall_dev.jsonl"
MAX_NEW_TOKENS = 32
recall_policy = RECALL_POLICY  # main() may change it (--answer-key)


# ---- scoring and batched generation: LEARNER's, so every bench scores probes the same way ----------
def passes(reply: str, expect: list[str]) -> bool:
    """True when one of `expect` occurs in `reply` as a whole word or phrase, case-insensitively."""
    return any(contains_phrase(reply, e) for e in expect)


def generate_batch(model, prompts: list[list[dict]], avoid_first: list[int | None] | None = None,
                   leads: list[str | None] | None = None) -> list[str]:
    """Greedy replies (32 new tokens) for many chat prompts at once, on the base model;
    `avoid_first` and `leads` as in a chat turn (Turn.avoid_first, Turn.lead)."""
    scorer = Scorer(model, batch_size=16, max_new_tokens=MAX_NEW_TOKENS)
    scorer.select(None)
    return [r.strip() for r in scorer.generate(prompts, avoid_first=avoid_first, leads=leads)]


def teach(runtime: Runtime, pairs: list[tuple[str, str]]) -> list[str]:
    """Give corrections as a user does: ask, get the model's answer, correct it. Returns feedback ids.
    (The wrong answer is cut to 8 tokens: only the correction matters to recall, and the CPU is slow.)"""
    ids = []
    for prompt, correction in pairs:
        turn = runtime.chat.reply(prompt, source="bench", recall=False, max_new_tokens=8)
        ids.append(runtime.record_feedback(turn.turn_id, "correction", correction=correction))
    return ids


def open_runtime(model_spec: str | None, threshold: float | None = None, **kw) -> Runtime:
    home = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    cfg = Config(home=home, model=model_spec or "embedded", default_max_new_tokens=MAX_NEW_TOKENS)
    model = ServedModel(resolve_model(cfg.model, cfg.models_dir))
    mem = memory_mod.Memory(cfg, policy=recall_policy, threshold=recall_policy.threshold if threshold is None
                            else threshold, reranker=chat_reranker(model, cfg), **kw)  # as Runtime.create
    return Runtime.create(cfg, model=model, memory=mem)


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- the scenario ---------------------------------------------------------------------------------
def run_scenario(model_spec: str | None) -> dict:
    items = load_scenario(SCENARIO)
    rt = open_runtime(model_spec)
    t0 = time.perf_counter()
    fact_of = {}  # feedback id -> item id
    for c in corrections(items):
        fid, = teach(rt, [(c["prompt"], c["correction"])])
        fact_of[fid] = c["item"]
    teach_s = time.perf_counter() - t0

    probes = probe_list(items)  # item, family (reask | paraphrase | style | control), prompt, expect
    on = [rt.chat.start_turn(p["prompt"], recall=True) for p in probes]
    # Recall off only where it tells something: controls (must not change) and style. Facts with
    # recall off are the base model's 0/48 (GUIDE section 7); skipping them saves a third of the run.
    off = {i: rt.chat.start_turn(p["prompt"], recall=False) for i, p in enumerate(probes)
           if p["family"] in ("control", "style")}
    turns = on + list(off.values())
    t0 = time.perf_counter()
    replies = dict(zip(map(prompt_key, turns), generate_distinct(rt.model, turns), strict=True))
    gen_s = time.perf_counter() - t0

    rows = []
    for i, (p, t_on) in enumerate(zip(probes, on, strict=True)):
        r_on = replies[prompt_key(t_on)]
        r_off = replies[prompt_key(off[i])] if i in off else None
        rows.append({
            **p, "recalled": [{"item": fact_of.get(r["feedback_id"]), "score": r["score"]} for r in t_on.recalled],
            "right_recalled": p["item"] in [fact_of.get(r["feedback_id"]) for r in t_on.recalled],
            "reply_on": r_on, "reply_off": r_off, "pass_on": passes(r_on, p["expect"]),
            "pass_off": None if r_off is None else passes(r_off, p["expect"]),
        })
    check = [t for t in on if t.recalled][:2]
    return {"teach_s": round(teach_s, 1), "generate_s": round(gen_s, 1), "prompts_generated": len(set(replies)),
            "rows": rows, "summary": summarise(rows),
            "consistency": batch_consistency(rt, check, [replies[prompt_key(t)] for t in check])}


def prompt_key(turn) -> str:
    """What decides a greedy reply: the messages, the token the reply may not start with and
    the words it starts with."""
    return json.dumps([turn.messages, turn.avoid_first, turn.lead])


def generate_distinct(model, turns: list) -> list[str]:
    """generate_batch for chat turns, each distinct prompt once (recall that fires on nothing
    leaves prompts equal)."""
    distinct = list({prompt_key(t): t for t in turns}.values())
    got = dict(zip(map(prompt_key, distinct), generate_batch(model, [t.messages for t in distinct],
                                                              [t.avoid_first for t in distinct],
                                                              [t.lead for t in distinct]), strict=True))
    return [got[prompt_key(t)] for t in turns]


def summarise(rows: list[dict]) -> dict:
    def frac(sel, key):
        sel = [r for r in sel if r[key] is not None]
        return {"passed": sum(r[key] for r in sel), "total": len(sel)}

    by = {k: [r for r in rows if r["family"] == k] for k in ("reask", "paraphrase", "style", "control")}
    facts = by["reask"] + by["paraphrase"]
    return {
        "facts_on": frac(facts, "pass_on"),
        "reask_on": frac(by["reask"], "pass_on"), "paraphrase_on": frac(by["paraphrase"], "pass_on"),
        "fact_recall_hit": frac(facts, "right_recalled"),
        "style_on": frac(by["style"], "pass_on"), "style_off": frac(by["style"], "pass_off"),
        "style_recall_fired": sum(bool(r["recalled"]) for r in by["style"]),
        "controls_on": frac(by["control"], "pass_on"), "controls_off": frac(by["control"], "pass_off"),
        "controls_reply_changed": sum(r["reply_on"] != r["reply_off"] for r in by["control"]),
        "false_recalls": sum(bool(r["recalled"]) for r in by["control"]),
    }


def batch_consistency(rt: Runtime, turns, batched: list[str]) -> dict:
    """Batched left-padded greedy should equal the product's one-at-a-time stream; check a few."""
    same = sum(rt.model.generate(t.messages, max_new_tokens=MAX_NEW_TOKENS,
                                     avoid_first=t.avoid_first, lead=t.lead).text.strip() == b
               for t, b in zip(turns, batched, strict=True))
    return {"checked": len(turns), "identical": same}


# ---- retrieval time with many stored corrections -------------------------------------------------
def synthesise_corrections(db, n: int) -> None:
    """n distinct corrections (distinct prompts), written in bulk like years of use would leave them."""
    from store.db import now_iso
    from store.ids import new_id

    things = ["dog", "cat", "car", "bike", "boat", "house", "garden", "phone", "laptop", "team",
              "project", "band", "club", "school", "doctor", "city", "street", "printer", "router", "plant"]
    attrs = ["name", "colour", "model", "address", "code", "owner", "size", "age", "brand", "nickname"]
    now = now_iso()
    cid = new_id()
    db["conversations"].insert({"id": cid, "title": "synthetic", "no_learn": 0, "created_at": now,
                                "updated_at": now})
    turns, fb = [], []
    for i in range(n):
        tid = new_id()
        thing, attr = things[i % len(things)], attrs[(i // len(things)) % len(attrs)]
        prompt = f"What is the {attr} of my {thing} number {i}?"
        turns.append({"id": tid, "conversation_id": cid, "user_message": prompt, "reply": "I don't know.",
                      "messages_json": "[]", "recalled_json": "[]", "created_at": now})
        fb.append({"id": new_id(), "turn_id": tid, "kind": "correction", "quarantined": 0,
                   "correction": f"The {attr} of your {thing} number {i} is item-{i}.", "created_at": now})
    with db.conn:
        db["turns"].insert_all(turns, batch_size=1000)
        db["feedback"].insert_all(fb, batch_size=1000)


def retrieval_timing(n: int, queries: list[str]) -> dict:
    from store import open_db

    home = Path(tempfile.mkdtemp(prefix="bench-memory-timing-"))
    cfg = Config(home=home)
    db = open_db(cfg.db_path)
    synthesise_corrections(db, n)
    mem = memory_mod.Memory(cfg)
    t0 = time.perf_counter()
    mem.sync(db)
    mem.embedder.load()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mem.recall("warm up")  # embeds every stored prompt once (then cached by feedback id)
    index_s = time.perf_counter() - t0
    per_turn, sync_ms, embed_ms = [], [], []
    # every timed text is new: the embedder remembers recent messages (a turn's second use of its
    # message, by the adapter scope, is free) and a repeated query would time that memory
    for i, q in enumerate(queries * 3):
        t0 = time.perf_counter()
        mem.recall(f"{q} ({i})")
        per_turn.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        mem.sync(db)
        sync_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        mem.embedder.encode([f"{q} [{i}]"])
        embed_ms.append((time.perf_counter() - t0) * 1000)
    # a restart: a new Memory on the same home reads the search keys from the disk cache
    t0 = time.perf_counter()
    memory_mod.Memory(cfg).recall(f"{queries[0]} (after a restart)")
    restart_s = time.perf_counter() - t0
    # a new correction arriving: the incremental path (one row embedded, not 10,000)
    synthesise_corrections(db, 1)
    t0 = time.perf_counter()
    mem.recall(f"{queries[0]} (after a new correction)")
    incremental_ms = (time.perf_counter() - t0) * 1000
    q = np.asarray(per_turn)
    return {"corrections": len(mem), "model_load_s": round(load_s, 2), "index_build_s": round(index_s, 1),
            "index_after_restart_s": round(restart_s, 1),
            "recall_ms_median": round(float(np.median(q)), 1), "recall_ms_p95": round(float(np.percentile(q, 95)), 1),
            "sync_ms_median": round(statistics.median(sync_ms), 2),
            "query_embed_ms_median": round(statistics.median(embed_ms), 1),
            "first_recall_after_new_correction_ms": round(incremental_ms, 1), "turns_timed": len(per_turn),
            "torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 1),
            "cpus": os.cpu_count()}


# ---- choosing threshold and form on our own dev set ------------------------------------------------
def exchange_messages(system: str, recalled: list[dict], question: str) -> list[dict]:
    """The 'prior exchange' form: recalled corrections as earlier turns, best match last."""
    past = []
    for r in reversed(recalled):
        past += [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["correction"]}]
    return [{"role": "system", "content": system}, *past, {"role": "user", "content": question}]


def _lines(rs, a="A", q="Q"):
    return "\n".join(f"{q}: {r['prompt']}\n{a}: {r['correction']}" for r in rs)


AFTER = "\n(Earlier corrections from the user.)"
# Candidate forms measured on the dev set beside memory.FORMS (the product's form is there).
CANDIDATES = {
    "lines": lambda rs: _lines(rs),  # Q/A lines, no instruction
    "notes_after": lambda rs: _lines(rs) + AFTER,  # lines, then what they are
    "notes_after_reversed": lambda rs: _lines(rs[::-1]) + AFTER,  # best match nearest the question
    "lines_use": lambda rs: _lines(rs) + "\nUse these answers.",
    "lines_corrected": lambda rs: _lines(rs) + "\nThe user corrected you with these answers; use them.",
    "corrections_first": lambda rs: "Corrections:\n" + _lines(rs),
    "transcript": lambda rs: "Earlier conversation:\n" + _lines(rs, "Assistant", "User"),
    "transcript_after": lambda rs: _lines(rs, "You", "User") + AFTER,
    "words_after": lambda rs: _lines(rs, "Answer", "Question") + AFTER,
    "answers": lambda rs: "Known:\n" + "\n".join(r["correction"] for r in rs),
    "note": lambda rs: "\n".join(f"Note: {r['correction']}" for r in rs),
    "remember": lambda rs: "Remember: " + " ".join(r["correction"] for r in rs),
    # the best answer again as the last line ("notes_last" in memory.FORMS is notes_after + this)
    "lines_repeat": lambda rs: _lines(rs) + "\n" + rs[0]["correction"],
    "notes_repeat": lambda rs: notes.render(rs, "notes") + "\n" + rs[0]["correction"],
    "notes_after_answer": lambda rs: _lines(rs) + AFTER + "\nAnswer: " + rs[0]["correction"],
    "words_after_repeat": lambda rs: _lines(rs, "Answer", "Question") + AFTER + "\n" + rs[0]["correction"],
    "transcript_after_repeat": lambda rs: _lines(rs, "You", "User") + AFTER + "\n" + rs[0]["correction"],
}


def form_messages(form: str, recalled: list[dict], question: str) -> list[dict]:
    """A candidate prompt. `form` is a name of memory.FORMS, "none", "exchange" or "NAME+exchange"
    (the form in the system prompt and the best match as a prior exchange), or a name of
    CANDIDATES, optionally with a selection suffix: "@top1" (best match only) or "@m0.1" (best,
    and others within 0.1 of it: what Memory.recall does with its default margin)."""
    form, _, sel = form.partition("@")
    if sel == "top1":
        recalled = recalled[:1]
    elif sel.startswith("m"):
        recalled = notes.select(recalled, float(sel[1:]))
    system = DEFAULT_SYSTEM_PROMPT
    base, _, extra = form.partition("+")
    if base == "exchange":
        return exchange_messages(system, recalled, question)
    if base != "none" and recalled:
        system += "\n\n" + (CANDIDATES[base](recalled) if base in CANDIDATES else notes.render(recalled, base))
    if extra == "exchange":
        return exchange_messages(system, recalled[:1], question)
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def recalled_at(q: dict, threshold: float, relative_margin: float | None) -> list[dict]:
    """The candidates of question `q` that Memory.recall would keep (memory.relevant)."""
    keep = matching.relevant([c["score"] for c in q["candidates"]], threshold, q["ordinary"], relative_margin)
    return [c for c, k in zip(q["candidates"], keep, strict=True) if k]


def sweep(questions: list[dict], grid: list[float], relative_margin: float | None) -> list[dict]:
    """Per threshold: how often the right fact is recalled, and how many controls recall anything."""
    out = []
    for t in grid:
        got = {id(q): recalled_at(q, t, relative_margin) for q in questions}
        hits = [q for q in questions if q["kind"] == "fact" and any(r["item"] == q["item"] for r in got[id(q)])]
        false = [q for q in questions if q["kind"] == "control" and got[id(q)]]
        wrong_only = [q for q in questions if q["kind"] == "fact" and q not in hits and got[id(q)]]
        out.append({"threshold": t, "fact_recall": len(hits), "facts": sum(q["kind"] == "fact" for q in questions),
                    "false_recalls_on_controls": len(false), "facts_with_only_wrong_recall": len(wrong_only)})
    return out


def cached_generate(model, prompts: list[tuple[list[dict], int | None, str | None]],
                    cache: Path | None) -> tuple[list[str], int]:
    """generate_batch for (messages, avoid_first, lead) prompts, reusing replies stored in `cache`
    (a JSON file, prompt -> greedy reply) from earlier dev runs; returns the replies and how many
    were generated now."""
    store = json.loads(cache.read_text()) if cache and cache.exists() else {}
    # keys as earlier runs wrote them: the messages alone, or with the avoided token
    keys = [json.dumps(m if a is None and lead is None else [m, a] if lead is None else [m, a, lead],
                       ensure_ascii=False) for m, a, lead in prompts]
    todo = [k for k in dict.fromkeys(keys) if k not in store]
    if todo:
        what = dict(zip(keys, prompts, strict=True))
        store.update(zip(todo, generate_batch(model, *zip(*(what[k] for k in todo), strict=True)), strict=True))
        if cache:
            cache.write_text(json.dumps(store, ensure_ascii=False))
    return [store[k] for k in keys], len(todo)


def run_dev(model_spec: str | None, threshold: float, forms: list[str] | None = None,
            cache: Path | None = None, dev: Path = DEV,
            relative_margin: float | None = RECALL_POLICY.relative_margin) -> dict:
    items = load_jsonl(dev)
    # keep every candidate (top-k); the threshold and the margin are applied below
    rt = open_runtime(model_spec, threshold=-1.0, gap=None, relative_margin=None)
    ordinary = matching.ordinary_requests(rt.memory.embedder)
    fact_of = {}
    for item in items:
        if item["kind"] == "fact":
            fid, = teach(rt, [(item["teach"]["prompt"], item["teach"]["correction"])])
            fact_of[fid] = item["id"]
    questions = []
    for item in items:
        qs = [item["teach"]["prompt"], *item["paraphrases"]] if item["kind"] == "fact" else item["probes"]
        for i, q in enumerate(qs):
            cands = rt.memory.recall(q)
            for c in cands:
                c["item"] = fact_of[c["feedback_id"]]
            query = matching.unit_rows(rt.memory.embedder.encode([q]))[0]
            questions.append({"item": item["id"], "kind": item["kind"], "question": q, "expect": item["expect"],
                              "ordinary": ordinary.similarity(query),
                              "type": item["kind"] if item["kind"] == "control" else ("re-ask" if i == 0 else "paraphrase"),
                              "candidates": cands})
    grid = [round(x, 2) for x in np.arange(0.30, 0.71, 0.05)]
    table = sweep(questions, grid, relative_margin)

    none_facts = not forms or "none" in forms  # facts with no recall: 0/64 whenever measured
    forms = list(dict.fromkeys(["none", *(forms or [*notes.FORMS, "exchange"])]))
    prompts, index = [], {}
    for q in questions:
        q["recalled"] = recalled_at(q, threshold, relative_margin)
        for form in forms:
            if form == "none" and q["kind"] == "fact" and not none_facts:
                continue  # controls always get "none": recall must not change their replies
            # "FORM!avoid": the reply may not start with the question's first word (Turn.avoid_first);
            # "FORM!avoid!lead": and it starts with the best note's opening (Turn.lead)
            name, *flags = form.split("!")
            msgs = form_messages(name, q["recalled"], q["question"])
            avoid = "avoid" in flags and bool(q["recalled"])
            lead = notes.reply_lead(q["recalled"]) if "lead" in flags else None
            prompt = (msgs, rt.model.first_token(q["question"]) if avoid else None, lead)
            key = json.dumps(prompt)
            if key not in index:
                index[key] = len(prompts)
                prompts.append(prompt)
            q.setdefault("keys", {})[form] = index[key]
    t0 = time.perf_counter()
    replies, generated = cached_generate(rt.model, prompts, cache)
    gen_s = time.perf_counter() - t0
    results = {}
    for form in forms:
        if form == "none" and not none_facts:
            continue
        facts = [q for q in questions if q["kind"] == "fact"]
        ctrls = [q for q in questions if q["kind"] == "control"]
        scored = [q for q in ctrls if q["expect"]]
        results[form] = {
            "facts_passed": sum(passes(replies[q["keys"][form]], q["expect"]) for q in facts),
            "paraphrases_passed": sum(passes(replies[q["keys"][form]], q["expect"]) for q in facts
                                      if q["type"] == "paraphrase"),
            "facts": len(facts),
            "controls_passed": sum(passes(replies[q["keys"][form]], q["expect"]) for q in scored),
            "controls_scored": len(scored),
            "controls_changed_vs_none": sum(replies[q["keys"][form]] != replies[q["keys"]["none"]] for q in ctrls),
            "examples": [{"q": q["question"], "reply": replies[q["keys"][form]]} for q in facts[1:4]],
            "missed": [{"q": q["question"], "fact": q["item"], "recalled": [c["item"] for c in q["recalled"]],
                        "reply": replies[q["keys"][form]]}
                       for q in facts if not passes(replies[q["keys"][form]], q["expect"])],
        }
    return {"dev_set": str(dev.relative_to(ROOT) if dev.is_relative_to(ROOT) else dev),
            "embedder": getattr(rt.memory.embedder, "MODEL_ID", type(rt.memory.embedder).__name__),
            "threshold": threshold, "relative_margin": relative_margin, "sweep": table, "forms": results, "generate_s": round(gen_s, 1),
            "prompts_generated": generated, "prompts_distinct": len(prompts),
            "questions": [{k: q[k] for k in ("item", "type", "question", "ordinary", "candidates")}
                          for q in questions]}


# ---- reports ---------------------------------------------------------------------------------------


def scenario_markdown(res: dict) -> str:
    lines = ["# Recall memory on the teaching scenario (corrections given, no training)", ""]
    if "rows" in res:
        s = res["summary"]
        lines += [
            f"Command: `{res['command']}`  ", f"Form: `{res['form']}`, threshold {res['threshold']}, top-k "
            f"{res['top_k']}; greedy, {MAX_NEW_TOKENS} new tokens, embedded SmolLM2-135M-Instruct, batched "
            f"({res['prompts_generated']} distinct prompts in {res['generate_s']} s).", "",
            "| probes | recall on | recall off |", "|---|---|---|",
            f"| facts (re-asks + paraphrases) | {pct(s['facts_on'])} | (base model: 0/48, GUIDE section 7) |",
            f"| re-asks | {pct(s['reask_on'])} | |",
            f"| paraphrases | {pct(s['paraphrase_on'])} | |",
            f"| style | {pct(s['style_on'])} | {pct(s['style_off'])} |",
            f"| controls | {pct(s['controls_on'])} | {pct(s['controls_off'])} |", "",
            f"- right correction recalled for {pct(s['fact_recall_hit'])} fact probes",
            f"- false recalls on controls: **{s['false_recalls']}**; control replies changed by recall: "
            f"{s['controls_reply_changed']}",
            f"- recall fired on {s['style_recall_fired']}/{s['style_on']['total']} style probes",
            f"- batched greedy vs one-at-a-time stream: {res['consistency']['identical']}/"
            f"{res['consistency']['checked']} identical", "", "## Failures (recall on)", ""]
        lines += [f"- {r['item']} / {r['prompt']!r}: recalled {r['recalled']} -> {r['reply_on']!r}"
                  for r in res["rows"] if not r["pass_on"] and r["family"] != "style"]
    if "timing" in res:
        t = res["timing"]
        lines += [
            "", "## Retrieval time per turn", "", f"Command: `{t['command']}`", "",
            f"With {t['corrections']} stored corrections: recall adds **{t['recall_ms_median']} ms** median "
            f"({t['recall_ms_p95']} ms p95) per turn: sync {t['sync_ms_median']} ms, query embedding "
            f"{t['query_embed_ms_median']} ms, the rest is the matrix product and bookkeeping. "
            f"One-off costs: embedding model load {t['model_load_s']} s, embedding the search keys of all "
            f"{t['corrections']} corrections (each prompt, {RECALL_POLICY.reframed_keys} reframings"
            f"{' and the prompt with its answer' if recall_policy.answer_key else ''}) "
            f"{t['index_build_s']} s (at the first recall; cached in memory and on disk: the first recall "
            f"after a restart took {t.get('index_after_restart_s', '?')} s); first recall after one new correction "
            f"{t['first_recall_after_new_correction_ms']} ms. torch threads: {t['torch_threads']}; load average "
            f"{t.get('load_average_1min', '?')} on {t.get('cpus', '?')} CPUs when measured."]
    return "\n".join(lines) + "\n"


def dev_markdown(res: dict, cmd: str) -> str:
    lines = ["# Choosing the recall threshold and prompt form (our dev set, not the scenario)", "",
             f"Command: `{cmd}`  ", f"Dev set: {res['dev_set']} (own facts, own paraphrases, unrelated "
             f"questions). {res.get('embedder', 'all-MiniLM-L6-v2')} cosine on the corrected prompt and its reframings (Memory.search_keys)"
             + (f"; a weaker match counts too when it is {res['relative_margin']} above the question's similarity "
                "to ordinary requests (memory.relevant)." if res.get("relative_margin") is not None else
                "; the threshold alone."), "",
             "| threshold | right fact recalled | false recalls on controls | facts with only wrong recall |",
             "|---|---|---|---|"]
    for r in res["sweep"]:
        lines.append(f"| {r['threshold']} | {r['fact_recall']}/{r['facts']} | {r['false_recalls_on_controls']} "
                     f"| {r['facts_with_only_wrong_recall']} |")
    lines += ["", f"Forms at threshold {res['threshold']} (SmolLM2-135M-Instruct, greedy, {MAX_NEW_TOKENS} tokens; "
              f"{res['prompts_distinct']} distinct prompts, {res['prompts_generated']} generated in "
              f"{res['generate_s']} s, the rest from the --cache of earlier runs):", "",
              f"In use: `{notes.FORM}@m{RECALL_POLICY.gap}` (Memory.recall keeps the best match and "
              f"those within {RECALL_POLICY.gap} of its score). A plain name shows every recalled "
              "correction (top-3 at the threshold); `@top1` only the best, `@mX` the best and those within X "
              "of it; `A+exchange` is form A in the system prompt plus the best match as a prior user/assistant "
              "exchange; `!avoid`: the reply may not start with the question's first word (what a chat "
              "turn with recall does: Turn.avoid_first). Forms are in assistant/memory.py (FORMS) and "
              "bench/memory.py (CANDIDATES).", "",
              "| form | facts passed | of which paraphrases | controls passed | control replies changed |",
              "|---|---|---|---|---|"]
    for form, r in res["forms"].items():
        lines.append(f"| {form} | {r['facts_passed']}/{r['facts']} | {r['paraphrases_passed']} | "
                     f"{r['controls_passed']}/{r['controls_scored']} | {r['controls_changed_vs_none']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dev", action="store_true", help="threshold and form selection on bench/recall_dev.jsonl")
    p.add_argument("--dev-set", type=Path, default=DEV, help="--dev: the dev file (default %(default)s)")
    p.add_argument("--model", help="converted embedded model directory (default: convert into the fresh home)")
    p.add_argument("--threshold", type=float, default=RECALL_POLICY.threshold)
    p.add_argument("--relative-margin", type=lambda v: None if v == "off" else float(v),
                   default=RECALL_POLICY.relative_margin, help="--dev: memory.relevant's margin, or 'off'")
    p.add_argument("--forms", help="--dev: comma-separated forms to measure, e.g. notes,lines@top1 "
                   "(see form_messages; default: every form; facts get 'none' only when listed)")
    p.add_argument("--cache", type=Path, help="--dev: JSON file of replies already generated (prompt -> "
                   "reply), read and extended, so a sweep only generates prompts it has not seen")
    p.add_argument("--out", help="file stem under bench/results (default: memory.dev with --dev, else memory)")
    p.add_argument("--answer-key", choices=("on", "off"), help="search by prompt + answer too "
                   "(memory.ANSWER_KEY; default: as the module has it)")
    p.add_argument("--lead-new-word", choices=("off", "before", "through"), help="how a note that tells no name "
                   "or number leads the reply (notes.LEAD_NEW_WORD; default: as the module has it)")
    p.add_argument("--n-timing", type=int, default=10_000)
    p.add_argument("--part", choices=("all", "scenario", "timing"), default="all",
                   help="run one part only, keeping the other's figures in memory.json")
    args = p.parse_args(argv)
    cmd = "python bench/memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    global recall_policy
    if args.answer_key:
        recall_policy = replace(RECALL_POLICY, answer_key=args.answer_key == "on")
    if args.lead_new_word:
        notes.LEAD_NEW_WORD = args.lead_new_word
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.dev:
        res = run_dev(args.model, args.threshold, args.forms.split(",") if args.forms else None, args.cache,
                      args.dev_set.resolve(), args.relative_margin)
        stem, md = args.out or "memory.dev", dev_markdown(res, cmd)
    else:  # the scenario and the timing can run separately; each updates its part of memory.json
        stem, res = args.out or "memory", {}
        if args.part in ("all", "scenario"):
            res.update(run_scenario(args.model), command=cmd, form=notes.FORM,
                       threshold=RECALL_POLICY.threshold, top_k=RECALL_POLICY.top_k)
        if args.part in ("all", "timing"):
            dev_questions = [q for it in load_jsonl(DEV) for q in it.get("paraphrases", it.get("probes", []))]
            res["timing"] = retrieval_timing(args.n_timing, dev_questions[:20])
            res["timing"]["command"] = cmd
        old = RESULTS / f"{stem}.json"
        if args.part != "all" and old.exists():  # read at the end: the other part may run meanwhile
            res = {**json.loads(old.read_text()), **res}
        md = scenario_markdown(res)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
