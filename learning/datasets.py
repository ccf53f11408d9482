"""Store facts -> TRL rows. Every row carries the ids of the feedback it came from.

- a correction gives an SFT row (`{"messages": [...]}` ending in the corrected answer) and a
  preference pair (`{"prompt", "chosen": correction, "rejected": original reply}`); a correction
  another replaced (store/feedback.py `superseded_by`) gives none, and its question is taught the
  replacing answer instead: an SFT row and a pair whose rejected answer is the old correction, so
  the weights unlearn the old value and the old question routes to the new correction's expert;
- a liked answer gives an SFT row; liked vs disliked/retried answers to the same prompt give pairs;
- a vote with no partner gives an unpaired row (`{"prompt", "completion", "label"}`, KTO-style),
  exported for other tools (the learner itself trains SFT + DPO).

Hygiene: "don't learn" conversations and quarantined feedback never appear; near-duplicates
(sentence embeddings) are dropped, keeping the newest; texts are capped. What the user taught is
learned verbatim: their phone numbers, dates and codes are the point of a personal assistant, and
the data never leaves the machine. `assistant export`, where it does, scrubs e-mail addresses,
phone and card-like numbers by default (`scrub_rows`; `--keep-pii` keeps them). Vote-derived rows are split train/held-out by
a stable hash of the conversation id; corrections always train (the user asked for them).
Metadata keys (`feedback_ids`, `source`, `conversation_id`) ride along; `train.py` strips them.
"""
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from assistant.embedders import make_embedder
from assistant.matching import Embedder, unit_rows  # one embedder interface: .encode(texts)
from learning.config import LearnConfig
from store.text import question_key

META_KEYS = ("feedback_ids", "source", "conversation_id")

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_PHONE = re.compile(r"(?<![\w])\+?\(?\d[\d ()./-]{6,}\d\b")


def scrub(text: str) -> str:
    """Replace obvious personal data. Cards first (long digit runs), then phones (8+ digits)."""
    text = _EMAIL.sub("[email]", text)
    text = _CARD.sub("[card number]", text)
    return _PHONE.sub(lambda m: "[phone]" if sum(c.isdigit() for c in m.group()) >= 8 else m.group(), text)


def heldout(conversation_id: str, fraction: float) -> bool:
    """Stable split: the same conversation lands on the same side in every run."""
    h = int.from_bytes(hashlib.sha256(conversation_id.encode()).digest()[:8], "big")
    return (h % 10_000) < fraction * 10_000


@dataclass
class LearnData:
    sft: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    unpaired: list[dict] = field(default_factory=list)
    heldout_sft: list[dict] = field(default_factory=list)
    heldout_pairs: list[dict] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    dropped_duplicates: int = 0

    @property
    def feedback_ids(self) -> list[str]:
        """Every feedback id that trains this cycle (held-out rows excluded)."""
        ids = {f for r in self.sft + self.pairs for f in r["feedback_ids"]}
        return sorted(ids)

    def counts(self) -> dict:
        return {"sft": len(self.sft), "pairs": len(self.pairs), "unpaired": len(self.unpaired),
                "heldout_sft": len(self.heldout_sft), "heldout_pairs": len(self.heldout_pairs),
                "superseded": len(self.superseded), "duplicates": self.dropped_duplicates}

    def data_hash(self) -> str:
        blob = json.dumps([self.sft, self.pairs], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _facts(db) -> list[dict]:
    """Learnable feedback joined with its turn and conversation, oldest first."""
    return list(db.query(
        "SELECT f.id AS fid, f.kind, f.correction, f.retry_turn_id, f.superseded_by, t.id AS turn_id, "
        "t.user_message, t.reply, t.messages_json, t.conversation_id, c.system_prompt "
        "FROM feedback f JOIN turns t ON t.id = f.turn_id "
        "JOIN conversations c ON c.id = t.conversation_id "
        "WHERE f.quarantined = 0 AND c.no_learn = 0 ORDER BY f.id"))


class _RowMaker:
    """Turns one fact into chat messages with the configured caps."""

    def __init__(self, cfg: LearnConfig, system_prompt: str):
        self.cfg, self.system_prompt = cfg, system_prompt

    def clean(self, text: str | None, cap: int) -> str:
        return (text or "").strip()[:cap]

    def prompt(self, fact: dict) -> list[dict]:
        history = [m for m in json.loads(fact["messages_json"] or "[]") if m["role"] != "system"][:-1]
        keep = history[len(history) - self.cfg.max_history_messages:] if self.cfg.max_history_messages else []
        msgs = [{"role": "system", "content": fact["system_prompt"] or self.system_prompt}]
        msgs += [{"role": m["role"], "content": self.clean(m["content"], self.cfg.max_prompt_chars)}
                 for m in keep]
        return msgs + [{"role": "user", "content": self.clean(fact["user_message"], self.cfg.max_prompt_chars)}]

    def answer(self, text: str) -> list[dict]:
        return [{"role": "assistant", "content": self.clean(text, self.cfg.max_answer_chars)}]


def build(db, cfg: LearnConfig | None = None, *, system_prompt: str | None = None,
          embedder: Embedder | None = None) -> LearnData:
    """All learnable feedback as TRL rows (see the module docstring)."""
    from assistant.config import DEFAULT_SYSTEM_PROMPT
    from store.settings import get_setting

    cfg = cfg or LearnConfig()
    system_prompt = system_prompt or get_setting(db, "system_prompt", DEFAULT_SYSTEM_PROMPT)
    make = _RowMaker(cfg, system_prompt)
    data = LearnData()
    facts = _facts(db)

    # Corrections: those no later one replaced, each also answering the questions it replaced.
    corrections = [f for f in facts if f["kind"] == "correction"]
    data.superseded = [f["fid"] for f in corrections if f["superseded_by"]]
    replaced: dict[str, list[dict]] = {}
    for f in corrections:
        if f["superseded_by"]:
            replaced.setdefault(f["superseded_by"], []).append(f)
    corrected: dict[str, list[str]] = {}  # turn id -> the feedback ids its correction rows carry
    for f in corrections:
        if f["superseded_by"]:
            continue
        ids = corrected[f["turn_id"]] = [f["fid"]]
        meta = {"conversation_id": f["conversation_id"], "source": "correction"}
        answer = make.answer(f["correction"])
        prompt = make.prompt(f)
        data.sft.append({"messages": prompt + answer, "feedback_ids": ids, **meta})
        if f["reply"] and f["reply"].strip() != f["correction"].strip():
            data.pairs.append({"prompt": prompt, "chosen": answer, "rejected": make.answer(f["reply"]),
                               "feedback_ids": ids, **meta})
        asked = {question_key(f["user_message"])}
        for old in replaced.get(f["fid"], []):
            old_prompt = make.prompt(old)
            if question_key(old["user_message"]) not in asked:
                asked.add(question_key(old["user_message"]))
                data.sft.append({"messages": old_prompt + answer, "feedback_ids": ids, **meta})
            if old["correction"].strip() != f["correction"].strip():
                data.pairs.append({"prompt": old_prompt, "chosen": answer, "rejected": make.answer(old["correction"]),
                                   "feedback_ids": ids, **meta})

    # Votes: liked / disliked answers grouped by prompt. A retry marks the replaced answer as disliked.
    liked: dict[str, list[dict]] = {}
    disliked: dict[str, list[dict]] = {}
    for f in facts:
        if f["kind"] in ("down", "retry") and f["turn_id"] in corrected:
            corrected[f["turn_id"]].append(f["fid"])  # the vote that came with a correction: same lesson
        elif f["kind"] in ("up", "down", "retry"):
            bucket = liked if f["kind"] == "up" else disliked
            bucket.setdefault(question_key(f["user_message"]), []).append(f)
    vote_sft, vote_pairs = [], []
    for key, goods in liked.items():
        for g in goods:
            vote_sft.append({"messages": make.prompt(g) + make.answer(g["reply"]), "feedback_ids": [g["fid"]],
                             "conversation_id": g["conversation_id"], "source": "liked"})
            for b in disliked.get(key, [])[:4]:
                if b["reply"].strip() != g["reply"].strip():
                    vote_pairs.append({"prompt": make.prompt(g), "chosen": make.answer(g["reply"]),
                                       "rejected": make.answer(b["reply"]), "feedback_ids": [g["fid"], b["fid"]],
                                       "conversation_id": g["conversation_id"], "source": f"liked-vs-{b['kind']}"})
    for _key, group, label in [(k, v, True) for k, v in liked.items() if k not in disliked] + \
                             [(k, v, False) for k, v in disliked.items() if k not in liked]:
        for f in group:
            data.unpaired.append({"prompt": make.prompt(f), "completion": make.answer(f["reply"]), "label": label,
                                  "feedback_ids": [f["fid"]], "conversation_id": f["conversation_id"],
                                  "source": f["kind"]})

    for row in vote_sft:
        (data.heldout_sft if heldout(row["conversation_id"], cfg.heldout_fraction) else data.sft).append(row)
    for row in vote_pairs:
        (data.heldout_pairs if heldout(row["conversation_id"], cfg.heldout_fraction) else data.pairs).append(row)

    if cfg.dedup_threshold < 1:
        data.sft, n1 = dedup(data.sft, lambda r: _text(r["messages"]), cfg.dedup_threshold, embedder)
        data.pairs, n2 = dedup(data.pairs, lambda r: _text(r["prompt"] + r["chosen"]), cfg.dedup_threshold,
                               embedder)
        data.dropped_duplicates = n1 + n2
    return data


def _text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] != "system")


def dedup(rows: list[dict], text_of: Callable[[dict], str], threshold: float,
          embedder: Embedder | None = None) -> tuple[list[dict], int]:
    """Drop rows whose text is a near-duplicate (cosine >= threshold) of a NEWER row.
    Rows are in feedback order, so walking backwards keeps the newest. Returns (kept, dropped)."""
    if len(rows) < 2:
        return rows, 0
    vecs = unit_rows((embedder or default_embedder()).encode([text_of(r) for r in rows]))
    kept_idx: list[int] = []
    for i in range(len(rows) - 1, -1, -1):
        if all(float((vecs[i] * vecs[j]).sum()) < threshold for j in kept_idx):
            kept_idx.append(i)
    kept = [rows[i] for i in sorted(kept_idx)]
    return kept, len(rows) - len(kept)


_EMBEDDER = None


def default_embedder() -> Embedder:
    """`make_embedder()` (all-MiniLM-L6-v2 unless ASSISTANT_EMBEDDER says otherwise; loaded on
    first use), one per process."""
    global _EMBEDDER
    if _EMBEDDER is None:
        _EMBEDDER = make_embedder()
    return _EMBEDDER


def strip_meta(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in META_KEYS}


def scrub_rows(rows: list[dict]) -> list[dict]:
    """`rows` with every message's text scrubbed (`scrub`): for data leaving the machine."""
    def clean(value):
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: scrub(v) if k == "content" and isinstance(v, str) else clean(v) for k, v in value.items()}
        return value

    return [clean(r) for r in rows]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def cmd_export(cfg, args) -> int:
    """`assistant export OUT_DIR [--keep-pii]`: sft.jsonl, preference.jsonl, unpaired.jsonl in
    TRL's formats, each row with its feedback ids and a `split` field (train | heldout). Personal
    data is scrubbed unless `--keep-pii`: the export is what leaves the machine."""
    from learning.config import load_learn_config
    from store import open_db

    db = open_db(cfg.db_path)
    data = build(db, load_learn_config(db))
    out = Path(args.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    private = (lambda rows: rows) if getattr(args, "keep_pii", False) else scrub_rows
    _write_jsonl(out / "sft.jsonl", private([{**r, "split": "train"} for r in data.sft] +
                                            [{**r, "split": "heldout"} for r in data.heldout_sft]))
    _write_jsonl(out / "preference.jsonl", private([{**r, "split": "train"} for r in data.pairs] +
                                                   [{**r, "split": "heldout"} for r in data.heldout_pairs]))
    _write_jsonl(out / "unpaired.jsonl", private(data.unpaired))
    c = data.counts()
    print(f"wrote {c['sft'] + c['heldout_sft']} SFT rows, {c['pairs'] + c['heldout_pairs']} preference pairs, "
          f"{c['unpaired']} unpaired rows to {out}")
    return 0
