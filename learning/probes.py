"""Score the probes of a teaching scenario (GUIDE section 6). For MEASURING only: nothing here
feeds training, prompts or configuration.

A scenario is a JSONL file of items: `fact` (teach: one correction; probes: the re-ask plus
paraphrases), `style` (several corrections; probes: new prompts), `control` (probes the base
model already answers), `update` (a later correction of the fact `of`, maybe through another
question; probes: questions about that fact, which must now say `expect` and never `stale`) and
`forget` (taught, then taken back `how`: delete or no_learn; its `expect` must no longer be said,
bench/season.py). A probe passes when the greedy reply (32 new tokens) contains one of
the item's `expect` strings as a whole word or phrase, case-insensitively; a style item may
instead name a `format` ("list": the reply is a list, learning/habits.list_format).

`score_probes(served, scenario, version, path)` returns per-family counts (reask, paraphrase,
style, control) and every reply, so bench/learn.py and bench/teach.py report the same numbers.
"""
import json
from pathlib import Path

from assistant.config import DEFAULT_SYSTEM_PROMPT
from learning.evaluate import contains_phrase
from learning.habits import list_format
from learning.scoring import Scorer

FAMILIES = ("reask", "paraphrase", "style", "control")
KINDS = ("fact", "style", "control", "update", "forget")
FORMATS = ("list",)


def load_scenario(path: str | Path) -> list[dict]:
    """Read and check a scenario file; a malformed line fails with its line number."""
    items, ids = [], set()
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: not JSON: {e}") from e
        if item.get("kind") not in KINDS or not item.get("probes") or not (item.get("expect") or item.get("format")):
            raise ValueError(f"{path}:{n}: an item needs kind {'|'.join(KINDS)}, probes and expect (or a format)")
        if item.get("format") not in (None, *FORMATS):
            raise ValueError(f"{path}:{n}: a format is one of {', '.join(FORMATS)}")
        if item["kind"] != "control" and not item.get("teach"):
            raise ValueError(f"{path}:{n}: a {item['kind']} item needs teach corrections")
        if item["kind"] == "update" and item.get("of") not in {it["id"] for it in items if it["kind"] == "fact"}:
            raise ValueError(f"{path}:{n}: an update names the fact it changes, on an earlier line, in 'of'")
        if item["kind"] == "forget" and item.get("how", "delete") not in ("delete", "no_learn"):
            raise ValueError(f"{path}:{n}: a forget item's 'how' is delete or no_learn")
        if item.get("id") in ids:
            raise ValueError(f"{path}:{n}: id {item.get('id')!r} used twice")
        ids.add(item.get("id"))
        items.append(item)
    return items


def passes(probe: dict, reply: str) -> bool:
    """Does `reply` say what the probe expects (or have the format it asks for)?"""
    if probe.get("format") == "list":
        return list_format(reply) is not None
    return any(contains_phrase(reply, e) for e in probe["expect"])


def corrections(items: list[dict]) -> list[dict]:
    """The (prompt, correction) pairs a user would type, in scenario order."""
    return [{"item": it["id"], "kind": it["kind"], **t} for it in items for t in it.get("teach", [])]


def probe_list(items: list[dict]) -> list[dict]:
    """Every probe with its family: a fact's first probe is the re-ask, the rest paraphrases."""
    out = []
    for it in items:
        for i, p in enumerate(it["probes"]):
            family = {"fact": "reask" if i == 0 else "paraphrase", "style": "style", "control": "control",
                      "update": "update", "forget": "forget"}[it["kind"]]
            out.append({"item": it["id"], "family": family, "prompt": p, "expect": it.get("expect") or [],
                        "format": it.get("format")})
    return out


def score_probes(served, items: list[dict], version: int | None = None, path=None,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, max_new_tokens: int = 32,
                 batch_size: int = 16, scope=None) -> dict:
    """Greedy replies for every probe under adapter `version` (None: base model alone), each
    routed through `scope` (assistant/scope.py) as the chat would route it."""
    scorer = Scorer(served, batch_size=batch_size, max_new_tokens=max_new_tokens, scope=scope)
    scorer.select(version, path)
    probes = probe_list(items)
    replies = scorer.generate([[{"role": "system", "content": system_prompt},
                                {"role": "user", "content": p["prompt"]}] for p in probes])
    for p, r in zip(probes, replies, strict=True):
        p["reply"] = r
        p["passed"] = passes(p, r)
    summary = {f: {"passed": sum(p["passed"] for p in probes if p["family"] == f),
                   "total": sum(p["family"] == f for p in probes)} for f in FAMILIES}
    return {"summary": summary, "probes": probes}


def summary_line(summary: dict) -> str:
    return "  ".join(f"{f} {summary[f]['passed']}/{summary[f]['total']}" for f in FAMILIES)
