"""Evaluate a candidate adapter against the incumbent on the SAME items, for the gate.

Contract: `evaluate(cfg, db, candidate_version, incumbent_version, taught_feedback_ids)` returns
`{"candidate": metrics, "incumbent": metrics, "items": evidence}` where a version of None is the
base model alone. Four families of items:

(a) taught     the corrections taught in this cycle: does the greedy reply carry the correction?
(b) retention  every earlier correction already learned by an accepted (active or retired)
               version, not quarantined and not superseded: is it still carried?
(c) canaries   general prompts the base model answers right (learning/canaries.jsonl): a reply
               passes when it contains one of `expect` as a whole word or phrase.
(d) preference held-out preference pairs from `learning.datasets` (rows that never trained):
               log-likelihood of chosen vs rejected -> accuracy and DPO reward margin.

"Carries the correction" is defined in `anchors` / `carries` below: the correction's content
words that neither the prompt nor the original (wrong) reply contained are what the user
taught; its name-like ones (capitalised or with digits, e.g. "Halvorsen", "V60") are the
anchors. A reply carries the correction when at least half of the anchors (rounded up) appear
in it as whole words, case-insensitively. Only the corrected content counts, not the wording.

Both versions run on one base model with peft adapters switched in place (no reload), with
batched greedy generation and batched log-likelihood scoring (learning/scoring.py). What the
base weights, an expert or a shared adapter a version kept unchanged reply is generated once per
home and kept in `cache/replies.json` (scoring.Replies): the canaries and earlier corrections are
asked again every cycle. So is what routing asks the base weights about them (the reranker's and
the answer-fit check's likelihoods, `cache/likelihoods.json`, scoring.Likelihoods).
"""
import dataclasses
import json
import math
import re
import time
from pathlib import Path
from typing import Callable

from assistant.config import DEFAULT_SYSTEM_PROMPT
from assistant.language import ANCHOR_STOPWORDS, scoring_words
from learning.scoring import Likelihoods, Replies, Scorer
from store import adapters
from store.settings import get_setting

CANARIES_PATH = Path(__file__).with_name("canaries.jsonl")
REPLIES_FILE = "replies.json"  # replies of weights asked before (scoring.Replies)
LIKELIHOODS_FILE = "likelihoods.json"  # what routing asked the base weights before (scoring.Likelihoods)
MAX_NEW_TOKENS = 32
DPO_BETA = 0.1  # only scales the reported reward margin; accuracy does not depend on it



# ---- what a reply must contain ----------------------------------------------------------
def anchors(correction: str, prompt: str, original: str) -> list[str]:
    """The words of `correction` a reply must contain to carry it (lowercase, in order), as the
    gate reads words (assistant/language.py `scoring_words`, ANCHOR_STOPWORDS).

    Taught words: content words (not stopwords, 2+ characters) of the correction that are in
    neither the prompt nor the original reply. Anchors: the name-like taught words (written
    with a capital or a digit); if there are none, all taught words; if there are no taught
    words at all (the correction only reworded the reply), the correction's content words."""
    seen = {w.lower() for w in scoring_words(prompt) + scoring_words(original)}
    content = [w for w in scoring_words(correction) if len(w) > 1 and w.lower() not in ANCHOR_STOPWORDS]
    taught = [w for w in content if w.lower() not in seen]
    named = [w for w in taught if w[0].isupper() or any(c.isdigit() for c in w)]
    chosen = named or taught or content
    return list(dict.fromkeys(w.lower() for w in chosen))


def contains_phrase(reply: str, phrase: str) -> bool:
    """`phrase` occurs in `reply` as a whole word or phrase, case-insensitively."""
    return re.search(r"(?<![A-Za-z0-9])" + re.escape(phrase.lower()) + r"(?![A-Za-z0-9])",
                     (reply or "").lower()) is not None


def carries(reply: str, anchor_words: list[str]) -> bool:
    if not anchor_words:
        return False
    hits = sum(contains_phrase(reply, w) for w in anchor_words)
    return hits >= math.ceil(len(anchor_words) / 2)


# ---- the items --------------------------------------------------------------------------
def load_canaries(path: Path | None = None) -> list[dict]:
    """The shipped canary set: one {"id", "prompt", "expect": [...]} per line."""
    path = path or CANARIES_PATH
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for r in rows:
        if not r.get("prompt") or not r.get("expect"):
            raise ValueError(f"canary {r.get('id')!r} in {path} needs a prompt and expect words")
    return rows


def _correction_rows(db, where: str, args: list) -> list[dict]:
    return list(db.query(
        "SELECT f.id, f.correction, t.user_message, t.reply, c.system_prompt FROM feedback f "
        "JOIN turns t ON t.id = f.turn_id JOIN conversations c ON c.id = t.conversation_id "
        f"WHERE f.kind = 'correction' AND {where} ORDER BY f.id",
        args))


def taught_items(db, feedback_ids: list[str]) -> list[dict]:
    if not feedback_ids:
        return []
    marks = ",".join("?" * len(feedback_ids))
    return [_correction_item("taught", r) for r in
            _correction_rows(db, f"f.id IN ({marks})", list(feedback_ids))]


def retention_items(db, exclude_ids: list[str]) -> list[dict]:
    """Earlier corrections learned by an accepted version: not quarantined, not from a
    conversation marked don't-learn (taken back: the candidate must forget it, not keep it), not
    taught now, and not superseded by a later correction (that one is what counts, store/feedback.py)."""
    rows = _correction_rows(
        db, "f.quarantined = 0 AND c.no_learn = 0 AND f.superseded_by IS NULL AND f.id IN (SELECT af.feedback_id FROM "
            "adapter_feedback af JOIN adapters a USING (version) WHERE a.status IN ('active', 'retired'))", [])
    taught = set(exclude_ids)
    return [_correction_item("retention", r) for r in rows if r["id"] not in taught]


def _correction_item(kind: str, row: dict) -> dict:
    return {"kind": kind, "id": row["id"], "prompt": row["user_message"], "system": row["system_prompt"],
            "correction": row["correction"],
            "anchors": anchors(row["correction"], row["user_message"], row["reply"])}


def preference_pairs(db) -> list[dict]:
    """Held-out preference pairs: the rows `learning.datasets.build` keeps out of training by
    its stable split, with their full prompts (system prompt and history as trained)."""
    from learning import datasets
    from learning.config import load_learn_config

    # Near-duplicate removal only matters for training; skipping it spares loading an embedder.
    lcfg = dataclasses.replace(load_learn_config(db), dedup_threshold=1.0)
    return [{"kind": "preference", "id": ",".join(r["feedback_ids"]), "messages": r["prompt"],
             "chosen": r["chosen"][-1]["content"], "rejected": r["rejected"][-1]["content"]}
            for r in datasets.build(db, lcfg).heldout_pairs]


# ---- scoring ----------------------------------------------------------------------------
def _score_side(scorer: Scorer, version, path, system: str, items: list[dict],
                pairs: list[dict], tick: Callable[[], None]) -> dict:
    """Replies (and pass/fail) for the generation items, log-probs for the pairs, one version."""
    scorer.select(version, path)
    # One generate call per family: the canaries then always share batches (and padding)
    # with each other only, so their greedy replies do not depend on what was taught.
    replies = [""] * len(items)
    for kind in dict.fromkeys(it["kind"] for it in items):
        idx = [i for i, it in enumerate(items) if it["kind"] == kind]
        out = scorer.generate([_messages(items[i].get("system") or system, items[i]["prompt"]) for i in idx],
                              on_batch=tick)
        for i, r in zip(idx, out, strict=True):
            replies[i] = r
    out = {"replies": replies, "passed": [
        carries(r, it["anchors"]) if "anchors" in it else any(contains_phrase(r, e) for e in it["expect"])
        for r, it in zip(replies, items, strict=True)]}
    if pairs:
        prompts = [p["messages"] for p in pairs]
        out["chosen"] = scorer.logprobs(prompts, [p["chosen"] for p in pairs], on_batch=tick)
        out["rejected"] = scorer.logprobs(prompts, [p["rejected"] for p in pairs], on_batch=tick)
    return out


def _messages(system: str, prompt: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


def _family(items, passed, kind) -> tuple[int, int]:
    idx = [i for i, it in enumerate(items) if it["kind"] == kind]
    return sum(passed[i] for i in idx), len(idx)


def _metrics(version, items, side, other, pairs, base) -> dict:
    """Counts per family; `lost` = items the other side passes and this one fails."""
    m = {"version": version}
    for kind in ("taught", "retention", "canary"):
        passed, total = _family(items, side["passed"], kind)
        lost = sum(1 for i, it in enumerate(items) if it["kind"] == kind
                   and other["passed"][i] and not side["passed"][i])
        m[kind] = {"passed": passed, "total": total, "lost": lost}
    m["preference"] = _preference(side, pairs, base)
    return m


def _preference(side: dict, pairs: list[dict], base: dict | None) -> dict:
    """Accuracy: share of pairs whose chosen answer has the higher mean per-token log-prob.
    Reward margin: DPO's implicit reward, beta * (chosen - rejected log-ratio vs the base)."""
    if not pairs:
        return {"pairs": 0, "accuracy": None, "reward_margin": None}
    acc = sum(c[0] / c[1] > r[0] / r[1] for c, r in zip(side["chosen"], side["rejected"], strict=True)) / len(pairs)
    margins = [DPO_BETA * ((c[0] - bc[0]) - (r[0] - br[0])) for c, r, bc, br in
               zip(side["chosen"], side["rejected"], base["chosen"], base["rejected"], strict=True)] if base else []
    return {"pairs": len(pairs), "accuracy": round(acc, 4),
            "reward_margin": round(sum(margins) / len(margins), 4) if margins else 0.0}


def evaluate(cfg, db, candidate_version: int, incumbent_version: int | None,
             taught_feedback_ids: list[str], progress: Callable[[float], None] | None = None,
             model=None, *, max_new_tokens: int = MAX_NEW_TOKENS, scope=None, embedder=None) -> dict:
    """Score candidate and incumbent (None: base) on the same items; see the module docstring.

    `progress(fraction)` is called after every batch with the share of work done (0..1).
    `model` is a ServedModel to reuse (its adapters are switched); by default one is loaded.
    `scope` (assistant.scope.AdapterScope) routes each prompt as the chat would: a scoped
    adapter is judged on what it would really answer; by default one with `embedder` (None: MiniLM),
    all three wired as the chat wires them (assistant/serving.py build_served)."""
    from assistant.serving import build_served

    start = time.perf_counter()
    served = build_served(cfg, model, embedder=embedder, scope=scope)  # route as the chat does
    model, scope = served.model, served.scope
    replies = Replies(Path(cfg.home) / "cache" / REPLIES_FILE, model)
    likelihoods = None
    if served.reranker is not None:
        likelihoods = Likelihoods(Path(cfg.home) / "cache" / LIKELIHOODS_FILE, model, served.reranker)
        served.reranker.memo = likelihoods.values
    scorer = Scorer(model, max_new_tokens=max_new_tokens, scope=scope, replies=replies)
    system = get_setting(db, "system_prompt", DEFAULT_SYSTEM_PROMPT)
    items = taught_items(db, taught_feedback_ids) + retention_items(db, taught_feedback_ids)
    items += [{"kind": "canary", **c} for c in load_canaries()]
    pairs = preference_pairs(db)

    need_base = bool(pairs) and None not in (candidate_version, incumbent_version)
    per_side = sum(scorer.batches(sum(it["kind"] == k for it in items)) for k in ("taught", "retention", "canary"))
    per_side += 2 * scorer.batches(len(pairs))
    total, done = max(1, 2 * per_side + (2 * scorer.batches(len(pairs)) if need_base else 0)), [0]

    def tick():
        done[0] += 1
        if progress:
            progress(min(1.0, done[0] / total))

    def score(version, gen_items):
        path = None if version is None else adapters.get_adapter(db, version)["path"]
        return _score_side(scorer, version, path, system, gen_items, pairs, tick)

    cand = score(candidate_version, items)
    inc = score(incumbent_version, items)
    replies.save()
    if likelihoods is not None:
        likelihoods.save()
    # The base model is the reference of the DPO reward margin; scored separately only if
    # neither side already is the base.
    base = score(None, []) if need_base else (inc if incumbent_version is None else cand)
    seconds = round(time.perf_counter() - start, 1)
    return {
        "candidate": {**_metrics(candidate_version, items, cand, inc, pairs, base), "eval_seconds": seconds},
        "incumbent": {**_metrics(incumbent_version, items, inc, cand, pairs, base), "eval_seconds": seconds},
        "items": _evidence(items, pairs, cand, inc),
    }


def _evidence(items, pairs, cand, inc) -> list[dict]:
    out = []
    for i, it in enumerate(items):
        out.append({**it, "candidate": {"reply": cand["replies"][i], "passed": cand["passed"][i]},
                    "incumbent": {"reply": inc["replies"][i], "passed": inc["passed"][i]}})
    for i, p in enumerate(pairs):
        side = {n: {"chosen_logprob": round(s["chosen"][i][0], 3),
                    "rejected_logprob": round(s["rejected"][i][0], 3)} for n, s in
                (("candidate", cand), ("incumbent", inc))}
        out.append({**p, **side})
    return out
