"""An adapter directory checked before the served model loads it, and its weights stored smaller.

Contract: `validate_adapter_dir(path)` -> its adapter_config.json, or AdapterLoadError with the
reason (AdapterWeightsDeleted for a version whose weights were deleted to save disk);
`check_adapter_weights(path, base)` -> its tensors, once each is readable, finite and fits the
module of `base` it targets (checked before peft touches the model), an 8-bit file's read back as
float16; `store_half_precision(dir)` rewrites a saved adapter's float32 tensors as float16 in place,
atomically, and `store_int8_rows(dir)` its LoRA matrices as 8-bit integers with a float32 scale per
row (about 56% of the float16 file; peft cannot read such a file itself, this module can). The
file layout itself (file names, meta.json) is store/manifest.py's.
"""
import json
import os
import re
from pathlib import Path

import torch

from assistant.errors import AdapterLoadError, AdapterWeightsDeleted
from store.manifest import ADAPTER_CONFIG, WEIGHT_FILES, WEIGHTS_DELETED, weights_deleted


def validate_adapter_dir(path: Path) -> dict:
    """Check an adapter directory before loading it; raise AdapterLoadError with the reason
    (AdapterWeightsDeleted for a version whose weights were deleted to save disk)."""
    path = Path(path)
    cfg_file = path / ADAPTER_CONFIG
    if not path.is_dir():
        raise AdapterLoadError(f"adapter directory {path} does not exist")
    if weights_deleted(path):
        raise AdapterWeightsDeleted(f"the weights in {path} were deleted to save disk "
                                    f"({_deleted_note(path)}); its record stays, but it cannot serve again")
    if not cfg_file.exists():
        raise AdapterLoadError(f"adapter directory {path} has no adapter_config.json")
    if not any((path / n).exists() for n in WEIGHT_FILES):
        raise AdapterLoadError(f"adapter directory {path} has no adapter weights")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise AdapterLoadError(f"adapter_config.json in {path} is not valid JSON: {e}") from e
    if cfg.get("peft_type") != "LORA":
        raise AdapterLoadError(f"adapter in {path} is not a LoRA adapter (peft_type={cfg.get('peft_type')!r})")
    return cfg


def _deleted_note(path: Path) -> str:
    try:
        return json.loads((path / WEIGHTS_DELETED).read_text()).get("reason", "no reason recorded")
    except (OSError, ValueError):
        return "no reason recorded"


_LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


INT8_ROWS = "int8-rows"  # the safetensors metadata "quantized" of a `store_int8_rows` file
ROW_SCALE = ".row_scale"  # key suffix of a quantized matrix's scales


def check_adapter_weights(path: Path, base) -> dict[str, torch.Tensor]:
    """Read an adapter's tensors and check them against `base`: readable, finite, and each
    LoRA matrix fits the module it targets. Returns the tensors (an 8-bit file's as float16);
    raises AdapterLoadError."""
    file = path / "adapter_model.safetensors"
    try:
        if file.exists():
            tensors = _read_safetensors(file)
        else:
            file = path / "adapter_model.bin"
            tensors = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or garbage file
        raise AdapterLoadError(f"adapter weights {file} are unreadable (corrupt or half-written?): {e}") from e
    modules = dict(base.named_modules())
    for key, t in tensors.items():
        if not torch.isfinite(t).all():
            raise AdapterLoadError(f"adapter weights {file} contain NaN or infinite values ({key})")
        m = _LORA_KEY.match(key)
        if not m:
            continue  # other tensors (e.g. modules_to_save): peft checks them
        module = modules.get(m.group(1))
        if module is None:
            raise AdapterLoadError(f"adapter {path} targets {m.group(1)}, which the base model does not have")
        layer = getattr(module, "base_layer", module)  # already wrapped by an earlier adapter
        want = (layer.in_features,) if m.group(2) == "A" else (layer.out_features,)
        got = tuple(t.shape[1:]) if m.group(2) == "A" else tuple(t.shape[:1])
        if t.dim() != 2 or got != want:
            raise AdapterLoadError(f"adapter {path} does not fit the base model: {key} has shape "
                                   f"{tuple(t.shape)} (the module's size is {want[0]})")
    return tensors


def _open_safetensors(file: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A safetensors file's metadata and tensors, as stored."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    metadata, tensors = _open_safetensors(file)
    quantized = metadata.get("quantized")
    if quantized is None:
        return tensors
    if quantized != INT8_ROWS:
        raise ValueError(f"unknown quantization {quantized!r}")
    return {k: (t.float() * tensors[k + ROW_SCALE][:, None]).half() if k + ROW_SCALE in tensors else t
            for k, t in tensors.items() if not k.endswith(ROW_SCALE)}


def _rewrite_weights(adapter_dir, convert, metadata: dict) -> bool:
    """Replace a saved adapter's tensors by `convert(tensors)`, atomically, its file's metadata
    with `metadata`. False (and the file unchanged) when there is no such file, the file is
    hard-linked (an expert a later version shares with its parent: rewriting it would store it
    twice), it is stored in 8 bits already, or `convert` returns None."""
    from safetensors.torch import save_file

    file = Path(adapter_dir) / "adapter_model.safetensors"
    if not file.exists() or file.stat().st_nlink > 1:
        return False
    stored, tensors = _open_safetensors(file)
    if stored.get("quantized"):
        return False
    out = convert(tensors)
    if out is None:
        return False
    tmp = file.with_name(file.name + ".new")
    save_file(out, str(tmp), metadata={"format": "pt", **metadata})
    os.replace(tmp, file)
    return True


def _int8_rows(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    out = {}
    for key, t in tensors.items():
        if not (_LORA_KEY.match(key) and t.dim() == 2 and t.is_floating_point()):
            out[key] = t
            continue
        t = t.float()
        if not torch.isfinite(t).all():
            return None
        scale = t.abs().amax(dim=1) / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        out[key] = torch.round(t / scale[:, None]).clamp(-127, 127).to(torch.int8)
        out[key + ROW_SCALE] = scale
    return out


def _half(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    if not any(t.dtype == torch.float32 for t in tensors.values()):
        return None
    half = {k: t.half() if t.dtype == torch.float32 else t for k, t in tensors.items()}
    return half if all(torch.isfinite(t).all() for t in half.values()) else None


def store_int8_rows(adapter_dir) -> bool:
    """Rewrite a saved adapter's LoRA matrices as 8-bit integers, each row with its own float32
    scale (its largest magnitude over 127), in place and atomically; the rest as it was. False
    (and the file unchanged) as `store_half_precision`. Read back by `check_adapter_weights`,
    within 0.4% of each row's largest value."""
    return _rewrite_weights(adapter_dir, _int8_rows, {"quantized": INT8_ROWS})


def store_half_precision(adapter_dir) -> bool:
    """Rewrite a saved adapter's float32 tensors as float16, in place and atomically. False (and
    the file unchanged) when there is no such file, nothing is float32, a tensor would not stay
    finite, the file is hard-linked (an expert a later version shares with its parent: rewriting
    it would store it twice) or stored in 8 bits already (its scales must stay as they are)."""
    return _rewrite_weights(adapter_dir, _half, {})
