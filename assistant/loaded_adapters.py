"""The served model's loaded LoRA adapters: which stay loaded, which slot a new one takes, and
the switch to the base weights.

Versions: the current one, the previous one (an instant rollback) and one spare whose layers the
next new version takes over (assistant/adapter_slots.py). Side adapters, a version's experts and
habit adapter (keys `(version, name)`), stay loaded up to `max_side_adapters`, the least recently
used going first; past the cap a new one takes over that one's layers, and a newly promoted
version's experts are preloaded into free room (`preload`). Keys whose directories hold the same
files (a version keeps its parent's experts as hard links) share one set of layers. `base_weights()`
bypasses every loaded LoRA layer.

Contract: `LoadedAdapters` is the adapter half of `assistant.model.ServedModel`, which sets `lock`,
`base`, `model`, `loaded`, `leads`, `_files`, `_names`, `current`, `previous`, `adapter_config`,
`max_side_adapters`, `_side_use` and `_layers`, `_layers_stamp` (`base_weights`' LoRA layers and
the loads they were found after) in its constructor. Separate from assistant/model.py (the
prompt and generation) because learning/scoring.py keys its cache of replies on that file's
content: what a reply depends on lives there, which adapters are kept in memory does not.
"""
import contextlib
import logging
from pathlib import Path

import torch

from assistant import adapter_slots
from assistant.adapter_files import check_adapter_weights, validate_adapter_dir
from assistant.errors import AdapterLoadError
from store.manifest import ADAPTER_CONFIG, WEIGHT_FILES, read_lead

log = logging.getLogger(__name__)


def _unwrap_lora_layers(model) -> None:
    """Undo a half-done first injection: put each module's original layer back."""
    for name, module in list(model.named_modules()):
        if hasattr(module, "base_layer") and hasattr(module, "lora_A") and "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), child, module.get_base_layer())


def _file_identity(path: Path) -> tuple:
    """What says two adapter directories hold the same adapter: the same config and weight files
    (a later version links the experts it keeps, store/manifest.py link_tree)."""
    out = []
    for name in (ADAPTER_CONFIG, *WEIGHT_FILES):
        with contextlib.suppress(OSError):
            st = (path / name).stat()
            out.append((name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def key_version(key) -> int | None:
    """The adapter version a served-model key belongs to: keys are versions, or
    `(version, "habit")` for a version's habit adapter (assistant/scope.py)."""
    return key[0] if isinstance(key, tuple) else key


class LoadedAdapters:
    """See the module docstring."""

    def load_adapter(self, version: int, path: str | Path) -> None:
        """Load adapter `version` from `path` (validated first). Keeps the server on its
        current adapter if anything is wrong with the new one."""
        # Never as inference tensors: a load can happen inside a caller's inference_mode (the
        # scorer meets a habit adapter mid-batch), and peft later toggles requires_grad on them.
        with self.lock, torch.inference_mode(False):
            if version in self.loaded:
                return
            cfg = validate_adapter_dir(Path(path))
            files = _file_identity(Path(path))
            same = next((k for k, f in self._files.items() if f == files and k in self.loaded), None)
            if same is not None:  # the same files (a kept expert, hard-linked): its layers serve both keys
                self.loaded[version], self._files[version] = self.loaded[same], files
                self.leads[version] = read_lead(path)  # the directory's own (habit.json is not a weight file)
                return
            # Check the tensors before peft touches the model: the first load injects LoRA
            # layers into the base in place, so a failure half-way would alter the base itself.
            tensors = check_adapter_weights(Path(path), self.base)
            spare = self._spare(cfg, version)
            lead = read_lead(path)
            if spare is not None and adapter_slots.overwrite(self.model, self.loaded[spare], tensors):
                self.loaded[version] = self.loaded.pop(spare)  # the spare's layers now hold `version`
                self.leads.pop(spare, None)
                self._files.pop(spare, None)
                self.leads[version], self._files[version] = lead, files
                return
            # Unique names: a reused slot keeps its old name, so "v{version}" could collide.
            self._names += 1
            name = f"slot{self._names}"
            try:
                self._add_lora(name, cfg, tensors)
            except Exception as e:  # corrupt tensors, wrong shapes, wrong target modules
                self._forget(name)
                if self.model is self.base:
                    _unwrap_lora_layers(self.base)
                raise AdapterLoadError(f"adapter v{version} in {path} cannot be loaded: {e}") from e
            self.loaded[version] = name
            self.leads[version], self._files[version] = lead, files
            self.adapter_config = self.adapter_config or cfg

    def _add_lora(self, name: str, cfg: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Build adapter `name`'s LoRA layers from `cfg` and fill them with `tensors` (as peft's
        `load_adapter` does from a file, which an 8-bit expert's is not: adapter_files); a LoRA
        matrix the tensors lack is an error, not a silent zero."""
        from peft import LoraConfig, PeftModel, set_peft_model_state_dict

        config = LoraConfig(**{k: v for k, v in cfg.items() if k in LoraConfig.__dataclass_fields__})
        config.inference_mode = True
        model = PeftModel(self.base, config, adapter_name=name) if self.model is self.base else self.model
        if model is self.model:
            model.add_adapter(name, config)
        result = set_peft_model_state_dict(model, tensors, adapter_name=name)
        missing = [k for k in result.missing_keys if "lora_" in k and f".{name}." in k]
        if missing:  # the caller undoes the layers: on the base's modules (first load) or the adapter
            raise ValueError(f"{len(missing)} LoRA matrices missing, {missing[0]} first")
        if model is not self.model:
            self.model = model.eval()

    def _spare(self, cfg: dict, key) -> int | tuple | None:
        """A loaded adapter with `cfg`'s LoRA shape whose layers can take `key`'s weights (see
        assistant.adapter_slots): a version that is neither current nor previous or, for a side
        adapter (an expert) while `max_side_adapters` are loaded, the least recently used side
        adapter, which would be unloaded next anyway. A home with more experts than the cap
        then switches experts by copying tensors, not by building LoRA modules (about 0.5 s)."""
        def fits(k) -> bool:  # and its layers serve no other key (`_release`)
            name = self.loaded[k]
            return adapter_slots.same_shape(self.model.peft_config[name].to_dict(), cfg) \
                and list(self.loaded.values()).count(name) == 1

        spare = next((v for v in self.loaded if key_version(v) not in self._in_use() and fits(v)), None)
        if spare is None and isinstance(key, tuple):
            idle = self._idle_side()
            if len(idle) >= self.max_side_adapters:
                spare = next((k for k in idle if fits(k)), None)
        return spare

    def _release(self, key) -> None:
        """Unload `key`: its layers go too unless another key's files are the same (load_adapter)."""
        name = self.loaded.pop(key)
        self.leads.pop(key, None)
        self._files.pop(key, None)
        if name not in self.loaded.values():
            self._forget(name)

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
                    self._release(k)

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
        idle = self._idle_side()
        for k in idle[:max(0, len(idle) - self.max_side_adapters)]:
            self._release(k)
            self._side_use.pop(k)

    def _idle_side(self) -> list:
        """The loaded side adapters that are neither the current nor the previous key, least
        recently used first: those the cap counts and the first to go."""
        return [k for k in self._side_use if k in self.loaded and k not in (self.current, self.previous)]

    def _in_use(self) -> set:
        """The versions of the current and the previous key."""
        return {key_version(self.current), key_version(self.previous)}

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
        if self._layers_stamp != stamp:
            self._layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
            self._layers_stamp = stamp
        return self._layers
