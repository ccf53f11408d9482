"""Small LoRAs for a few corrections each ("experts"), next to the version's shared adapter.

Why: one adapter trained on all of a user's corrections answers a paraphrase of one with
another's words ("Which town is my hometown?" -> "Your hometown is named Okafor.", the
dentist's name; README "Known shortfalls"). As in MELO (edits in separate LoRA blocks picked by
a vector index of their inputs) and WISE, corrections get small LoRAs of their own, trained on
their corrections, rewrites and preference pairs only, so little else can leak into them: one
per `LearnConfig.expert_group` corrections of a cycle (4: the same dev figures as one each, a
quarter of the disk; bench/results/learn-dev.md). The scope (assistant/scope.py) routes a prompt to the expert of its nearest trained
prompt; the answer still comes from weights, nothing is added to the prompt. Prompts nearest to
anything else the version learned (liked answers, corrections whose expert waits) go to the
shared adapter, which therefore trains on those only (learning/train.py `training_rows`): a
cycle whose corrections all get experts skips its SFT and DPO, the largest part of a cycle.

An expert is trained once, in the cycle its correction is new; a later version keeps it by
hard links (the files are never written again, so linking is safe and costs no space). A newer
correction (of the same prompt, or superseded by meaning) stops being routed to the old one's
expert; a correction the user took back (its conversation deleted or marked don't-learn,
quarantined by a rollback) takes its group's expert with it in the next version
(`TrainJob.corrections`; the rest of the group is trained anew), even where the shared adapter,
continued from its parent, still holds what it learned.

Layout: `<version>/experts/<adapter>/` (a peft adapter directory) and, in the version's
meta.json, "experts": [{"name", "adapter", "feedback_ids", "prompt", "answer", "prompts",
"trained_in"}], one entry per correction, "adapter" naming the directory its group shares.
"""
import dataclasses
import time
from pathlib import Path

from store.manifest import EXPERTS_DIR, link_tree, read_experts, read_manifest
from store.text import question_and_answer, scope_prompts


def feedback_key(item: dict) -> tuple:
    """What identifies a correction across rows, pairs and experts: its sorted feedback ids."""
    return tuple(sorted(item.get("feedback_ids") or ()))


def expert_groups(sft_rows: list[dict], pairs: list[dict]) -> dict[tuple, dict]:
    """The corrections among `sft_rows` (source "correction"), keyed by their feedback ids, each
    with its preference pairs: `{ids: {"sft": [row], "pairs": [...]}}`, in row order."""
    groups: dict[tuple, dict] = {}
    for row in sft_rows:
        if row.get("source") == "correction":
            groups.setdefault(feedback_key(row), {"sft": [], "pairs": []})["sft"].append(row)
    for pair in pairs:
        key = feedback_key(pair)
        if key in groups:
            groups[key]["pairs"].append(pair)
    return groups


def no_longer_held(experts: list[dict], groups: dict) -> list[dict]:
    """Those of `experts` whose correction is not among `groups` (expert_groups of every correction
    the data holds, `TrainJob.corrections`): taken back by the user, or superseded."""
    return [e for e in experts if feedback_key(e) not in groups]


def expert_pace(parent_path) -> float | None:
    """Seconds one new expert took in the last cycle of this lineage that trained any (the
    parent version's meta.json, "stats" -> "experts" -> "seconds_each", which a version that
    trained none carries over); None when unknown: no parent, none trained yet, unreadable."""
    if not parent_path:
        return None
    pace = read_manifest(parent_path).stat("experts", "seconds_each")
    return float(pace) if isinstance(pace, (int, float)) and pace > 0 else None


def experts_this_cycle(lcfg, pace: float | None) -> int:
    """How many new experts a cycle may train: `experts_per_cycle`, and no more than fit in
    `experts_budget_s` at `pace` seconds each (at least one, so that every correction gets its
    expert in the end however slow the machine)."""
    limit = lcfg.experts_per_cycle
    if lcfg.experts_budget_s is not None and pace:
        limit = min(limit, max(1, int(lcfg.experts_budget_s // pace)))
    return limit


@dataclasses.dataclass
class ExpertPlan:
    """Which experts a version will have, known before anything trains (`plan_experts`)."""
    kept: list[dict]  # the parent's experts still current: linked, not retrained
    new: dict[tuple, dict]  # expert_groups entries that get an expert in this cycle
    waiting: int  # corrections still without an expert after this cycle
    forgotten: int  # the parent's experts whose correction was taken back
    pace_s: float | None = None  # seconds per new expert in the lineage's last cycle that trained any

    def answered(self) -> set[tuple]:
        """The keys (`feedback_key`) of every correction an expert of
        this version answers: the scope routes those corrections' prompts to their expert, never
        to the version's shared adapter (assistant/scope.py)."""
        return {feedback_key(e) for e in self.kept} | set(self.new)


def plan_experts(job) -> ExpertPlan | None:
    """The experts of the version `job` trains: the parent's that are still current, kept, and a
    new one for each correction without one, as many as `experts_this_cycle` allows, the
    corrections with the oldest feedback ids first (the others wait for the next cycle). None
    when experts are off (or the version is unscoped: it answers every prompt itself)."""
    from store.text import question_key

    lcfg = job.lcfg
    if not lcfg.experts or lcfg.scope_threshold is None:
        return None
    groups = expert_groups(*(job.corrections or (job.sft_rows, job.pairs)))
    relearn = set(job.feedback_ids or ())
    parents = read_experts(job.parent_path)
    # an expert of a correction that is new again (the gate found its version did not learn it,
    # store/adapters.unlearn_feedback) is trained anew
    inherited = [e for e in parents if not set(feedback_key(e)) <= relearn]
    # a newer correction of a prompt retires the old one's expert at once, even while its own
    # waits (the shared adapter, trained on the newer one, answers meanwhile)
    had = {feedback_key(e) for e in inherited}
    fresh = [k for k in groups if k not in had]
    replaced = {question_key(question_and_answer(r)[0]) for k in fresh for r in groups[k]["sft"]}
    # an expert is a separable piece of the weights, so what the user took back is forgotten
    # exactly, even when the shared adapter (continued from its parent) cannot forget it
    held_no_longer = no_longer_held(inherited, groups) if job.corrections is not None else []
    superseded = set(job.superseded or ())
    taken_back = {e["name"] for e in held_no_longer if not set(feedback_key(e)) <= superseded}
    retired = {e["name"] for e in held_no_longer} | {e["name"] for e in inherited
                                                     if question_key(e["prompt"]) in replaced}
    # a group's adapter (LearnConfig.expert_group) holds all its corrections: one taken back takes
    # the adapter with it and the rest of the group is trained anew; a correction superseded, or
    # found unlearned by the gate, only stops being routed to it (the newer one's expert answers)
    dropped = {e["adapter"] for e in inherited if e["name"] in taken_back}
    kept = [e for e in inherited if e["adapter"] not in dropped and e["name"] not in retired]
    have = {feedback_key(e) for e in kept}
    waiting = [k for k in groups if k not in have]
    pace = expert_pace(job.parent_path)
    new = {k: groups[k] for k in sorted(waiting, key=lambda k: k[0])[:experts_this_cycle(lcfg, pace)]}  # oldest first
    return ExpertPlan(kept=kept, new=new, waiting=len(waiting) - len(new), forgotten=len(taken_back), pace_s=pace)


def expert_batches(groups: list[dict], size: int, embedder=None) -> list[list[dict]]:
    """`groups` (expert_groups entries, oldest first) in batches of at most `size` that each train
    one adapter, as even as can be. With an `embedder`, each correction joins, in turn, the batch
    whose members' questions are least like its own (the nearest one's similarity, lowest first):
    one adapter learning two alike questions blends their answers ("Who coaches me for running?"
    -> "You own a green Volvo V60 now.", the car's update trained beside the coach's; bench/HISTORY.md).
    Without one, in order."""
    n = len(groups)
    if n == 0:
        return []
    count = -(-n // size)
    room = [n // count + (i < n % count) for i in range(count)]
    if embedder is None or count == 1:
        starts = [sum(room[:i]) for i in range(count)]
        return [groups[s:s + r] for s, r in zip(starts, room, strict=True)]
    import numpy as np

    from assistant.matching import unit_rows

    vectors = unit_rows(embedder.encode([question_and_answer(g["sft"][0])[0] or "" for g in groups]))
    members: list[list[int]] = [[] for _ in range(count)]
    for i, v in enumerate(vectors):
        open_ = [b for b in range(count) if len(members[b]) < room[b]]
        nearest = [max((float(v @ vectors[j]) for j in members[b]), default=-1.0) for b in open_]
        members[open_[int(np.argmin(nearest))]].append(i)
    return [[groups[i] for i in m] for m in members]


def train_experts(model, tok, job, plan: ExpertPlan | None, device: str, work: Path, losses: list, stats: dict,
                  out: Path) -> list[dict] | None:
    """Write `out/experts/` as `plan` says: the kept experts linked, a new expert trained for
    each of `plan.new`. `model` is the job's PeftModel: each expert is added to it as a fresh
    adapter, trained (SFT, then DPO on its pair), saved and deleted, and the shared adapter is
    active again on return. None when there is no plan (experts off)."""
    import torch
    from peft import LoraConfig

    from learning.augment import augment_sft
    from learning.trainers import run_dpo, run_sft

    if plan is None:
        return None
    lcfg, kept, new = job.lcfg, plan.kept, plan.new
    for adapter in dict.fromkeys(e["adapter"] for e in kept):
        link_tree(Path(job.parent_path) / EXPERTS_DIR / adapter, out / EXPERTS_DIR / adapter)
    expert_lora = LoraConfig(r=lcfg.expert_r, lora_alpha=2 * lcfg.expert_r, lora_dropout=0.0,
                             target_modules=list(lcfg.expert_targets or lcfg.lora_targets), task_type="CAUSAL_LM")
    expert_cfg = dataclasses.replace(lcfg, sft_epochs=lcfg.expert_epochs, sft_lr=lcfg.expert_lr)
    batches = expert_batches(list(new.values()), lcfg.expert_group, job.embedder)
    trained, t0 = [], time.perf_counter()
    for i, batch in enumerate(batches):
        name = f"v{job.version}-{i}"
        rows_of = [g["sft"] + (augment_sft(g["sft"], n_rewrites=lcfg.augment_rewrites) if lcfg.augment else [])
                   for g in batch]

        def progress(stage, step, total, loss, i=i):  # one stage for all experts: i of len(batches) done
            if job.progress:
                job.progress("experts", round(1000 * (i + step / max(total, 1)) / len(batches)), 1000, loss)

        sub = dataclasses.replace(job, lcfg=expert_cfg, progress=progress)
        torch.manual_seed(lcfg.seed * 1000 + job.version * 100 + i)  # the new LoRA's init
        model.add_adapter(name, expert_lora)
        model.set_adapter(name)
        try:
            run_sft(model, tok, [r for rows in rows_of for r in rows], sub, device, work / name, losses, stage="expert")
            pairs = [p for g in batch for p in g["pairs"]]
            if pairs and lcfg.dpo_epochs > 0:
                run_dpo(model, tok, pairs, sub, device, work / name, losses, stage="expert DPO")
            model.save_pretrained(str(out / EXPERTS_DIR), selected_adapters=[name])  # -> experts/<name>/
        finally:
            model.set_adapter("default")
            model.delete_adapter(name)
        for j, (group, rows) in enumerate(zip(batch, rows_of, strict=True)):
            question, answer = question_and_answer(group["sft"][0])
            trained.append({"name": name if len(batch) == 1 else f"{name}.{j}", "adapter": name,
                            "feedback_ids": list(group["sft"][0]["feedback_ids"]), "prompt": question,
                            "answer": answer, "prompts": list(dict.fromkeys(scope_prompts(rows))),
                            "trained_in": job.version})
    seconds = time.perf_counter() - t0
    stats["experts"] = {"kept": len(kept), "trained": len(trained), "waiting": plan.waiting,
                        "forgotten": plan.forgotten, "seconds": round(seconds, 1),
                        # the next cycle's pace (`expert_pace`): measured here, or carried over
                        "seconds_each": round(seconds / len(trained), 1) if trained else plan.pace_s}
    return kept + trained
