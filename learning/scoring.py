"""Batched greedy generation and log-likelihood scoring on a ServedModel, for evaluation.

Contract: `Scorer(served)` scores under the adapter chosen with `select(version, path)`
(None: base alone). Adapters are switched in place with peft; the base weights are never
reloaded. `generate(conversations)` returns each conversation's greedy reply (left padding,
prompts sorted by length so a batch wastes little padding); `logprobs(prompts, completions)`
returns (sum of log-probs, token count) of each completion after its prompt. With a `scope`
(assistant/scope.py), `generate` answers prompts outside the selected adapter's scope with its
habit adapter or the base weights, exactly as the chat does; log-likelihoods are always the selected adapter's.

The served model's lock is taken per batch and the adapter re-selected inside it, so a
server sharing the model keeps answering between batches and never sees a half-switched
adapter, and evaluation is never run on the wrong adapter.
"""
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable

import torch

from store.manifest import ADAPTER_CONFIG, WEIGHT_FILES


def _chunks(seq: list, size: int) -> Iterable[list]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


class Kept:
    """Values kept in a JSON file between evaluations (`values`: key -> value), valid while the
    model (its config and where it came from) and the code that computes them (`code`: module
    files, by content: an upgrade starts afresh) are the same. The newest LIMIT are kept: a few MB
    at most. A missing or unreadable file starts empty; `save` writes atomically, and a full disk
    loses the file, never the evaluation."""

    LIMIT = 20000

    def __init__(self, path, served, code: tuple[str, ...]):
        self.path = Path(path)
        config = served.model.config
        self.salt = hashlib.sha256(b"".join(Path(f).read_bytes() for f in code) + json.dumps(
            [getattr(config, "_name_or_path", ""), config.to_json_string()]).encode()).hexdigest()
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: compute again
            stored = {}
        ok = isinstance(stored, dict) and stored.get("salt") == self.salt and isinstance(stored.get("values"), dict)
        self.values: dict = stored["values"] if ok else {}

    def save(self) -> None:
        values = dict(list(self.values.items())[-self.LIMIT:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"salt": self.salt, "values": values}))
            tmp.replace(self.path)
        except OSError:
            pass


class Replies(Kept):
    """Greedy replies kept between evaluations, by the weights that gave them.

    Why: every cycle's gate asks the canaries and every earlier correction again, of the
    incumbent and of the candidate, and most of them reach weights that did not change: the base
    weights, an expert or shared adapter a version kept by hard link (learning/experts.py). On
    this CPU that was most of a cycle's evaluation, growing with every correction. A reply is
    looked up by everything it depends on: the model, the code that generates it (this module and
    assistant/model.py), the adapter's files (by content; "base" for the base weights), the
    conversation, its lead and first-token guard, and the token budget. Both sides of a gate then
    also get the very same reply from the same weights, whatever other prompts shared its batch."""

    def __init__(self, path, served):
        from assistant import model as model_module

        super().__init__(path, served, (model_module.__file__, __file__))
        self._weights: dict[tuple, str | None] = {}

    def weights(self, path) -> str | None:
        """What identifies the adapter files at `path` (None: the base weights, "base"): a hash of
        their content, computed once per file; None when they cannot be read (not cached then)."""
        if path is None:
            return "base"
        files = [f for f in (Path(path) / n for n in (ADAPTER_CONFIG, *WEIGHT_FILES)) if f.exists()]
        try:
            stamp = tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in (f.stat() for f in files))
            if stamp not in self._weights:
                digest = hashlib.sha256()
                for f in files:
                    digest.update(f.read_bytes())
                self._weights[stamp] = digest.hexdigest() if len(stamp) > 1 else None  # config and weights
        except OSError:
            return None
        return self._weights[stamp]

    def key(self, weights: str, conversation: list[dict], lead, avoid_first, max_new_tokens: int) -> str:
        return hashlib.sha256(json.dumps([weights, conversation, lead, avoid_first, max_new_tokens]).encode()).hexdigest()


class Likelihoods(Kept):
    """What the chat model's base weights make of a question and a learned answer (the reranker's
    query likelihood, the answer-fit check: assistant/rerank.py ModelReranker.memo), kept between
    evaluations. Why: the gate routes every earlier correction's question for both versions each
    cycle, and each route asked the model again: the gate's time grew with every correction kept
    (bench/results/season-latest.md). The base weights never change, so neither do these."""

    def __init__(self, path, served, reranker):
        """`reranker`: the one whose values these are (its module's code salts them)."""
        import inspect

        super().__init__(path, served, (inspect.getfile(type(reranker)),))


class Scorer:
    def __init__(self, served, batch_size: int = 16, max_new_tokens: int = 32,
                 max_completion_tokens: int = 160, scope=None, replies: Replies | None = None):
        self.served = served
        self.scope = scope  # assistant.scope.AdapterScope: route prompts as the chat does
        self.replies = replies  # replies asked before, by the weights that gave them (None: ask every time)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_completion_tokens = max_completion_tokens
        self.version: int | None = None
        self.path = None

    def select(self, version: int | None, path=None) -> None:
        """Score under adapter `version` from now on (loaded now, so a bad one fails early)."""
        with self.served.lock:
            self.served.use(version, path)
        self.version, self.path = version, path

    def batches(self, n: int) -> int:
        return -(-n // self.batch_size)

    def _run(self, fn, ids: torch.Tensor, mask: torch.Tensor):
        """fn(model, ids, mask) under the selected adapter, holding the model's lock."""
        with self.served.lock, torch.inference_mode():
            self.served.use(self.version, self.path)
            with self.served._adapter_context():
                return fn(self.served.model, ids.to(self.served.device), mask.to(self.served.device))

    # ---- greedy generation ----------------------------------------------------------------
    def generate(self, conversations: list[list[dict]], on_batch: Callable[[], None] | None = None,
                 avoid_first: list[int | None] | None = None, leads: list[str | None] | None = None) -> list[str]:
        """Greedy replies; `avoid_first[i]`: a token reply i may not start with, `leads[i]`: the
        words reply i starts with (what a chat turn with recall does, `Turn.avoid_first` and
        `Turn.lead`)."""
        if self.scope is not None and self.version is not None and self.path is not None:
            routes = [self.scope.route(self.version, self.path,
                                       next(m["content"] for m in reversed(c) if m["role"] == "user"))
                      for c in conversations]
            if any(r != (self.version, self.path) for r in routes):
                return self._routed(conversations, routes, on_batch, avoid_first, leads)
        return self._generate(conversations, on_batch, avoid_first, leads)

    def _routed(self, conversations, routes: list[tuple], on_batch, avoid_first, leads) -> list[str]:
        """Each prompt under the adapter the chat would route it to (AdapterScope.route): the
        selected adapter inside its scope, its habit adapter or the base weights outside."""
        replies: list[str] = [""] * len(conversations)
        selected = self.version, self.path
        for route in dict.fromkeys(routes):
            idx = [i for i, r in enumerate(routes) if r == route]
            self.version, self.path = route
            try:
                out = self._generate([conversations[i] for i in idx], on_batch,
                                     [avoid_first[i] for i in idx] if avoid_first else None,
                                     [leads[i] for i in idx] if leads else None)
            finally:
                self.version, self.path = selected
            for i, r in zip(idx, out, strict=True):
                replies[i] = r
        return replies

    def _generate(self, conversations, on_batch, avoid_first, leads=None) -> list[str]:
        unknown = self.replies is None or (self.version is not None and self.path is None)
        weights = None if unknown else self.replies.weights(None if self.version is None else self.path)
        if weights is None:
            return self._batched_generate(conversations, on_batch, avoid_first, leads)
        return self._cached_generate(weights, conversations, on_batch, avoid_first, leads)

    def _cached_generate(self, weights: str, conversations, on_batch, avoid_first, leads) -> list[str]:
        """Replies of the selected weights: those asked before from `replies`, the others generated."""
        cache = self.replies
        leads = leads or [None] * len(conversations)
        avoid = avoid_first or [None] * len(conversations)
        keys = [cache.key(weights, c, lead, a, self.max_new_tokens)
                for c, lead, a in zip(conversations, leads, avoid, strict=True)]
        todo = [keys.index(k) for k in dict.fromkeys(keys) if k not in cache.values]
        if todo:
            out = self._batched_generate([conversations[i] for i in todo], on_batch,
                                         [avoid[i] for i in todo] if avoid_first else None, [leads[i] for i in todo])
            cache.values.update((keys[i], r) for i, r in zip(todo, out, strict=True))
        for _ in range(self.batches(len(conversations)) - self.batches(len(todo))):  # progress as if generated
            if on_batch:
                on_batch()
        return [cache.values[k] for k in keys]

    def _batched_generate(self, conversations, on_batch, avoid_first, leads=None) -> list[str]:
        from transformers import LogitsProcessorList

        from assistant.model import avoid_first_tokens

        tok = self.served.tokenizer
        leads = leads or [None] * len(conversations)
        encoded = [self.served.encode(m, lead)[0].tolist() for m, lead in zip(conversations, leads, strict=True)]
        if avoid_first:  # a given lead replaces the guard on the reply's first token
            avoid_first = [None if lead else a for a, lead in zip(avoid_first, leads, strict=True)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        replies: list[str] = [""] * len(encoded)
        kwargs = self.served._generate_kwargs(self.max_new_tokens, 0.0)
        for batch in _chunks(order, self.batch_size):
            width = max(len(encoded[i]) for i in batch)
            ids = torch.tensor([[tok.pad_token_id] * (width - len(encoded[i])) + encoded[i] for i in batch])
            mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch])
            guard = LogitsProcessorList([avoid_first_tokens(width, [avoid_first[i] for i in batch])]
                                        if avoid_first and any(avoid_first[i] is not None for i in batch) else [])
            out = self._run(lambda m, a, b, guard=guard: self.served.generate_led(a, b, logits_processor=guard,
                                                                                  **kwargs), ids, mask)
            for i, row in zip(batch, out[:, width:].cpu(), strict=True):
                replies[i] = (leads[i] or "") + self.served.reply_text(row)
            if on_batch:
                on_batch()
        return replies

    # ---- log-likelihood -------------------------------------------------------------------
    def _completion_ids(self, messages: list[dict], completion: str) -> tuple[list[int], list[int]]:
        """Token ids of the prompt and of the completion as the chat template writes it
        (answer plus end-of-turn token), cut to `max_completion_tokens`."""
        tok = self.served.tokenizer
        prompt = self.served.encode(messages)[0].tolist()
        full = tok.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                       return_dict=True)["input_ids"]
        if full[:len(prompt)] == prompt:
            comp = full[len(prompt):]
            if tok.eos_token_id in comp:  # drop the template's trailing newline after the end token
                comp = comp[:comp.index(tok.eos_token_id) + 1]
        else:  # a template that rewrites earlier turns: score the bare answer
            comp = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return prompt, comp[: self.max_completion_tokens]

    def logprobs(self, prompts: list[list[dict]], completions: list[str],
                 on_batch: Callable[[], None] | None = None) -> list[tuple[float, int]]:
        pad = self.served.tokenizer.pad_token_id
        rows = [self._completion_ids(m, c) for m, c in zip(prompts, completions, strict=True)]
        scores: list[tuple[float, int]] = [(0.0, 1)] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
        for batch in _chunks(order, self.batch_size):
            seqs = [rows[i][0] + rows[i][1] for i in batch]
            width = max(map(len, seqs))
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])  # right padding
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
            logits = self._run(lambda m, a, b: m(input_ids=a, attention_mask=b).logits, ids, mask)
            for j, i in enumerate(batch):
                start, end = len(rows[i][0]), len(seqs[j])
                # position t predicts token t+1
                lp = torch.log_softmax(logits[j, start - 1:end - 1].float(), dim=-1)
                target = ids[j, start:end].to(lp.device)
                scores[i] = (float(lp.gather(1, target[:, None]).sum()), end - start)
            if on_batch:
                on_batch()
        return scores
