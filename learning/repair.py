"""A candidate keeps the incumbent's expert for an earlier correction it lost.

Why: a cycle retrains some earlier corrections (a take-back retrains the rest of its group,
learning/experts.py), and a retrained group can lose one of them while everything new is
learned. The gate then rejected the whole candidate: season run 2's cycle 5 learned 11/11 new
corrections and kept 43/44 earlier ones, so nothing went live (bench/results/season-latest.md).
The incumbent still holds weights that answer the lost correction right. Pointing the
candidate's entry for that correction at the incumbent's adapter (hard-linked, no disk) gives
the candidate both, and the gate then judges the repaired candidate on the same items.

An incumbent adapter that also learned feedback taken back since (deleted, don't-learn,
quarantined, replaced) is never reused: its weights still hold that feedback. A correction the
candidate retrained for that reason (the rest of a take-back's group, learning/experts.py) and
lost is not held against it: rejecting the candidate would keep the taken-back feedback in the
live weights. Its entry is dropped, so the next cycle trains it anew, and recall answers it
meanwhile; the gate reports it as relearning.

Contract: `lost_corrections(evidence)` -> the feedback ids of the retention items the incumbent
carried and the candidate did not (learning/evaluate.py's "items"). `repair_lost(db,
candidate_path, incumbent_path, lost)` -> `Repair(kept, relearning)`: the candidate's meta.json
rewritten (stats "experts" "kept_from_incumbent", "relearning"); when anything changed it must be
evaluated again, and `excuse_relearning(metrics, evidence, relearning)` then adjusts the gate's
retention counts.
"""
import dataclasses
import logging
from pathlib import Path

from store import feedback
from store.manifest import EXPERTS_DIR, has_weights, link_tree, read_manifest, write_manifest

log = logging.getLogger(__name__)


def lost_corrections(evidence: list[dict]) -> list[str]:
    return [it["id"] for it in evidence if it.get("kind") == "retention"
            and it["incumbent"]["passed"] and not it["candidate"]["passed"]]


@dataclasses.dataclass
class Repair:
    kept: list[str]  # lost corrections whose candidate entry now names the incumbent's adapter
    relearning: list[str]  # lost ones the incumbent's adapter cannot give back (it holds feedback
    # taken back since): their entry is dropped, so the next cycle trains them anew; recall
    # answers them meanwhile

    def __bool__(self) -> bool:
        return bool(self.kept or self.relearning)


def repair_lost(db, candidate_path, incumbent_path, lost: list[str]) -> Repair:
    """See the module docstring; the candidate's meta.json is rewritten when anything changed."""
    none = Repair([], [])
    if not lost or not incumbent_path:
        return none
    candidate, incumbent = read_manifest(candidate_path), read_manifest(incumbent_path)
    if candidate.experts is None or not incumbent.experts:
        return none
    groups: dict[str, list[str]] = {}  # incumbent adapter directory -> every feedback id it learned
    for e in incumbent.experts:
        groups.setdefault(e.directory, []).extend(e.feedback_ids)
    entries, done = list(candidate.experts), Repair([], [])
    for fid in lost:
        old = next((e for e in incumbent.experts if fid in e.feedback_ids), None)
        if old is None or not has_weights(Path(incumbent_path) / EXPERTS_DIR / old.directory):
            continue  # the incumbent answered it with its shared adapter: nothing to keep apart
        at = next((i for i, e in enumerate(entries) if fid in e.feedback_ids), None)
        if at is not None and entries[at].directory == old.directory:
            continue  # the same weights: the candidate lost it by routing, not by training
        if feedback.taken_back(db, groups[old.directory]):
            if at is not None and entries[at].trained_in == candidate.version:  # retrained for that
                del entries[at]
                done.relearning.append(fid)
            continue
        target = Path(candidate_path) / EXPERTS_DIR / old.directory
        if not has_weights(target):  # else the candidate kept it for the correction's group-mates
            link_tree(Path(incumbent_path) / EXPERTS_DIR / old.directory, target)
        entry = dataclasses.replace(old, adapter=old.directory)
        if at is None:
            entries.append(entry)
        else:
            entries[at] = entry
        done.kept.append(fid)
    if done:
        experts = {**(candidate.stats.get("experts") or {}), "kept_from_incumbent": done.kept,
                   "relearning": done.relearning}
        write_manifest(candidate_path, dataclasses.replace(candidate, experts=entries,
                                                           stats={**candidate.stats, "experts": experts}))
        log.info("lost corrections: the incumbent's expert kept for %s; trained anew next cycle: %s",
                 done.kept, done.relearning)
    return done


def excuse_relearning(metrics: dict, evidence: list[dict], relearning: list[str]) -> None:
    """The gate's retention counts of `metrics` (the candidate's) with the `relearning` ones it
    lost moved from "lost" to "relearning" (learning/gate.py reports them)."""
    lost = set(lost_corrections(evidence)) & set(relearning)
    if lost:
        retention = metrics["retention"]
        retention["lost"] -= len(lost)
        retention["relearning"] = len(lost)
