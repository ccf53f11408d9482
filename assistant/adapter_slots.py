"""Reuse a loaded LoRA adapter's layers for a new version of the same shape.

peft's `load_adapter` builds new LoRA modules for every adapter: about a second of Python on
the embedded model, most of a hot swap. The learner keeps one LoRA shape across versions, so
a spare adapter (loaded, but neither the current nor the previous one) can take a new
version's weights by copying tensors into its existing parameters, in milliseconds.

Contract: `overwrite(peft_model, name, tensors)` copies a saved adapter's tensors (keys as in
adapter_model.safetensors) into adapter `name` and returns True, or returns False and changes
nothing when the tensors do not match that adapter's parameters one for one. The caller holds
the model lock and has checked that the shapes of the two configs agree (`same_shape`).
"""
import torch

# The adapter_config.json fields that decide which modules a LoRA has and how it is applied.
SHAPE_KEYS = ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "bias", "modules_to_save",
              "fan_in_fan_out", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern",
              "lora_bias", "exclude_modules", "peft_type")


def _normal(cfg: dict) -> dict:
    def norm(v):
        if isinstance(v, (list, set, tuple)):
            return sorted(v)
        return getattr(v, "value", v)  # enums (peft_type) compare by value

    return {k: norm(cfg.get(k)) for k in SHAPE_KEYS}


def same_shape(a: dict, b: dict) -> bool:
    return _normal(a) == _normal(b)


def slot_parameters(peft_model, name: str) -> dict[str, torch.nn.Parameter]:
    """Adapter `name`'s LoRA matrices, keyed as in a saved adapter file."""
    out = {}
    for module_name, module in peft_model.base_model.model.named_modules():
        for which in ("lora_A", "lora_B"):
            layers = getattr(module, which, None)
            if isinstance(layers, torch.nn.ModuleDict) and name in layers:
                out[f"base_model.model.{module_name}.{which}.weight"] = layers[name].weight
    return out


def overwrite(peft_model, name: str, tensors: dict[str, torch.Tensor]) -> bool:
    params = slot_parameters(peft_model, name)
    if set(params) != set(tensors) or any(params[k].shape != t.shape for k, t in tensors.items()):
        return False
    with torch.no_grad():
        for key, t in tensors.items():
            params[key].copy_(t.to(dtype=params[key].dtype, device=params[key].device))
    return True
