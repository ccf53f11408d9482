"""Recall on any script (issue 29): bench/recall_dev_multilingual.jsonl through assistant.memory.Memory.

    python bench/multilingual.py            # bench/results/multilingual.{json,md}
    options: --embedders minilm,mpnet (default: every one installed)

Each fact's correction is stored the way tests/test_memory.py stores one (a logged turn, then a
correction); then, per language, the taught question itself (re-ask), its paraphrases and the
controls go through `Memory.recall` with the product's threshold, margins and FIRST_PERSON guard,
without the chat-model reranker (it reorders matches, it does not admit them). A probe counts when
its own correction comes first; a control when nothing is recalled. Next to each miss the raw
best cosine (the guard and the ordinary-request margin left out) says whether the embedder or a
rule kept it out. No generation: the chat side of the same set is tests/test_multilingual.py.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchkit import RESULTS, ROOT  # noqa: F401 - sets the environment up first

# isort: split

import numpy as np  # noqa: E402

from assistant import memory as memory_mod  # noqa: E402
from assistant.config import Config  # noqa: E402
from assistant.embedders import installed_embedders, make_embedder  # noqa: E402
from assistant.language import about_user, words  # noqa: E402
from assistant.matching import search_keys, unit_rows  # noqa: E402
from assistant.notes import reply_lead  # noqa: E402
from store import conversations, feedback, open_db  # noqa: E402

DEV = ROOT / "bench" / "recall_dev_multilingual.jsonl"
# An English fact asked in other scripts: does the FIRST_PERSON guard (English words only) let it through?
CROSS = {"teach": {"prompt": "What is my cat's name?", "correction": "Your cat is called Pemberton."},
         "asks": {"zh": "我的猫叫什么名字？", "ru": "Как зовут мою кошку?", "ar": "ما اسم قطتي؟",
                  "el": "Πώς λέγεται η γάτα μου;", "en": "What do I call my cat?"}}


def load(path: Path = DEV) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def teach(db, prompt: str, answer: str) -> str:
    cid = conversations.create_conversation(db)
    tid = conversations.log_turn(db, cid, user_message=prompt, messages=[], reply="I don't know.", source="bench",
                                 model="none", adapter_version=None, prompt_tokens=1, completion_tokens=1,
                                 ttft_ms=1.0, duration_ms=1.0)
    return feedback.add_feedback(db, tid, "correction", correction=answer)


def raw_best(mem: memory_mod.Memory, text: str, prompt: str, answer: str) -> float:
    """Cosine of `text` to the best search key of one correction (no rule applied)."""
    keys = search_keys(prompt, answer)
    vecs = unit_rows(mem.embedder.encode(keys))
    q = unit_rows(mem.embedder.encode([text]))[0]
    return float(np.max(vecs @ q))


def run(embedder_name: str, rows: list[dict]) -> dict:
    home = Path(tempfile.mkdtemp(prefix="bench-multilingual-"))
    cfg = Config(home=home, model="none")
    db = open_db(cfg.db_path)
    facts = [r for r in rows if r["kind"] == "fact"]
    ids = {f["id"]: teach(db, f["teach"]["prompt"], f["teach"]["correction"]) for f in facts}
    cross_id = teach(db, CROSS["teach"]["prompt"], CROSS["teach"]["correction"])
    mem = memory_mod.Memory(cfg, embedder=make_embedder(embedder_name))
    started = time.perf_counter()
    probes = []
    for f in facts:
        for kind, text in [("re-ask", f["teach"]["prompt"])] + [("paraphrase", p) for p in f["paraphrases"]]:
            got = mem.recall(text)
            probes.append({"lang": f["lang"], "id": f["id"], "kind": kind, "text": text,
                           "recalled": [g["feedback_id"] for g in got], "ok": bool(got) and got[0]["feedback_id"] == ids[f["id"]],
                           "top_score": got[0]["score"] if got else None,
                           "raw_best": round(raw_best(mem, text, f["teach"]["prompt"], f["teach"]["correction"]), 3),
                           "lead": reply_lead(got) if got else None})
    for c in (r for r in rows if r["kind"] == "control"):
        for text in c["probes"]:
            got = mem.recall(text)
            probes.append({"lang": c["lang"], "id": c["id"], "kind": "control", "text": text,
                           "recalled": [g["feedback_id"] for g in got], "ok": not got,
                           "top_score": got[0]["score"] if got else None})
    for lang, text in CROSS["asks"].items():
        got = mem.recall(text)
        probes.append({"lang": lang, "id": "cross-en-cat", "kind": "cross", "text": text,
                       "recalled": [g["feedback_id"] for g in got], "ok": bool(got) and got[0]["feedback_id"] == cross_id,
                       "raw_best": round(raw_best(mem, text, CROSS["teach"]["prompt"], CROSS["teach"]["correction"]), 3),
                       "guard_personal": about_user(words(text))})
    return {"embedder": embedder_name, "threshold": mem.threshold, "n_probes": len(probes),
            "seconds": round(time.perf_counter() - started, 1), "probes": probes, "summary": summarise(probes)}


def summarise(probes: list[dict]) -> dict:
    out: dict = {}
    for p in probes:
        cell = out.setdefault(p["lang"], {}).setdefault(p["kind"], [0, 0])
        cell[0] += p["ok"]
        cell[1] += 1
    return out


def markdown(results: list[dict], cmd: str) -> str:
    kinds = ("re-ask", "paraphrase", "control", "cross")
    lines = ["# Recall on any script (issue 29)", "",
             f"`{cmd}` on `bench/recall_dev_multilingual.jsonl`: {sum(1 for r in load() if r['kind'] == 'fact')} "
             "facts in Chinese, Russian, Arabic, Greek, emoji and mixed scripts, each taught once; "
             "`Memory.recall` with the product's threshold, margins and guard, no reranker. re-ask: the taught "
             "question again, own correction first; paraphrase: own correction first; control: nothing recalled; "
             "cross: an English correction ('What is my cat's name?') asked in that language.", ""]
    for res in results:
        lines += [f"## {res['embedder']} (threshold {res['threshold']}, {res['n_probes']} probes, {res['seconds']} s)", "",
                  "| language | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for lang, cells in res["summary"].items():
            lines.append(f"| {lang} | " + " | ".join(f"{cells[k][0]}/{cells[k][1]}" if k in cells else "" for k in kinds) + " |")
        total = {k: [sum(c[k][i] for c in res["summary"].values() if k in c) for i in (0, 1)] for k in kinds}
        lines.append("| **all** | " + " | ".join(f"**{v[0]}/{v[1]}**" for v in total.values()) + " |")
        misses = [p for p in res["probes"] if not p["ok"]]
        if misses:
            lines += ["", "Misses (raw best: cosine to the own correction's best key, before any rule):", ""]
            lines += [f"- {p['lang']} {p['kind']} `{p['text']}`: recalled {len(p['recalled'])}"
                      + (f", raw best {p['raw_best']}" if p.get("raw_best") is not None else "")
                      + (f", top score {p['top_score']}" if p.get("top_score") is not None else "") for p in misses]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--embedders", help="comma-separated (default: every one installed)")
    args = p.parse_args(argv)
    names = args.embedders.split(",") if args.embedders else installed_embedders()
    rows = load()
    results = [run(name, rows) for name in names]
    cmd = "python bench/multilingual.py" + (f" --embedders {args.embedders}" if args.embedders else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "multilingual.json").write_text(json.dumps(results, ensure_ascii=False, indent=1))
    md = markdown(results, cmd)
    (RESULTS / "multilingual.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
