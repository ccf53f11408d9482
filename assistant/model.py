"""The served model: base weights plus LoRA adapters in slots, behind one lock, and generation.

Contract: `ServedModel.stream(messages, ..., version=V)` yields text pieces generated with
adapter version V (None: base alone). The lock is held for the whole generation, so an
adapter swap can only happen between requests and a stream in flight finishes on the
adapter it started with. The previously active adapter stays loaded, so a rollback is a
pointer flip, not a disk read. This module knows nothing about the database. What a reply
depends on stays in this file (`avoid_first_tokens`, `stop_on_loop` too): learning/scoring.py
keys its cache of base replies on this file's content. Which adapters stay loaded, which slot a
new one takes and the base-weights switch are assistant/loaded_adapters.py's (`LoadedAdapters`,
this class's adapter half). Importable from here as before: model loading
(assistant/model_loading.py), adapter checks (assistant/adapter_files.py), the worker thread
(assistant/generation.py), the adapter directory layout (store/manifest.py), `key_version`.
"""
import contextlib
import threading
import time
from pathlib import Path
from typing import Iterator

import torch

from assistant.adapter_files import (  # noqa: F401  (re-exported)
    check_adapter_weights,
    store_half_precision,
    store_int8_rows,
    validate_adapter_dir,
)
from assistant.config import Config
from assistant.errors import ModelLoadError
from assistant.generation import Generation, GenerationWorker
from assistant.loaded_adapters import LoadedAdapters, key_version  # noqa: F401  (re-exported)
from assistant.model_loading import (  # noqa: F401  (re-exported)
    EMBEDDED_GGUF_ENV,
    convert_embedded,
    pick_device,
    resolve_model,
)
from store.manifest import WEIGHTS_DELETED, read_lead, weights_deleted  # noqa: F401  (re-exported)


def avoid_first_tokens(start: int, banned: list[int | None]):
    """A logits processor that forbids, at the first generated position only, one token per
    batch row (None: nothing). Used against echoes: with recalled notes in its prompt the small
    model sometimes parrots the question back ("Remind me of my ..." -> "Remind me of your ..."),
    and a reply never needs to open with the question's own first word."""
    from transformers import LogitsProcessor

    class _AvoidFirst(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == start:
                for row, token in enumerate(banned):
                    if token is not None:
                        scores[row, token] = -float("inf")
            return scores

    return _AvoidFirst()


def loops(ids: list[int], min_block: int = 4, repeats: int = 3, max_block: int = 32) -> bool:
    """Does `ids` end with the same block of `min_block`..`max_block` tokens `repeats` times in a
    row? ("la femme au pays de France, la femme au pays de France, la femme au pays de France,")"""
    for block in range(min_block, min(max_block, len(ids) // repeats) + 1):
        tail = ids[-block:]
        if all(ids[len(ids) - (k + 1) * block: len(ids) - k * block] == tail for k in range(1, repeats)):
            return True
    return False


def stop_on_loop(start: int):
    """A stopping criterion that ends a batch row's reply (the ids after `start`) once it loops.
    Why: greedy decoding of the 135M model sometimes repeats a phrase until max_new_tokens (15 of
    its 144 self-replay answers repeat a four-word run), and at about 12 tokens/s on a CPU a
    256-token loop is 20 s of garbage. Stopping at the third copy keeps what was said; a ban on
    repeated n-grams instead would also forbid a four-digit number twice in one reply (SmolLM2
    writes digits one token each) and break code and tables."""
    from transformers import StoppingCriteria

    class _StopOnLoop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor([loops(row) for row in input_ids[:, start:].tolist()], device=input_ids.device)

    return _StopOnLoop()


class ServedModel(LoadedAdapters):
    def __init__(self, name_or_path: str, device: str | None = None, dtype: torch.dtype | None = None,
                 max_side_adapters: int = Config.max_side_adapters):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        auto_device, auto_dtype = pick_device()
        self.device = device or auto_device
        self.dtype = dtype or auto_dtype
        self.name = name_or_path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.base = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=self.dtype)
        except OSError as e:
            raise ModelLoadError(f"cannot load model {name_or_path!r}: {e}") from e
        self.base.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.context_window = int(getattr(self.base.config, "max_position_embeddings", 2048) or 2048)
        self.lock = threading.RLock()
        self.model = self.base  # becomes a PeftModel once the first adapter is loaded
        self.loaded: dict = {}  # key (a version, or (version, "habit"): key_version) -> peft adapter name
        self.leads: dict = {}  # key -> (tokens, openings) of an adapter that only leads (read_lead)
        self._files: dict = {}  # key -> its directory's file identity: keys of the same files share layers
        self._names = 0  # peft adapter names are never reused
        self.current = None  # the key of the adapter generation uses now (None: base)
        self.previous = None  # the one before it, kept loaded for an instant rollback
        self.adapter_config: dict | None = None  # the first adapter's LoRA shape; later ones must match
        self.stop_loops = True  # end a reply that repeats itself (stop_on_loop)
        # side adapters (experts, habit adapters) kept loaded besides the current and previous key
        # (Config.max_side_adapters, build_served passes it)
        self.max_side_adapters = max_side_adapters
        self._side_use: dict = {}  # side adapter keys, least recently used first
        self._layers, self._layers_stamp = [], None  # LoRA layers base_weights switches, and when found
        self._worker = GenerationWorker()

    # ---- generation -----------------------------------------------------------------------
    def encode(self, messages: list[dict], lead: str | None = None) -> torch.Tensor:
        """The prompt's ids, ready for the reply; with `lead`, the reply's first words too (the
        model continues them: a recalled correction's opening, Turn.lead)."""
        enc = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        if not lead:
            return enc["input_ids"]
        led = self.tokenizer(lead, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return torch.cat([enc["input_ids"], led.to(enc["input_ids"].dtype)], dim=1)

    def first_token(self, text: str) -> int | None:
        """The token a reply would start with if it began with `text` (None for blank text)."""
        ids = self.tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
        return ids[0] if ids else None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _generate_kwargs(self, max_new_tokens: int, temperature: float) -> dict:
        kw = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if temperature and temperature > 0:
            kw.update(do_sample=True, temperature=float(temperature), top_p=0.95)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def generate_led(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                     streamer=None, **kw) -> torch.Tensor:
        """`self.model.generate` under the current adapter, except for an adapter that only
        leads (a habit adapter, `self.leads`): it writes the first few tokens, kept only when
        they are one of its openings ("Captain,"), and the base weights answer the prompt as
        they would without it; the reply is the opening, a space, then the base answer. So a
        habit changes how answers open and never what they say (learning/habits.py). Returns
        prompt + reply ids (right-padded with the end token, which `reply_text` cuts at)."""
        if self.stop_loops:
            from transformers import StoppingCriteriaList

            kw["stopping_criteria"] = StoppingCriteriaList([*kw.get("stopping_criteria", []),
                                                            stop_on_loop(input_ids.shape[1])])
        lead = self.leads.get(self.current)
        if lead is None:
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, streamer=streamer,
                                       max_new_tokens=max_new_tokens, **kw)
        tokens, openings = lead
        width, eos = input_ids.shape[1], self.tokenizer.eos_token_id
        first = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                    max_new_tokens=min(tokens, max_new_tokens), **kw)[:, width:]
        opened = []  # per row: the opening's ids and a space, or nothing
        for row in first:
            text = self.reply_text(row).strip()
            match = next((o for o in openings if text.lower().startswith(o.lower())), None)
            opened.append(self.tokenizer(text[:len(match)] + " ", add_special_tokens=False)["input_ids"]
                          if match else [])
        if streamer is not None and opened[0]:
            streamer.on_finalized_text(self.tokenizer.decode(opened[0]))
        with self.base_weights():
            rest = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, streamer=streamer,
                                       max_new_tokens=max_new_tokens, **kw)[:, width:].tolist()
        replies = [o + r for o, r in zip(opened, rest, strict=True)]
        longest = max(map(len, replies))
        return torch.cat([input_ids, torch.tensor([r + [eos] * (longest - len(r)) for r in replies],
                                                  dtype=input_ids.dtype, device=input_ids.device)], dim=1)

    def reply_text(self, new_ids: torch.Tensor) -> str:
        """A reply's text from its generated ids, up to the first end-of-turn token."""
        ids = new_ids.tolist()
        eos = self.tokenizer.eos_token_id
        return self.tokenizer.decode(ids[:ids.index(eos)] if eos in ids else ids, skip_special_tokens=True)

    def _adapter_context(self):
        """Generation with the base model alone must bypass any loaded adapter."""
        return self.base_weights() if self.current is None else contextlib.nullcontext()

    def stream(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0,
               version: int | None = None, adapter_path: str | Path | None = None,
               result: Generation | None = None, avoid_first: int | None = None,
               lead: str | None = None) -> Iterator[str]:
        """Yield the reply piece by piece; `result` (if given) receives text, counts and timings;
        `avoid_first`: a token id the reply may not start with (see `avoid_first_tokens`);
        `lead`: the reply's first words, given rather than generated (it then needs no
        `avoid_first`), yielded first and counted in the reply's tokens.

        The worker thread takes the lock, chooses the adapter and generates; the lock is
        released only when generation ends, so concurrent requests queue and a swap never
        happens mid-reply. (The lock is not held across `yield`: servers resume generators
        on arbitrary threads.) Closing the generator early stops generation."""
        from transformers import (
            LogitsProcessorList,
            StoppingCriteria,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        result = result if result is not None else Generation()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        outcome: dict = {}

        class _StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return stop.is_set()

        def work():
            try:
                with self.lock:
                    self.use(version, adapter_path)
                    result.adapter_version = key_version(self.current)
                    input_ids = self.encode(messages, lead).to(self.device)
                    n_lead = self.count_tokens(lead) if lead else 0  # the lead is part of the reply
                    result.prompt_tokens = int(input_ids.shape[1]) - n_lead
                    guard = LogitsProcessorList([avoid_first_tokens(input_ids.shape[1], [avoid_first])]
                                                if avoid_first is not None and not lead else [])
                    with torch.inference_mode(), self._adapter_context():
                        out = self.generate_led(
                            input_ids, torch.ones_like(input_ids), streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([_StopWhenAsked()]), logits_processor=guard,
                            **self._generate_kwargs(max_new_tokens, temperature))
                    outcome["new_tokens"] = int(out.shape[1] - input_ids.shape[1]) + n_lead
            except BaseException as e:  # surfaced to the consumer below
                outcome["error"] = e
                streamer.end()

        start = time.perf_counter()
        finished = self._worker.submit(work)
        try:
            if lead:  # given, not generated: shown at once
                result.ttft_ms = (time.perf_counter() - start) * 1000
                result.pieces.append(lead)
                result.text += lead
                yield lead
            for piece in streamer:
                if not piece:
                    continue
                if result.ttft_ms is None:
                    result.ttft_ms = (time.perf_counter() - start) * 1000
                result.pieces.append(piece)
                result.text += piece
                yield piece
        finally:
            stop.set()  # a consumer that went away stops generation at the next token
            finished.wait()
            # counted here too when the consumer left early: an abandoned turn is logged with
            # the tokens and time it really took
            result.completion_tokens = outcome.get("new_tokens", 0)
            result.duration_ms = (time.perf_counter() - start) * 1000
        if "error" in outcome:
            raise outcome["error"]
        result.finish_reason = "length" if result.completion_tokens >= max_new_tokens else "stop"

    def generate(self, messages: list[dict], **kw) -> Generation:
        result = Generation()
        for _ in self.stream(messages, result=result, **kw):
            pass
        return result

    @torch.inference_mode()
    def logits(self, messages: list[dict], version: int | None = None,
               adapter_path: str | Path | None = None) -> torch.Tensor:
        """Next-token logits for a prompt under `version`: used by tests of swap and rollback."""
        with self.lock:
            self.use(version, adapter_path)
            ids = self.encode(messages).to(self.device)
            with self._adapter_context():
                return self.model(input_ids=ids).logits[0, -1].float().cpu()
