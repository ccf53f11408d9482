"""Train one candidate adapter: TRL SFTTrainer, then DPOTrainer, on ONE LoRA.

Contract: `train_candidate(job)` loads the base model, attaches the parent adapter TRAINABLE
(or a fresh LoRA of the fixed shape from LearnConfig: a first version, or a refit,
`job.from_parent` False), runs SFT on the answer tokens only, then
DPO (sigmoid + an SFT term on the chosen answer, against collapse), each on the rows no expert
of the version answers (a correction with an expert is learned by it, learning/experts.py, and
the scope never routes its prompts to the shared adapter), and writes the adapter
ATOMICALLY: a temp dir inside the adapters dir, renamed to `adapters/vN` once complete, with a
`meta.json` (store/manifest.py Manifest: resolved config, parent version, feedback ids, data hash, package version,
timings, losses, tokens/s). Base weights are never modified. A crash leaves at most a
`.tmp-*` dir, removed by `clean_stale_dirs` at the next start.

Devices: CUDA is detected (bf16 there, float32 on CPU). The trainers are plain HF/TRL
trainers (learning/trainers.py), so the same code runs on several GPUs with `accelerate
launch -m learning.learner --home DIR` (data parallel; each rank trains on its shard and
rank 0 saves).
"""
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from learning.config import LearnConfig
from learning.experts import expert_groups, feedback_key, no_longer_held, plan_experts, train_experts
from learning.trainers import Cancelled as Cancelled  # re-exported for learning/learner.py
from learning.trainers import run_dpo, run_sft
from store.manifest import (
    ADAPTER_CONFIG,
    EXPERTS_DIR,
    HABIT_DIR,
    LEAD_FILE,
    Manifest,
    Scope,
    expert_entries,
    link_tree,
    read_manifest,
    write_manifest,
)

Progress = Callable[[str, int, int, float | None], None]  # (stage, step, total, loss); total 0: stage skipped


class IncompatibleParent(ValueError):
    """The active adapter's LoRA shape differs from LearnConfig's fixed shape."""


@dataclass
class TrainJob:
    base_path: str
    adapters_dir: Path
    version: int
    sft_rows: list[dict]
    pairs: list[dict]
    lcfg: LearnConfig = field(default_factory=LearnConfig)
    parent_version: int | None = None
    parent_path: str | None = None
    from_parent: bool = True  # start from the parent's weights; False: a fresh LoRA (a refit)
    feedback_ids: list[str] = field(default_factory=list)
    data_hash: str = ""
    progress: Progress | None = None
    should_cancel: Callable[[], bool] | None = None
    extra_meta: dict = field(default_factory=dict)
    system_prompt: str = "You are a helpful personal assistant."
    cache_dir: Path | None = None  # where the base model's self-replay answers are cached
    # Every correction the data still holds, as (SFT rows, preference pairs), for the experts
    # (learning/experts.py): each one without an expert gets one (not only those among this
    # job's rows, which past a refit are the new ones and a replay sample), and an inherited
    # expert whose correction is gone (deleted, quarantined, superseded, its conversation marked
    # don't-learn) is dropped. None: the job's own rows, and every inherited expert is kept.
    corrections: tuple[list[dict], list[dict]] | None = None
    superseded: list[str] = field(default_factory=list)  # feedback ids a newer correction replaced
    # a sentence embedder (`encode(texts)`): the experts' groups gather unlike questions
    # (learning/experts.py expert_batches); None: groups in order
    embedder: object | None = None


def training_rows(job: TrainJob, model, tok, answered=frozenset()) -> tuple[list[dict], list[dict], dict]:
    """(what the version learns from, what its shared adapter trains on, counts).

    The first: the job's rows and generic rewrites of corrected prompts (learning/augment.py);
    their prompts make the version's scope (`adapter_scope`). The second: the same less the
    rows of the corrections an expert answers (`answered`, ExpertPlan.answered: the scope routes
    their prompts to the expert, never to the shared adapter, so training it on them would only
    cost time), plus, when anything is left, the base model's own answers to generic prompts
    against forgetting (self-replay)."""
    from learning.augment import augment_sft, self_replay_rows

    rows = list(job.sft_rows)
    extra = augment_sft(rows, n_rewrites=job.lcfg.augment_rewrites) if job.lcfg.augment else []
    learned = rows + extra
    shared = [r for r in learned if feedback_key(r) not in answered]
    replay = []
    if shared and job.lcfg.self_replay and job.cache_dir is not None:
        model.eval()
        with model.disable_adapter():  # the BASE model's answers, whatever the parent learned
            replay = self_replay_rows(model, tok, job.system_prompt, job.cache_dir, job.lcfg.self_replay)
        model.train()
    counts = {"given": len(rows), "augment": len(extra), "to_experts": len(learned) - len(shared),
              "self_replay": len(replay)}
    return learned, shared + replay, counts


def load_trainable(job: TrainJob):
    """(peft model, tokenizer, device): base + parent adapter trainable, or a fresh fixed-shape LoRA."""
    import torch
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assistant.model import pick_device

    device, dtype = pick_device()
    tok = AutoTokenizer.from_pretrained(job.base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(job.base_path, dtype=dtype).to(device)
    torch.manual_seed(job.lcfg.seed * 1000 + job.version)  # a different LoRA init per version
    want = job.lcfg.lora_shape()
    if job.parent_path:  # a refit too: the served model keeps one shape across versions
        have = adapter_shape(job.parent_path)
        if have != want:
            raise IncompatibleParent(f"parent adapter v{job.parent_version} has LoRA shape {have}, the config "
                                     f"wants {want}; the shape is fixed across versions")
    if job.parent_path and job.from_parent:
        model = PeftModel.from_pretrained(base, job.parent_path, is_trainable=True)
    else:
        model = get_peft_model(base, fresh_lora(job.lcfg))
    return model, tok, device


def adapter_shape(path: str | Path) -> dict:
    """The LoRA shape of a saved adapter, as LearnConfig.lora_shape gives it."""
    pcfg = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    return {"r": pcfg.get("r"), "lora_alpha": pcfg.get("lora_alpha"), "lora_dropout": pcfg.get("lora_dropout"),
            "target_modules": sorted(pcfg.get("target_modules") or [])}


def fresh_lora(lcfg: LearnConfig):
    """A new LoRA of the fixed shape (every version's adapter, and its habit adapter)."""
    from peft import LoraConfig

    want = lcfg.lora_shape()
    return LoraConfig(r=want["r"], lora_alpha=want["lora_alpha"], lora_dropout=want["lora_dropout"],
                      target_modules=want["target_modules"], task_type="CAUSAL_LM")


def train_candidate(job: TrainJob) -> Path:
    """Train and write `adapters/v{version}` atomically; returns its path (see module docstring)."""
    import torch

    if not job.sft_rows and not job.pairs:
        raise ValueError("nothing to train on: no SFT rows and no preference pairs")
    job.adapters_dir.mkdir(parents=True, exist_ok=True)
    final = job.adapters_dir / f"v{job.version}"
    if final.exists():
        raise FileExistsError(f"{final} already exists; adapter versions are never overwritten")
    tmp = job.adapters_dir / f".tmp-v{job.version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    timings, losses, stats = {}, [], {}
    try:
        t0 = time.perf_counter()
        model, tok, device = load_trainable(job)
        timings["load_s"] = time.perf_counter() - t0
        work = tmp / "_work"
        t0 = time.perf_counter()
        plan = plan_experts(job)
        answered = plan.answered() if plan else set()
        learned, shared_rows, stats["sft_rows"] = training_rows(job, model, tok, answered) if job.sft_rows \
            else ([], [], {})
        timings["extra_rows_s"] = time.perf_counter() - t0
        if shared_rows:
            stats["sft"] = run_sft(model, tok, shared_rows, job, device, work, losses)
            timings["sft_s"] = stats["sft"]["seconds"]
        else:
            _skipped(job, "SFT")
        pairs = [p for p in job.pairs if feedback_key(p) not in answered]  # the experts' DPO
        if pairs and job.lcfg.dpo_epochs > 0:
            stats["dpo"] = run_dpo(model, tok, pairs, job, device, work, losses)
            timings["dpo_s"] = stats["dpo"]["seconds"]
        else:
            _skipped(job, "DPO")
        if shared_rows or pairs or not (job.parent_path and job.from_parent):
            model.save_pretrained(str(tmp), selected_adapters=["default"])
        else:  # nothing trained the shared adapter: the parent's files, linked, not a copy
            link_tree(job.parent_path, tmp)
        t0 = time.perf_counter()
        habits = train_habit_adapter(model, tok, job, device, work, losses, stats, tmp)
        if habits is not None:  # its self-replay answers, training and saving
            timings["habit_s"] = time.perf_counter() - t0
        if "habit" not in stats:  # none trained: linked from the parent, or none at all
            _skipped(job, "habit")
        if not (plan and plan.new):
            _skipped(job, "experts")
        t0 = time.perf_counter()
        experts = train_experts(model, tok, job, plan, device, work, losses, stats, tmp)
        if experts is not None:
            timings["experts_s"] = time.perf_counter() - t0
        shutil.rmtree(work, ignore_errors=True)
        write_manifest(tmp, Manifest(
            version=job.version, parent_version=job.parent_version, base_model=job.base_path,
            config=job.lcfg.to_dict(), feedback_ids=sorted(set(job.feedback_ids)),
            data_hash=job.data_hash, package_version=_package_version(), device=device,
            torch=torch.__version__, timings=timings, losses=losses, stats=stats,
            rows={"sft": len(job.sft_rows), "pairs": len(job.pairs)},
            scope=Scope.from_dict(adapter_scope(job, learned, experts)),
            habits=habits, experts=None if experts is None else expert_entries(experts),
            extra=dict(job.extra_meta),
        ))
        _store_smaller(tmp, job.lcfg)
        _fsync_dir(tmp)
        tmp.rename(final)  # the one visible step: the directory appears complete or not at all
        _fsync_dir(job.adapters_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _store_smaller(version_dir: Path, lcfg) -> None:
    """Rewrite the adapters a cycle wrote (not those linked from the parent) as
    `half_precision_files` and `int8_expert_files` say."""
    from assistant.model import store_half_precision, store_int8_rows

    for weights in version_dir.rglob("adapter_model.safetensors"):
        if lcfg.int8_expert_files and EXPERTS_DIR in weights.relative_to(version_dir).parts:
            store_int8_rows(weights.parent)
        elif lcfg.half_precision_files:
            store_half_precision(weights.parent)


def _skipped(job: TrainJob, stage: str) -> None:
    """Tell the job's progress that `stage` has nothing to do (a total of 0 steps)."""
    if job.progress:
        job.progress(stage, 0, 0, None)


def train_habit_adapter(model, tok, job: TrainJob, device: str, work: Path, losses: list, stats: dict,
                        out: Path) -> dict | None:
    """The habit adapter (learning/habits.py, `habit_adapter` on), written to `out/habit` with
    its lead (habit.json): trained when this cycle's new corrections show a habit (continuing the
    parent's habit adapter if it has one), linked unchanged from the parent when they do not (a
    replayed or refitted row it learned before is no reason to retrain it; bench/HISTORY.md), absent
    when neither has one. Only scoped versions have one: an unscoped adapter answers
    every prompt itself. Returns the habits it follows (None: no habit adapter)."""
    from learning.augment import self_replay_rows
    from learning.habits import find_habits, habit_rows, has_habits, merged, with_habits

    if not job.lcfg.habit_adapter or job.lcfg.scope_threshold is None:
        return None
    parent = Path(job.parent_path) / HABIT_DIR if job.parent_path else None
    parent = parent if parent is not None and (parent / ADAPTER_CONFIG).exists() else None
    found = find_habits(job.sft_rows, job.lcfg.habit_min_support, job.lcfg.habit_max_closing_words)
    habits = merged(found, read_manifest(job.parent_path).habits if job.parent_path else None)
    if not has_habits(habits):
        return None
    if not habits["openings"]:  # a closing needs no weights: the chat adds it (assistant/chat.py)
        return habits
    shown = habit_rows(job.sft_rows, habits)
    new = set(job.feedback_ids)
    if parent and not any(new & set(r.get("feedback_ids") or ()) for r in shown):
        shown = []  # only rows it learned before (a refit's, a replayed one): nothing new for it
    if not shown:  # nothing new to learn: the parent's habit adapter goes on unchanged
        if parent:
            link_tree(parent, out / HABIT_DIR)
        return habits
    base_answers = []
    if job.lcfg.habit_self_replay and job.cache_dir is not None:
        model.eval()
        with model.disable_adapter():
            base_answers = self_replay_rows(model, tok, job.system_prompt, job.cache_dir,
                                            job.lcfg.habit_self_replay)
        model.train()
    rows = shown + [{**r, "messages": r["messages"][:-1] + [
        {"role": "assistant", "content": with_habits(r["messages"][-1]["content"], habits)}]}
        for r in base_answers]
    if parent:
        model.load_adapter(str(parent), adapter_name="habit", is_trainable=True)
    else:  # a parent's habit adapter goes on in its own shape; a new one takes `habit_r`
        rank = job.lcfg.habit_r
        shape = job.lcfg if rank is None else dataclasses.replace(job.lcfg, lora_r=rank, lora_alpha=2 * rank)
        model.add_adapter("habit", fresh_lora(shape))
    model.set_adapter("habit")
    habit_job = dataclasses.replace(job, lcfg=dataclasses.replace(job.lcfg, sft_lr=job.lcfg.habit_lr))
    stats["habit"] = run_sft(model, tok, rows, habit_job, device, work / "habit", losses, stage="habit")
    stats["habit"]["shown"] = len(shown)
    model.save_pretrained(str(out), selected_adapters=["habit"])  # peft writes it to out/habit (HABIT_DIR)
    model.set_adapter("default")
    # The served model lets this adapter write only the opening (its tokens, and two to spare:
    # tokenisation at the start of a reply may differ) and keeps it only if it is one of the
    # habit's openings; the base weights write the answer (assistant/model.py generate_led).
    lead = max(len(tok(o, add_special_tokens=False)["input_ids"]) for o in habits["openings"]) + 2
    (out / HABIT_DIR / LEAD_FILE).write_text(json.dumps({"openings": habits["openings"], "lead_tokens": lead}))
    return habits


def adapter_scope(job: TrainJob, sft_rows: list[dict], experts: list[dict] | None = None) -> dict | None:
    """The prompts this version answers (assistant/scope.py): its parent's scope and the user
    prompts of everything it was trained on, except the self-replay rows (generic prompts kept
    on the base weights). None when `scope_threshold` is None: the adapter answers everything.
    The prompts of a parent's expert whose correction the user took back (`experts`: this
    version's, learning/experts.py) leave the scope with it: they would otherwise reach the
    shared adapter, which may still hold what it learned (past `refit_corrections`) or answer
    with another fact's words; outside the scope the base weights answer, as in the chat before
    the next cycle (ChatService._taken_back). So do the names it told (unless a kept expert
    or this job's rows tell them too): they would let questions naming them past the
    first-person guard."""
    from learning.scopes import scope_personal, scope_sources, scope_told, told_by_answers
    from store.manifest import read_experts, read_scope
    from store.text import question_and_answer, question_key, scope_prompts

    if job.lcfg.scope_threshold is None:
        return None
    parent = read_scope(job.parent_path) if job.parent_path else None
    inherited = parent["prompts"] if parent else []
    inherited_told = set(parent.get("told") or ()) if parent else set()
    if experts is not None and job.corrections is not None and parent:
        asked = {question_key(q) for q, _ in map(question_and_answer, job.corrections[0]) if q}
        dropped = no_longer_held(read_experts(job.parent_path), expert_groups(*job.corrections))
        taken_back = [e for e in dropped if question_key(e["prompt"]) not in asked]  # not superseded
        gone = {q for e in taken_back for q in e.get("prompts") or [e["prompt"]]} - \
            {q for e in experts for q in e.get("prompts") or ()}
        inherited = [q for q in inherited if q not in gone]

        def told_by(es):  # what these experts' corrections told, as scope_told counts it
            return told_by_answers((e["prompt"], e.get("answer") or "") for e in es)

        inherited_told -= told_by(taken_back) - told_by(experts)
    rows = [r for r in sft_rows if r.get("source") != "self-replay"] + list(job.pairs)
    prompts = list(dict.fromkeys([*inherited, *scope_prompts(rows)]))
    told = sorted({*inherited_told, *scope_told(rows)})
    personal = sorted({*(parent.get("personal") or [] if parent else []), *scope_personal(rows)})
    kept = set(inherited)
    sources = scope_sources(rows, {q: ids for q, ids in (parent.get("sources") or {}).items() if q in kept}
                            if parent else None)
    return {"threshold": job.lcfg.scope_threshold, "margin": job.lcfg.scope_margin, "prompts": prompts, "told": told,
            "personal": personal, "sources": sources}


def clean_stale_dirs(adapters_dir: Path, registered: set[str]) -> list[str]:
    """Remove leftovers of crashed cycles: `.tmp-*` dirs, and `vN` dirs that never got registered."""
    removed = []
    if not Path(adapters_dir).is_dir():
        return removed
    for p in Path(adapters_dir).iterdir():
        stale_tmp = p.name.startswith(".tmp-")
        unregistered = p.name.startswith("v") and p.is_dir() and str(p) not in registered
        if stale_tmp or unregistered:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _fsync_dir(path: Path) -> None:
    for p in [*Path(path).glob("*"), Path(path)]:
        if p.is_file() or p == Path(path):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("personal-assistant")
    except PackageNotFoundError:
        return "0+unknown"
