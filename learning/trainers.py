"""Running TRL's SFT and DPO trainers on the active LoRA of a PeftModel, and what they share.

Every adapter a cycle trains goes through here: the version's shared adapter and its habit
adapter (learning/train.py) and each correction's expert (learning/experts.py). These lived in
learning/train.py, which imports learning/experts.py to plan and train the experts, while
learning/experts.py imported learning/train.py back for `run_sft` and `run_dpo` (an import
cycle hidden inside a function); both now import this module, which imports neither.

`job` is a `TrainJob` (learning/train.py), or a copy of one with another `lcfg` or `progress`
(an expert's, the habit adapter's): its `lcfg`, `progress`, `should_cancel`, `cache_dir` and
`system_prompt` are read here.
"""
import time
from pathlib import Path

from learning.config import LearnConfig
from learning.datasets import strip_meta


class Cancelled(Exception):
    """The user asked the running cycle to stop."""


def _callback(stage: str, job, losses: list[dict]):
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        """Loss to the job's list, progress per step, cancellation checked between steps."""

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                loss = float(logs["loss"])
                losses.append({"stage": stage, "step": state.global_step, "loss": loss})
                if job.progress:
                    job.progress(stage, state.global_step, state.max_steps, loss)

        def on_step_end(self, args, state, control, **kw):
            if job.progress:
                job.progress(stage, state.global_step, state.max_steps, None)
            if job.should_cancel and job.should_cancel():
                raise Cancelled(f"cancelled during {stage} at step {state.global_step}")

    return Report()


def _common_args(lcfg: LearnConfig, out: Path, device: str, dtype) -> dict:
    """Trainer arguments both stages share; `dtype` is the one the weights were loaded in
    (load_trainable: bf16 where the GPU has it, else fp16), which mixed precision follows."""
    import torch

    half = dtype if device == "cuda" else None
    return dict(output_dir=str(out), save_strategy="no", report_to=[], logging_steps=lcfg.logging_steps,
                gradient_checkpointing=False,  # measured: slower on CPU, memory is not the limit at 135M
                bf16=half == torch.bfloat16, fp16=half == torch.float16, use_cpu=device == "cpu", seed=lcfg.seed, data_seed=lcfg.seed,
                lr_scheduler_type="linear", warmup_steps=0, disable_tqdm=True, dataloader_num_workers=0,
                remove_unused_columns=True)


def run_sft(model, tok, rows: list[dict], job, device: str, work: Path, losses: list,
            stage: str = "SFT") -> dict:
    lcfg = job.lcfg
    trainer = build_sft_trainer(model, tok, rows, job, device, work, losses, stage)
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"]) * lcfg.sft_epochs
    t0 = time.perf_counter()
    trainer.train()
    dt = time.perf_counter() - t0
    return {"rows": len(rows), "steps": trainer.state.global_step,
            "tokens": int(tokens), "seconds": dt, "tokens_per_s": tokens / dt if dt else None}


def build_sft_trainer(model, tok, rows: list[dict], job, device: str, work: Path, losses: list,
                      stage: str = "SFT"):
    """TRL's SFTTrainer on prompt/completion rows (loss on the answer only), see sft_trainer_class."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    lcfg = job.lcfg
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]}
                            for r in map(strip_meta, rows)])
    args = SFTConfig(**_common_args(lcfg, work / "sft", device, model.dtype), num_train_epochs=lcfg.sft_epochs,
                     learning_rate=lcfg.sft_lr, per_device_train_batch_size=lcfg.sft_batch_size,
                     max_length=lcfg.sft_max_length, completion_only_loss=True, packing=False)
    return sft_trainer_class(SFTTrainer)(
        model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[_callback(stage, job, losses)])


def sft_trainer_class(base):
    """`base` (TRL's SFTTrainer) with two changes to its training loss:

    - the plain causal-LM loss of the model on TRL's labels (prompt tokens already -100, so
      the loss is on the answer only, exactly TRL's loss value). TRL's own path runs the LM head
      "fused" and computes entropy and top-1 accuracy for its logs at every step; measured on
      the embedded model on CPU that costs a quarter of the step time (bench/learn.py:
      TRL vs a bare PyTorch loop);
    - the LM head applied only where an answer token is predicted (`answer_logits_only`)."""
    from transformers import Trainer

    class PlainLossSFTTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not return_outputs and slices_logits(model):
                inputs = answer_logits_only(inputs)
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return PlainLossSFTTrainer


def answer_logits_only(inputs: dict) -> dict:
    """`inputs` with the model told to project onto the vocabulary only the positions that
    predict an answer token, and the labels of those positions (transformers' `logits_to_keep`
    as a boolean mask, and `shift_labels`, which its causal-LM loss takes instead of shifting
    `labels` itself). The loss is the same; the LM head (576 x 49152 on the embedded model, a
    fifth of its weights) and the softmax over the vocabulary no longer run for the prompt,
    system prompt included, which is most of each short training row."""
    import torch

    labels = inputs["labels"]
    predicted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)  # the token each position predicts
    keep = predicted != -100
    return {**inputs, "logits_to_keep": keep, "shift_labels": predicted[keep]}


def slices_logits(model) -> bool:
    """Does `model` (a PeftModel or a transformers model) take a boolean `logits_to_keep` mask?
    Its modeling module slices with transformers' `slice_logits_to_keep` (nearly every causal LM
    in transformers 5); the few that slice by hand take an integer only."""
    import inspect
    import sys

    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    return ("logits_to_keep" in inspect.signature(type(core).forward).parameters
            and hasattr(sys.modules.get(type(core).__module__), "slice_logits_to_keep"))


def run_dpo(model, tok, pairs: list[dict], job, device: str, work: Path, losses: list,
            stage: str = "DPO") -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    lcfg = job.lcfg
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pairs])
    weights = [1.0, lcfg.dpo_sft_weight] if lcfg.dpo_sft_weight > 0 else [1.0]
    args = DPOConfig(**_common_args(lcfg, work / "dpo", device, model.dtype), num_train_epochs=lcfg.dpo_epochs,
                     learning_rate=lcfg.dpo_lr, per_device_train_batch_size=lcfg.dpo_batch_size,
                     max_length=lcfg.dpo_max_length, beta=lcfg.dpo_beta,
                     loss_type=["sigmoid", "sft"][:len(weights)], loss_weights=weights)
    # The model is a PeftModel: TRL adds a frozen "ref" copy of the (post-SFT) adapter as reference.
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         callbacks=[_callback(stage, job, losses)])
    d = trainer.train_dataset
    tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in
                 zip(d["prompt_ids"], d["chosen_ids"], d["rejected_ids"], strict=True)) * lcfg.dpo_epochs
    t0 = time.perf_counter()
    trainer.train()
    dt = time.perf_counter() - t0
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    return {"pairs": len(pairs), "steps": trainer.state.global_step, "tokens": int(tokens), "seconds": dt,
            "tokens_per_s": tokens / dt if dt else None}
