"""Training-time data that helps a correction generalise without forgetting.

1. `rewrites(question)`: generic rewrites of a corrected prompt (templates, casing, contractions,
   a keyword form). They are written from the user's own prompt alone, never from any test set,
   so a fact taught as "What is the name of my dog?" is also learned for "what's the name of my dog".
2. `self_replay_rows(...)`: the BASE model's own greedy answers to generic prompts
   (learning/replay_prompts.jsonl). Training on them keeps the model's behaviour on everything
   else where it was (self-distillation), which is what protects general knowledge. They are
   generated once per base model and cached in the assistant home.
"""
import hashlib
import json
import re
from pathlib import Path

from assistant.language import CONTRACTIONS, REWRITE_STOPWORDS, REWRITE_TEMPLATES
from assistant.questions import reframings, replay_prompts

ALT_SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a friendly assistant who knows the user well.")


def _swap_contractions(q: str) -> str:
    low = q
    for long, short in CONTRACTIONS:
        pat_long = re.compile(rf"\b{long}\b", re.I)
        pat_short = re.compile(rf"\b{re.escape(short)}", re.I)
        if pat_long.search(low):
            return pat_long.sub(short, low, count=1)
        if pat_short.search(low):
            return pat_short.sub(long, low, count=1)
    return q


def rewrites(question: str, limit: int = 6) -> list[str]:
    """Distinct generic rewrites of `question` (the question itself excluded): reframings of its
    content first, interleaved with surface rewrites (casing, contractions, a keyword form,
    templates around the whole question)."""
    q = question.strip()
    bare = q.rstrip("?.! ")
    lower_q = bare[:1].lower() + bare[1:] + ("?" if q.endswith("?") else "")
    # `[\w']+`, not store.text.tokens: "don't" stays one word (language.REWRITE_STOPWORDS)
    words = [w for w in re.findall(r"[\w']+", bare.lower()) if w not in REWRITE_STOPWORDS]
    swapped = _swap_contractions(q)
    surface = [
        swapped[:1].upper() + swapped[1:] if q[:1].isupper() else swapped,
        bare.lower(),
        REWRITE_TEMPLATES[0].format(q=lower_q),
        REWRITE_TEMPLATES[1].format(q=q),
        " ".join(words) + "?" if len(words) >= 1 else "",
        REWRITE_TEMPLATES[3].format(q=lower_q),
        REWRITE_TEMPLATES[2].format(q=q),
    ]
    framed = reframings(q)
    # interleaved, so that any `limit` takes both kinds; the longer list's tail follows
    mixed = [r for pair in zip(framed, surface, strict=False) for r in pair]
    mixed += framed[len(surface):] + surface[len(framed):]
    seen, result = {q.lower()}, []
    for r in mixed:
        if r and r.lower() not in seen:
            seen.add(r.lower())
            result.append(r)
    return result[:limit]


def augment_sft(rows: list[dict], n_rewrites: int = 4, vary_system: bool = True) -> list[dict]:
    """Extra SFT rows for corrections: the same answer under rewritten questions and, once,
    under a different system prompt. Each extra row keeps the feedback ids of its source."""
    extra = []
    for row in rows:
        if row.get("source") != "correction":
            continue
        *prompt, answer = row["messages"]
        *context, user = prompt
        for k, q in enumerate(rewrites(user["content"], n_rewrites)):
            ctx = context
            if vary_system and context and context[0]["role"] == "system" and k < len(ALT_SYSTEM_PROMPTS):
                ctx = [{"role": "system", "content": ALT_SYSTEM_PROMPTS[k]}] + context[1:]
            extra.append({**row, "messages": ctx + [{"role": "user", "content": q}, answer],
                          "source": "augment"})
    return extra


# ---- self-replay ----------------------------------------------------------------------------
def _trim(text: str) -> str:
    """Cut a length-capped answer after its last full sentence, so training never teaches the
    model to stop mid-word."""
    text = text.strip()
    cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "), text.rfind("\n"))
    if text.endswith((".", "!", "?")) or cut < 20:
        return text
    return text[: cut + 1].strip()


def self_replay_rows(model, tokenizer, system_prompt: str, cache_dir: Path, n: int,
                     max_new_tokens: int = 48, batch_size: int = 8) -> list[dict]:
    """The base model's greedy answers to the first `n` replay prompts, as SFT rows.
    `model` must be the base model (no adapter active). Cached per prompt, by model and
    settings: the habit adapter's 48 answers (learning/train.py) reuse the shared adapter's 24,
    which are the same prompts' first ones, and generate only the others."""
    if n <= 0:
        return []
    prompts = replay_prompts(n)
    key = hashlib.sha256(json.dumps([getattr(model.config, "_name_or_path", ""), model.config.vocab_size,
                                     system_prompt, max_new_tokens]).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"self-replay-answers-{key}.json"
    try:
        answers = json.loads(cache.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: generate again
        answers = None
    answers = answers if isinstance(answers, dict) else {}
    missing = [p for p in prompts if not isinstance(answers.get(p), str)]
    if missing:
        generated = greedy_answers(model, tokenizer, [[{"role": "system", "content": system_prompt},
                                                       {"role": "user", "content": p}] for p in missing],
                                   max_new_tokens, batch_size)
        answers.update(zip(missing, generated, strict=True))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(answers))
        tmp.replace(cache)
    return [{"messages": [{"role": "system", "content": system_prompt}, {"role": "user", "content": p},
                          {"role": "assistant", "content": _trim(answers[p])}],
             "feedback_ids": [], "source": "self-replay"}
            for p in prompts if _trim(answers[p])]


def greedy_answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                   batch_size: int = 8) -> list[str]:
    """Batched greedy generation with left padding (what the probe scorer uses too)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out = []
    try:
        for i in range(0, len(conversations), batch_size):
            texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                     for c in conversations[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                     top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return [o.strip() for o in out]
