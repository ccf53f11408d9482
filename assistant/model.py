"""The served model: base weights plus LoRA adapters in slots, behind one lock, and generation.

Contract: `ServedModel.stream(messages, ..., version=V)` yields text pieces generated with
adapter version V (None: base alone). The lock is held for the whole generation, so an
adapter swap can only happen between requests and a stream in flight finishes on the
adapter it started with. The previously active adapter stays loaded, so a rollback is a
pointer flip, not a disk read. This module knows nothing about the database. What a reply
depends on stays in this file (`avoid_first_tokens`, `stop_on_loop` too): learning/scoring.py
keys its cache of base replies on this file's content. Importable from here as before: model
loading (assistant/model_loading.py), adapter checks (assistant/adapter_files.py), the worker
thread (assistant/generation.py), the adapter directory layout (store/manifest.py).
"""
import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Iterator

import torch

from assistant import adapter_slots
from assistant.adapter_files import (  # noqa: F401  (re-exported)
    check_adapter_weights,
    store_half_precision,
    validate_adapter_dir,
)
from assistant.config import Config
from assistant.errors import AdapterLoadError, ModelLoadError
from assistant.generation import Generation, GenerationWorker
from assistant.model_loading import (  # noqa: F401  (re-exported)
    EMBEDDED_GGUF_ENV,
    convert_embedded,
    pick_device,
    resolve_model,
)
from store.manifest import WEIGHTS_DELETED, read_lead, weights_deleted  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def _unwrap_lora_layers(model) -> None:
    """Undo a half-done first injection: put each module's original layer back."""
    for name, module in list(model.named_modules()):
        if hasattr(module, "base_layer") and hasattr(module, "lora_A") and "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), child, module.get_base_layer())


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


def key_version(key) -> int | None:
    """The adapter version a served-model key belongs to: keys are versions, or
    `(version, "habit")` for a version's habit adapter (assistant/scope.py)."""
    return key[0] if isinstance(key, tuple) else key



class ServedModel:
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
        self._names = 0  # peft adapter names are never reused
        self.current = None  # the key of the adapter generation uses now (None: base)
        self.previous = None  # the one before it, kept loaded for an instant rollback
        self.adapter_config: dict | None = None  # the first adapter's LoRA shape; later ones must match
        self.stop_loops = True  # end a reply that repeats itself (stop_on_loop)
        # side adapters (experts, habit adapters) kept loaded besides the current and previous key
        # (Config.max_side_adapters, build_served passes it)
        self.max_side_adapters = max_side_adapters
        self._side_use: dict = {}  # side adapter keys, least recently used first
        self._worker = GenerationWorker()

    # ---- adapters -------------------------------------------------------------------------
    def load_adapter(self, version: int, path: str | Path) -> None:
        """Load adapter `version` from `path` (validated first). Keeps the server on its
        current adapter if anything is wrong with the new one."""
        # Never as inference tensors: a load can happen inside a caller's inference_mode (the
        # scorer meets a habit adapter mid-batch), and peft later toggles requires_grad on them.
        with self.lock, torch.inference_mode(False):
            if version in self.loaded:
                return
            cfg = validate_adapter_dir(Path(path))
            # Check the tensors before peft touches the model: the first load injects LoRA
            # layers into the base in place, so a failure half-way would alter the base itself.
            tensors = check_adapter_weights(Path(path), self.base)
            spare = self._spare(cfg, version)
            lead = read_lead(path)
            if spare is not None and adapter_slots.overwrite(self.model, self.loaded[spare], tensors):
                self.loaded[version] = self.loaded.pop(spare)  # the spare's layers now hold `version`
                self.leads.pop(spare, None)
                self.leads[version] = lead
                return
            # Unique names: a reused slot keeps its old name, so "v{version}" could collide.
            self._names += 1
            name = f"slot{self._names}"
            try:
                if self.model is self.base:
                    from peft import PeftModel

                    self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=name)
                    self.model.eval()
                else:
                    self.model.load_adapter(str(path), adapter_name=name)
            except Exception as e:  # corrupt tensors, wrong shapes, wrong target modules
                self._forget(name)
                if self.model is self.base:
                    _unwrap_lora_layers(self.base)
                raise AdapterLoadError(f"adapter v{version} in {path} cannot be loaded: {e}") from e
            self.loaded[version] = name
            self.leads[version] = lead
            self.adapter_config = self.adapter_config or cfg

    def _spare(self, cfg: dict, key) -> int | tuple | None:
        """A loaded adapter with `cfg`'s LoRA shape whose layers can take `key`'s weights (see
        assistant.adapter_slots): a version that is neither current nor previous or, for a side
        adapter (an expert) while `max_side_adapters` are loaded, the least recently used side
        adapter, which would be unloaded next anyway. A home with more experts than the cap
        then switches experts by copying tensors, not by building LoRA modules (about 0.5 s)."""
        def fits(k) -> bool:
            return adapter_slots.same_shape(self.model.peft_config[self.loaded[k]].to_dict(), cfg)

        spare = next((v for v in self.loaded if key_version(v) not in self._in_use() and fits(v)), None)
        if spare is None and isinstance(key, tuple):
            side = [k for k in self._side_use if k in self.loaded and k not in (self.current, self.previous)]
            if side and len(side) >= self.max_side_adapters:
                spare = next((k for k in side if fits(k)), None)
        return spare

    def _forget(self, name: str) -> None:
        if self.model is not self.base and name in getattr(self.model, "peft_config", {}):
            try:
                self.model.delete_adapter(name)
            except Exception:  # half-loaded adapter: nothing more to undo
                log.warning("could not delete half-loaded adapter %s", name)

    def use(self, version: int | None, path: str | Path | None = None) -> None:
        """Switch generation to `version` (a key; None: base alone), loading it first if needed.
        At most three versions stay loaded, each with its habit adapter if it has one: the
        current one, the previous one (instant rollback) and one spare whose layers the next
        new version reuses. Moving between a version and its own habit adapter (the chat does
        so turn by turn) is not a change of version: the previous one stays. A version's
        experts and habit adapter (keys `(version, name)`) stay loaded up to
        `max_side_adapters`, the least recently used going first (`_evict_side_adapters`)."""
        with self.lock:
            if version is not None:
                if version not in self.loaded:
                    if path is None:
                        raise AdapterLoadError(f"adapter v{version} is not loaded and no path was given")
                    self.load_adapter(version, path)
                self.model.set_adapter(self.loaded[version])
                if isinstance(version, tuple):
                    self._side_use.pop(version, None)
                    self._side_use[version] = None  # the most recently used last
                    self._evict_side_adapters()
            # Evict only on a real switch: re-selecting the current version must keep the
            # previous one (instant rollback) and an adapter preloaded for the next switch.
            if version != self.current:
                if key_version(version) != key_version(self.current):
                    self.previous = self.current
                self.current = version
                spares = [k for k in self.loaded if key_version(k) not in self._in_use()]
                for k in spares[:-1]:  # keep the most recently loaded spare
                    self._forget(self.loaded.pop(k))
                    self.leads.pop(k, None)

    def preload(self, key: tuple, path: str | Path) -> bool:
        """Load side adapter `key` (an expert) before a prompt asks for it, only into free room
        under `max_side_adapters` and as the least recently used: a preload never unloads one
        in use. True when it was loaded now. Raises AdapterLoadError as `load_adapter`."""
        with self.lock:
            if key in self.loaded:
                return False
            side = [k for k in self._side_use if k in self.loaded]
            if len(side) >= self.max_side_adapters:
                return False
            self.load_adapter(key, path)
            self._side_use = {key: None, **self._side_use}  # least recently used first
            return True

    def _evict_side_adapters(self) -> None:
        """Unload the least recently used side adapters (experts, habit adapters) past
        `max_side_adapters`, never the current or previous key: a home with hundreds of
        corrections must not hold every expert it was ever asked about in memory."""
        for k in [k for k in self._side_use if k not in self.loaded]:  # unloaded with their version
            self._side_use.pop(k)
        side = [k for k in self._side_use if k not in (self.current, self.previous)]
        for k in side[:max(0, len(side) - self.max_side_adapters)]:
            self._forget(self.loaded.pop(k))
            self.leads.pop(k, None)
            self._side_use.pop(k)

    def _in_use(self) -> set:
        """The versions of the current and the previous key."""
        return {key_version(self.current), key_version(self.previous)}

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

    @contextlib.contextmanager
    def base_weights(self):
        """Within it, every loaded LoRA layer is bypassed: the base model's outputs. peft's
        `disable_adapter` does the same but first inspects every layer of every loaded adapter
        (`get_model_status`) and resets requires_grad on each on the way out: 0.1-0.2 s a call
        with a few dozen experts loaded, paid by every routed turn (the reranker scores under the
        base weights) and every turn the base answers. Here only the flag each LoRA layer's
        forward reads is set, on the layers found once per set of loaded adapters. Hold the lock."""
        if self.model is self.base:
            yield
            return
        layers = self._lora_layers()
        before = [layer.disable_adapters for layer in layers]
        try:
            for layer in layers:
                layer._disable_adapters = True
            yield
        finally:
            for layer, was in zip(layers, before, strict=True):
                layer._disable_adapters = was

    def _lora_layers(self) -> list:
        from peft.tuners.tuners_utils import BaseTunerLayer

        stamp = (id(self.model), self._names)  # a load of a new adapter may add layers; a reuse does not
        if getattr(self, "_layers_stamp", None) != stamp:
            self._layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
            self._layers_stamp = stamp
        return self._layers

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
