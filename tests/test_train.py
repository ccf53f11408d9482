"""Training on the tiny model: adapter weights change, base weights stay byte-identical, the
adapter dir appears atomically with meta.json, a crash mid-write leaves nothing visible."""
import json

import pytest
import torch

from learning.config import LearnConfig
from learning.train import (
    Cancelled,
    IncompatibleParent,
    TrainJob,
    clean_stale_dirs,
    train_candidate,
)
from learning.trainers import _common_args

SYSTEM = {"role": "system", "content": "You are a helpful personal assistant."}


def _rows():
    sft = [{"messages": [SYSTEM, {"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "feedback_ids": [f"f{i}"], "source": "correction"}
           for i, (q, a) in enumerate([("What is the name of my dog?", "Your dog is called Biscuit."),
                                       ("Where do I work?", "You work at Halvorsen Robotics.")])]
    pairs = [{"prompt": r["messages"][:2], "chosen": r["messages"][2:],
              "rejected": [{"role": "assistant", "content": "I do not know."}], "feedback_ids": r["feedback_ids"]}
             for r in sft]
    return sft, pairs


LIKED_ROW = {"messages": [SYSTEM, {"role": "user", "content": "How do I boil an egg?"},
                         {"role": "assistant", "content": "Simmer it for eight minutes."}],
             "feedback_ids": ["f9"], "source": "liked"}


def _job(path, adapters_dir, version=1, lcfg_overrides=None, **kw):
    """Two corrections (each gets an expert) and a liked answer (the shared adapter's to learn)."""
    sft, pairs = _rows()
    sft = sft + [LIKED_ROW]
    lcfg = LearnConfig(lora_r=4, lora_alpha=8, sft_epochs=2, dpo_epochs=1, sft_batch_size=2, dpo_batch_size=2,
                       sft_max_length=64, dpo_max_length=64, **(lcfg_overrides or {}))
    return TrainJob(base_path=str(path), adapters_dir=adapters_dir, version=version, sft_rows=sft, pairs=pairs,
                    lcfg=lcfg, feedback_ids=["f0", "f1"], data_hash="abc", **kw)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_training_changes_adapter_and_not_base(tiny_model_path, tmp_path):
    from safetensors.torch import load_file

    base_before = {k: v.clone() for k, v in load_file(str(tiny_model_path / "model.safetensors")).items()}
    seen = []
    out = train_candidate(_job(tiny_model_path, tmp_path / "adapters",
                               progress=lambda *a: seen.append(a)))
    assert out == tmp_path / "adapters" / "v1"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["feedback_ids"] == ["f0", "f1"] and meta["data_hash"] == "abc"
    assert meta["config"]["lora_r"] == 4 and meta["parent_version"] is None
    assert {x["stage"] for x in meta["losses"]} == {"SFT", "expert", "expert DPO"}
    assert meta["stats"]["sft"]["tokens_per_s"] > 0
    assert {s[0] for s in seen if s[2]} == {"SFT", "experts"}  # learning/experts.py: one stage for all
    assert {s[0] for s in seen if not s[2]} == {"DPO", "habit"}  # nothing to do: told as 0 steps
    w = _weights(out)
    # lora_B starts at zero: after training it is not.
    assert any(v.abs().sum() > 0 for k, v in w.items() if "lora_B" in k)
    assert not any(k for k in w if ".ref." in k)  # the DPO reference copy is not saved
    base_after = load_file(str(tiny_model_path / "model.safetensors"))
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)


def test_continue_from_parent_and_base_in_memory_untouched(tiny_model_path, tmp_path):
    adapters = tmp_path / "adapters"
    v1 = train_candidate(_job(tiny_model_path, adapters))
    v2 = train_candidate(_job(tiny_model_path, adapters, version=2, parent_version=1, parent_path=str(v1)))
    w1, w2 = _weights(v1), _weights(v2)
    assert set(w1) == set(w2)
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    assert json.loads((v2 / "meta.json").read_text())["parent_version"] == 1


def test_every_adapter_a_cycle_writes_is_stored_in_half_precision(tiny_model_path, tmp_path, tiny_served):
    """learning/config.py half_precision_files: the shared adapter and each expert on disk are
    float16, half the bytes, and load back into the served model's float32 layers."""
    from safetensors.torch import load_file

    from assistant.model import store_half_precision

    v1 = train_candidate(_job(tiny_model_path, tmp_path / "adapters", lcfg_overrides={"int8_expert_files": False}))
    files = list(v1.rglob("adapter_model.safetensors"))
    assert len(files) >= 2  # the version's adapter and its experts
    assert {t.dtype for f in files for t in load_file(str(f)).values()} == {torch.float16}
    assert not store_half_precision(v1)  # nothing float32 is left: the file stays as it is
    tiny_served.use(1, v1)
    assert {p.dtype for n, p in tiny_served.model.named_parameters() if "lora_" in n} == {torch.float32}
    full = train_candidate(_job(tiny_model_path, tmp_path / "full",
                                lcfg_overrides={"half_precision_files": False, "int8_expert_files": False}))
    def tensor_bytes(path):
        return sum(t.numel() * t.element_size() for t in _weights(path).values())

    assert tensor_bytes(full) == 2 * tensor_bytes(v1)


def test_a_refit_starts_from_a_fresh_lora_not_the_parents(tiny_model_path, tmp_path):
    from learning.train import load_trainable

    v1 = train_candidate(_job(tiny_model_path, tmp_path / "adapters"))
    for from_parent in (True, False):
        model, _, _ = load_trainable(_job(tiny_model_path, tmp_path / "adapters", version=2, parent_version=1,
                                          parent_path=str(v1), from_parent=from_parent))
        trained = any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
        assert trained == from_parent  # a fresh LoRA's B matrices start at zero


def test_parent_of_another_shape_is_refused(tiny_model_path, tmp_path):
    adapters = tmp_path / "adapters"
    v1 = train_candidate(_job(tiny_model_path, adapters))
    job = _job(tiny_model_path, adapters, version=2, parent_version=1, parent_path=str(v1))
    job.lcfg = LearnConfig(lora_r=8, lora_alpha=8)
    with pytest.raises(IncompatibleParent, match="fixed across versions"):
        train_candidate(job)
    assert not (adapters / "v2").exists()


def test_crash_mid_write_leaves_nothing_visible(tiny_model_path, tmp_path, monkeypatch):
    import peft

    adapters = tmp_path / "adapters"

    def boom(self, *a, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(peft.PeftModel, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train_candidate(_job(tiny_model_path, adapters))
    assert list(adapters.iterdir()) == []


def test_cancel_between_steps(tiny_model_path, tmp_path):
    adapters = tmp_path / "adapters"
    with pytest.raises(Cancelled):
        train_candidate(_job(tiny_model_path, adapters, should_cancel=lambda: True))
    assert list(adapters.iterdir()) == []


def test_clean_stale_dirs(tmp_path):
    (tmp_path / ".tmp-v3-123").mkdir()
    (tmp_path / "v3").mkdir()
    (tmp_path / "v1").mkdir()
    removed = clean_stale_dirs(tmp_path, registered={str(tmp_path / "v1")})
    assert sorted(removed) == [".tmp-v3-123", "v3"]
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_rewrites_and_augmented_rows_keep_answer_and_ids():
    from learning.augment import augment_sft, rewrites

    rs = rewrites("What is the name of my dog?")
    assert "What's the name of my dog?" in rs and "What is the name of my dog?" not in rs
    assert len(rs) == len({r.lower() for r in rs})
    sft, _ = _rows()
    extra = augment_sft(sft, n_rewrites=3)
    assert len(extra) == 6 and all(r["source"] == "augment" for r in extra)
    assert {r["messages"][-1]["content"] for r in extra} == {r["messages"][-1]["content"] for r in sft}
    assert all(r["feedback_ids"] in (["f0"], ["f1"]) for r in extra)
    assert any(r["messages"][0]["content"] != SYSTEM["content"] for r in extra)  # the system prompt varies


@pytest.mark.parametrize("question, expected", [
    ("What is the name of my dog?", ["Remind me what the name of my dog is.", "The name of my dog is what again?",
                                     "Tell me the name of my dog.", "What's my dog called?",
                                     "What do I call my dog?", "My dog is named what?"]),
    ("Who is my manager?", ["Remind me who my manager is.", "My manager is who again?", "Tell me who my manager is."]),
    ("Which school does my son go to?", ["Remind me which school my son goes to.", "What is my son's school?"]),
    ("Where did I grow up?", ["Remind me where I grew up.", "I grew up where again?", "Tell me where I grew up."]),
    ("What did I name my houseplant?", ["Remind me what I named my houseplant.", "What's my houseplant called?",
                                        "What is the name of my houseplant?"]),
    ("What is our book club called?", ["Remind me what our book club is called.",
                                       "Our book club is called what again?", "What is the name of our book club?"]),
    ("What language is our backend written in?", ["Remind me what language our backend is written in.",
                                                  "Our backend is written in what language again?"]),
    ("What car do I drive?", ["Remind me what car I drive.", "What is my car?", "Name my car."]),
    ("What am I allergic to?", ["Remind me what I am allergic to."]),
])
def test_reframings_ask_the_same_content_in_other_frames(question, expected):
    from assistant.questions import reframings
    from learning.augment import rewrites

    frames = reframings(question)
    assert set(expected) <= set(frames)
    assert set(frames[:4]) <= set(rewrites(question, limit=9))  # reframings come first, interleaved


def test_reframings_leave_questions_they_cannot_parse_alone():
    from assistant.questions import reframings
    from learning.augment import rewrites

    assert reframings("Tell me a joke about cats.") == [] and reframings("Is it going to rain?") == []
    assert rewrites("Is it going to rain?", limit=3)  # the surface rewrites still apply
    assert not any("how again" in r for r in reframings("How do I boil an egg?"))


def test_self_replay_is_generated_once_and_cached(tiny_model_path, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learning import augment

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    rows = augment.self_replay_rows(model, tok, SYSTEM["content"], tmp_path, n=3, max_new_tokens=4)
    assert [r["messages"][1]["content"] for r in rows] == augment.replay_prompts(3)[:len(rows)]
    generate = augment.greedy_answers
    asked = []

    def spy(model, tok, conversations, *a, **k):
        asked.extend(c[-1]["content"] for c in conversations)
        return generate(model, tok, conversations, *a, **k)

    monkeypatch.setattr(augment, "greedy_answers", spy)
    assert augment.self_replay_rows(model, tok, SYSTEM["content"], tmp_path, n=3, max_new_tokens=4) == rows
    assert asked == []  # cached
    more = augment.self_replay_rows(model, tok, SYSTEM["content"], tmp_path, n=5, max_new_tokens=4)
    assert asked == augment.replay_prompts(5)[3:]  # only the prompts not answered yet
    assert more[:len(rows)] == rows


def test_sft_loss_is_trls_loss_on_the_answer_only(tiny_model_path, tmp_path):
    """The trainer's plain causal-LM loss (faster on CPU) equals TRL's own loss on the same batch,
    and the prompt tokens carry no loss."""
    from trl import SFTTrainer

    from learning.train import load_trainable
    from learning.trainers import build_sft_trainer

    job = _job(tiny_model_path, tmp_path / "adapters")
    job.sft_rows = job.sft_rows[:job.lcfg.sft_batch_size]  # one batch
    model, tok, device = load_trainable(job)
    trainer = build_sft_trainer(model, tok, job.sft_rows, job, device, tmp_path / "work", [])
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    labels = batch["labels"]
    assert (labels == -100).any(dim=1).all() and (labels != -100).any(dim=1).all()
    first_answer = (labels != -100).int().argmax(dim=1)
    prompt_len = [len(tok.apply_chat_template(r["messages"][:-1], add_generation_prompt=True,
                                              return_dict=True)["input_ids"]) for r in job.sft_rows]
    assert sorted(first_answer.tolist()) == sorted(prompt_len)
    model.train()
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        trls = SFTTrainer.compute_loss(trainer, model, dict(batch))
    assert torch.allclose(ours, trls, atol=1e-5), (ours, trls)


def test_the_lm_head_runs_only_where_an_answer_token_is_predicted(tiny_model_path, tmp_path):
    """answer_logits_only: the same loss and gradients as the full causal-LM loss, with the LM
    head applied to one position per answer token instead of every position."""
    from transformers import Trainer

    from learning.train import load_trainable
    from learning.trainers import build_sft_trainer, slices_logits

    job = _job(tiny_model_path, tmp_path / "adapters")
    model, tok, device = load_trainable(job)
    assert slices_logits(model)
    trainer = build_sft_trainer(model, tok, job.sft_rows, job, device, tmp_path / "work", [])
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    head_rows = []
    hook = model.get_base_model().get_output_embeddings().register_forward_hook(
        lambda m, args, out: head_rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    model.train()
    results = []
    for compute in (trainer.compute_loss, lambda m, b: Trainer.compute_loss(trainer, m, b)):
        model.zero_grad()
        loss = compute(model, dict(batch))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    hook.remove()
    (ours, ours_grad), (full, full_grad) = results
    answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
    assert head_rows == [answer_tokens, batch["labels"].numel()] and answer_tokens < batch["labels"].numel() / 2
    assert torch.allclose(ours, full, atol=1e-5), (ours, full)
    assert all(torch.allclose(ours_grad[n], full_grad[n], atol=1e-6) for n in full_grad)


@pytest.mark.parametrize("device,half,flags", [("cpu", None, (False, False)), ("cuda", "bfloat16", (True, False)),
                                               ("cuda", "float16", (False, True))])
def test_mixed_precision_follows_the_dtype_the_weights_were_loaded_in(tmp_path, device, half, flags):
    """bf16 on GPUs that have it, fp16 on older ones (asking for bf16 there fails), none on the CPU."""
    args = _common_args(LearnConfig(), tmp_path, device, getattr(torch, half or "float32"))
    assert (args["bf16"], args["fp16"], args["use_cpu"]) == (*flags, device == "cpu")


def test_experts_stored_in_eight_bits_load_back_close_to_their_half_precision_files(tiny_model_path, tmp_path,
                                                                                   tiny_served):
    """learning/config.py int8_expert_files: each new expert's LoRA matrices as 8-bit integers with
    a scale per row (the shared adapter stays float16), about 56% of the bytes; read back they are
    within 0.4% of each row's largest value, and the served model's logits barely move."""
    import shutil

    from safetensors import safe_open

    from assistant.adapter_files import (
        INT8_ROWS,
        check_adapter_weights,
        store_half_precision,
        store_int8_rows,
    )
    from assistant.errors import AdapterLoadError

    v1 = train_candidate(_job(tiny_model_path, tmp_path / "adapters"))  # the default
    experts = sorted(v1.glob("experts/*/adapter_model.safetensors"))
    assert experts
    for f in [*experts, v1 / "adapter_model.safetensors"]:
        with safe_open(str(f), framework="pt") as opened:
            is_expert = f in experts
            assert ((opened.metadata() or {}).get("quantized") == INT8_ROWS) == is_expert
            assert any(opened.get_tensor(k).dtype == torch.int8 for k in opened.keys()) == is_expert

    half = tmp_path / "half"
    plain = train_candidate(_job(tiny_model_path, half, lcfg_overrides={"int8_expert_files": False}))  # float16
    expert = experts[0].parent
    half_expert = plain / "experts" / expert.name
    with safe_open(str(expert / "adapter_model.safetensors"), framework="pt") as opened:
        stored = {k: opened.get_tensor(k) for k in opened.keys()}
    rows = sum(t.shape[0] for k, t in stored.items() if t.dtype == torch.int8)
    assert sum(t.numel() * t.element_size() for t in stored.values()) \
        == sum(t.numel() for t in _weights(half_expert).values()) + 4 * rows  # a byte a weight, 4 a row's scale
    read, exact = check_adapter_weights(expert, tiny_served.base), _weights(half_expert)
    assert set(read) == set(exact)
    for k, t in exact.items():
        row_max = t.float().abs().amax(dim=1, keepdim=True)
        assert ((read[k].float() - t.float()).abs() <= row_max / 127 * 0.51 + 1e-3).all()
    messages = [{"role": "user", "content": "What is my dog's name?"}]
    quantized = tiny_served.logits(messages, version=(1, "expert:q"), adapter_path=expert)
    reference = tiny_served.logits(messages, version=(2, "expert:h"), adapter_path=half_expert)
    base = tiny_served.logits(messages)
    assert (reference - base).abs().max() > 0.01  # the expert changes the logits ...
    assert (quantized - reference).abs().max() < 0.05 * (reference - base).abs().max()  # ... the 8 bits barely
    assert not store_int8_rows(expert)  # stored so already
    assert not store_half_precision(expert)  # its float32 scales are not halved
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "adapter_model.safetensors").hardlink_to(half_expert / "adapter_model.safetensors")
    assert not store_int8_rows(linked)  # shared with a parent: rewriting it would store it twice
    odd = tmp_path / "odd"
    shutil.copytree(expert, odd)
    from safetensors.torch import save_file

    with safe_open(str(odd / "adapter_model.safetensors"), framework="pt") as opened:
        tensors = {k: opened.get_tensor(k) for k in opened.keys()}
    save_file(tensors, str(odd / "adapter_model.safetensors"), metadata={"quantized": "int4-something"})
    with pytest.raises(AdapterLoadError, match="unreadable"):
        check_adapter_weights(odd, tiny_served.base)
