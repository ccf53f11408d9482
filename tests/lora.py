"""Real LoRA adapter directories on the tiny model, for registry, gate and swap tests.

`make_adapter` saves a peft LoRA with random (non-zero) weights: each seed gives different
logits, so a swap is visible. `corrupt_adapter` writes the broken directories an adapter
loader must refuse.
"""
import json
import shutil
from pathlib import Path

import torch

TARGETS = ("q_proj", "v_proj")


def make_adapter(base_path, out: Path, seed: int, targets=TARGETS, r: int = 4) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_path))
    model = get_peft_model(base, LoraConfig(r=r, target_modules=list(targets), init_lora_weights=False))
    model.save_pretrained(str(out))
    return Path(out)


def register(db, version: int, path: Path, parent: int | None = None, feedback_ids=()) -> int:
    from store import adapters

    return adapters.register_candidate(db, version, str(path), parent, {"timings": {"sft_s": 1.0}},
                                       list(feedback_ids), len(feedback_ids), 0)


def corrupt_adapter(good: Path, out: Path, how: str, base_path=None) -> Path:
    """A copy of `good` broken in one way: garbage | truncated | no-config | wrong-targets | wrong-shape |
    missing-tensor (one LoRA matrix left out of a readable file)."""
    out = Path(out)
    if how == "wrong-shape":
        # A LoRA for another (wider) model: same module names, tensors of the wrong shape.
        from transformers import AutoModelForCausalLM, LlamaConfig

        wide = AutoModelForCausalLM.from_config(LlamaConfig(
            **{**json.loads((Path(base_path) / "config.json").read_text()), "hidden_size": 64,
               "intermediate_size": 128, "architectures": None}))
        shutil.rmtree(out, ignore_errors=True)
        tmp = out.parent / (out.name + "-base")
        wide.save_pretrained(tmp)
        return make_adapter(tmp, out, seed=99)
    shutil.copytree(good, out, dirs_exist_ok=True)
    if how == "garbage":
        (out / "adapter_model.safetensors").write_bytes(b"\x00not a safetensors file" * 64)
    elif how == "truncated":  # a half-written file
        data = (out / "adapter_model.safetensors").read_bytes()
        (out / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "missing-tensor":
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(out / "adapter_model.safetensors"))
        tensors.pop(sorted(k for k in tensors if "lora_B" in k)[-1])
        save_file(tensors, str(out / "adapter_model.safetensors"))
    elif how == "no-config":
        (out / "adapter_config.json").unlink()
    elif how == "wrong-targets":
        cfg = json.loads((out / "adapter_config.json").read_text())
        cfg["target_modules"] = ["no_such_proj"]
        (out / "adapter_config.json").write_text(json.dumps(cfg))
    else:
        raise ValueError(how)
    return out
