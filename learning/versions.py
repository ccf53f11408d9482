"""Adapter versions as the user sees them: the table, promotion, rollback, the state of each
correction, side-by-side comparison, the metrics plot and `assistant adapters ...`.

Contract: every change of the live version goes through `store.adapters.activate` (one
transaction; never two active versions), so a running server picks it up on its next request.
`promote` refuses a version without a passing gate decision unless `force`; `rollback` goes back to the parent
of the active version (or the base model) or to any version that served before, and can
quarantine the feedback that trained the version rolled back from. Refusals raise
`VersionError` (a ValueError) with the reason in words; a broken adapter directory raises
`AdapterLoadError` before anything changes (`AdapterWeightsDeleted` for a version whose weights
`prune_weights` deleted; deleting old versions' weights is learning/pruning.py's). The base
model is version None (0 or "base" in `rollback` and on the command line).
"""
from pathlib import Path

from assistant.errors import AdapterLoadError
from assistant.model import validate_adapter_dir
from learning.pruning import prune_weights, weights_text
from store import adapters, feedback
from store.conversations import NotFound

BASE_NAMES = (0, "0", "base")


class VersionError(ValueError):
    """A promotion or rollback that is refused, with the reason."""


def _name(version: int | None) -> str:
    return "the base model" if version is None else f"v{version}"


def _last_decision(db, version: int) -> dict | None:
    decisions = adapters.decisions_for(db, version)
    return decisions[-1] if decisions else None


def metrics_line(m: dict | None) -> str:
    """'taught 11/12, kept 40/40, canaries 38/38, pref 0.71' from evaluate's metrics."""
    if not m:
        return ""
    parts = []
    for key, label in (("taught", "taught"), ("retention", "kept"), ("canary", "canaries")):
        f = m.get(key) or {}
        if f.get("total"):
            parts.append(f"{label} {f['passed']}/{f['total']}")
    acc = (m.get("preference") or {}).get("accuracy")
    if acc is not None:
        parts.append(f"pref {acc:.2f}")
    return ", ".join(parts)


# ---- the table ----------------------------------------------------------------------------
def _scope_text(scope: dict | None, habits: dict | None = None, experts: list | None = None) -> str:
    if not scope or scope.get("threshold") is None:
        return "every prompt"
    near = f"similarity >= {scope['threshold']}"
    if scope.get("margin") is not None:
        near += f", or {scope['margin']} above ordinary requests"
    parts = [f"{len(scope.get('prompts') or [])} trained prompts ({near})"]
    if experts:
        parts.append(f"{len(experts)} corrections answered by their own expert")
    habit = ", ".join(f'"{h}"' for h in (habits or {}).get("openings", []))
    if habit:
        parts.append(f"elsewhere answers open like {habit}")
    closing = ", ".join(f'"{h}"' for h in (habits or {}).get("closings", []))
    if closing:
        parts.append(f"answers end with {closing}")
    formats = ", ".join(f'"{h} ..."' for h in (habits or {}).get("formats", []))
    if formats:
        parts.append(f"answers are lists like {formats}")
    return "; ".join(parts)


def versions_table(db) -> list[dict]:
    """One row per version, oldest first: status, lineage, what trained it, its numbers beside
    the incumbent's at gate time, and the gate's verdict and reasons in words."""
    rows = []
    for a in adapters.list_adapters(db):
        last = _last_decision(db, a["version"])
        evidence = last["evidence"] if last else {}
        timings = (a["meta"] or {}).get("timings") or {}
        rows.append({
            "version": a["version"], "status": a["status"], "parent": a["parent_version"],
            "created_at": a["created_at"], "weights": weights_text(Path(a["path"])),
            "train_s": round(sum(v for k, v in timings.items() if k.endswith("_s")), 1) if timings else None,
            "n_corrections": a["n_corrections"], "n_votes": a["n_votes"],
            "scope": _scope_text(*((a["meta"] or {}).get(k) for k in ("scope", "habits", "experts"))),
            "metrics": metrics_line(evidence.get("candidate") or a["metrics"]),
            "incumbent": None if not last else _name(last["incumbent_version"]),
            "incumbent_metrics": metrics_line(evidence.get("incumbent")),
            "gate": None if not last else ("passed" if last["passed"] else "failed"),
            "reasons": "; ".join(last["reasons"]) if last else "not judged by the gate",
        })
    return rows


# ---- promotion and rollback ---------------------------------------------------------------
def promote(db, version: int, force: bool = False) -> dict:
    """Make `version` live. Refuses (VersionError) a version without a passing gate decision
    (failed, or never judged: the gate was unavailable or its cycle died) unless `force`;
    raises NotFound for an unknown version, AdapterLoadError for a broken directory."""
    row = adapters.get_adapter(db, version)
    before = adapters.active_version(db)
    if row["status"] == "active":
        return {"version": version, "previous": before, "forced": False, "changed": False}
    last = _last_decision(db, version)
    unproven = not (last and last["passed"])
    if unproven and not force:
        why = f"did not pass the gate ({'; '.join(last['reasons'])})" if last else "was never judged by the gate"
        raise VersionError(f"v{version} {why}; promote it with force (--yes) to override")
    validate_adapter_dir(Path(row["path"]))
    adapters.activate(db, version)
    return {"version": version, "previous": before, "forced": unproven, "changed": True}


def rollback(db, version: int | str | None = None, quarantine: bool = False) -> dict:
    """Go back to `version` (default: the parent of the active version, or the base model;
    0 or "base": the base model). Only a version that served before (retired) can be the
    target. With `quarantine`, the feedback that trained the version rolled back from is kept
    out of every later cycle. Returns {"from", "to", "quarantined"}."""
    current = adapters.active_adapter(db)
    if version is None:
        if current is None:
            raise VersionError("the base model is already serving: there is nothing to roll back")
        target = current["parent_version"]
    else:
        target = None if version in BASE_NAMES else int(version)
    if target is not None:
        row = adapters.get_adapter(db, target)
        if row["status"] in ("candidate", "rejected"):
            raise VersionError(f"v{target} never served (it is {row['status']}): promote it instead")
        validate_adapter_dir(Path(row["path"]))
    before, quarantined = current and current["version"], 0
    if before != target:
        adapters.activate(db, target)
        if quarantine and before is not None:
            quarantined = feedback.quarantine(db, adapters.lineage_feedback(db, before))
    return {"from": before, "to": target, "quarantined": quarantined}


# ---- corrections --------------------------------------------------------------------------
def _lineage(db, version: int | None) -> set[int]:
    out = set()
    while version is not None:
        out.add(version)
        version = adapters.get_adapter(db, version)["parent_version"]
    return out


def _carried(decision: dict, feedback_id: str) -> bool | None:
    for item in decision["evidence"].get("items", []):
        if item.get("id") == feedback_id and "candidate" in item and "passed" in item["candidate"]:
            return bool(item["candidate"]["passed"])
    return None


def correction_states(db) -> list[dict]:
    """Each correction, newest first: pending / learned (by which version) / not learned (why),
    from the lineage of every version and the gate's decisions and evidence."""
    versions = {a["version"]: a for a in adapters.list_adapters(db)}
    live = _lineage(db, adapters.active_version(db))
    trained_by: dict[str, list[int]] = {}
    for r in db.query("SELECT feedback_id, version FROM adapter_feedback ORDER BY version"):
        trained_by.setdefault(r["feedback_id"], []).append(r["version"])
    rows = list(db.query(
        "SELECT f.id, f.correction, f.quarantined, f.superseded_by, f.created_at, t.user_message, c.no_learn "
        "FROM feedback f JOIN turns t ON t.id = f.turn_id JOIN conversations c ON c.id = t.conversation_id "
        "WHERE f.kind = 'correction' ORDER BY f.id DESC"))
    answers = {r["id"]: r["correction"] for r in rows}
    out = []
    for r in rows:
        state, version, why = _state(db, r, answers, trained_by.get(r["id"], []), versions, live)
        out.append({"feedback_id": r["id"], "created_at": r["created_at"], "prompt": r["user_message"],
                    "correction": r["correction"], "state": state, "version": version, "detail": why,
                    "superseded_by": r["superseded_by"]})
    return out


def _clip(text: str | None, limit: int = 80) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _state(db, r, answers, trained, versions, live) -> tuple[str, int | None, str]:
    if r["quarantined"]:
        return "not learned", None, "quarantined by a rollback"
    if r["no_learn"]:
        return "not learned", None, "the conversation is marked don't-learn"
    if r["superseded_by"]:
        return "superseded", None, f"superseded by a later correction: \"{_clip(answers.get(r['superseded_by']))}\""
    served = [v for v in trained if versions[v]["status"] in ("active", "retired")]
    in_live = [v for v in served if v in live]
    if in_live:
        return "learned", in_live[0], f"learned by v{in_live[0]}, which is live"
    if served:
        return "learned", served[0], f"learned by v{served[0]}, which is no longer live (rolled back)"
    if not trained:
        return "pending", None, "waits for the next learning cycle"
    v = trained[-1]
    if versions[v]["status"] == "candidate":
        return "pending", v, f"v{v} is trained and waits for a decision"
    last = _last_decision(db, v)
    failed = [x for x in (last["reasons"] if last else []) if x.startswith("FAILED")]
    carried = _carried(last, r["id"]) if last else None
    how = {True: "it carried this correction", False: "it did not carry this correction",
           None: "no evidence for this correction"}[carried]
    return "not learned", v, f"v{v} was rejected by the gate ({how}; {'; '.join(failed) or 'see its reasons'})"


# ---- compare and plot -----------------------------------------------------------------------
def compare(runtime, version_a: int | None, version_b: int | None, prompts: list[str], **settings) -> list[dict]:
    """Two versions' replies (None: base) side by side, each prompt as the first message of a
    new chat, by the chat's own path (`ChatService.preview`): the same weights, prompt and
    settings give the chat's reply. `settings` (recall, max_new_tokens, temperature) default
    to the chat's."""
    rows = []
    for p in prompts:
        a, b = (runtime.chat.preview(p, v, **settings) for v in (version_a, version_b))
        rows.append({"prompt": p, _name(version_a): a.generation.text, _name(version_b): b.generation.text,
                     "same": a.generation.text == b.generation.text,
                     "recalled": len(a.recalled)})  # the prompt's notes, the same for both sides
    return rows


PLOTTED = (("taught", "new corrections learned"), ("retention", "earlier corrections kept"),
           ("canary", "canaries"), ("preference", "held-out preference accuracy"))


def metrics_plot(db, path) -> Path:
    """A PNG of each version's gate metrics (as fractions) across versions; rejected versions
    are drawn hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(a, (_last_decision(db, a["version"]) or {}).get("evidence", {}).get("candidate") or a["metrics"])
            for a in adapters.list_adapters(db)]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for key, label in PLOTTED:
        xs, ys, hollow = [], [], []
        for a, m in rows:
            f = (m or {}).get(key) or {}
            y = f.get("accuracy") if key == "preference" else (
                f["passed"] / f["total"] if f.get("total") else None)
            if y is not None:
                xs.append(a["version"])
                ys.append(y)
                hollow.append(a["status"] == "rejected")
        if xs:
            line, = ax.plot(xs, ys, "-", label=label, alpha=0.7)
            ax.scatter(xs, ys, s=36, zorder=3, edgecolors=line.get_color(),
                       facecolors=["none" if h else line.get_color() for h in hollow])
    ax.set_xlabel("adapter version (hollow: rejected by the gate)")
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks([a["version"] for a, _ in rows] or [0])
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- the command line ---------------------------------------------------------------------
def cmd_adapters(cfg, args) -> int:
    """`assistant adapters list | show V | promote V [--yes] | rollback [V] [--quarantine] |
    prune [--keep N]`."""
    from store import open_db

    db = open_db(cfg.db_path)
    try:
        return _ACTIONS[args.action](db, args)
    except (NotFound, VersionError, AdapterLoadError) as e:
        print(f"error: {e}")
        return 1


def _list(db, args) -> int:
    rows = versions_table(db)
    if not rows:
        print("no adapter versions yet: the base model alone is answering")
        return 0
    print(f"{'ver':>4} {'status':<9} {'parent':>6} {'corr':>4} {'votes':>5} {'gate':<6} {'weights':<7} metrics")
    for r in rows:
        print(f"{'v' + str(r['version']):>4} {r['status']:<9} {_name(r['parent']) if r['parent'] else '-':>6} "
              f"{r['n_corrections'] or 0:>4} {r['n_votes'] or 0:>5} {r['gate'] or '-':<6} {r['weights']:<7} "
              f"{r['metrics']}")
    return 0


def _show(db, args) -> int:
    row = next((r for r in versions_table(db) if r["version"] == args.version), None)
    if row is None:
        raise NotFound(f"adapter version {args.version} does not exist")
    for key, value in row.items():
        print(f"{key:>17}: {'' if value is None else value}")
    states = [s for s in correction_states(db) if s["version"] == args.version]
    for s in states:
        print(f"  [{s['state']}] {s['prompt'][:60]!r} -> {s['correction'][:60]!r}: {s['detail']}")
    return 0


def _promote(db, args) -> int:
    result = promote(db, args.version, force=args.yes)
    if not result["changed"]:
        print(f"v{args.version} is already active")
    else:
        forced = " (gate overridden)" if result["forced"] else ""
        print(f"v{args.version} is now active{forced}; it was {_name(result['previous'])}")
    _warn_taken_back(db, args.version)
    return 0


def _warn_taken_back(db, version: int | None) -> None:
    """The Versions tab's warning (learning/held.py), on the command line too."""
    from learning.held import warning

    said = warning(db, version) if version is not None else ""
    if said:
        print(said)


def _rollback(db, args) -> int:
    result = rollback(db, args.version, quarantine=args.quarantine)
    if result["from"] == result["to"]:
        print(f"{_name(result['to'])} is already active")
        return 0
    print(f"rolled back from {_name(result['from'])} to {_name(result['to'])}")
    if args.quarantine:
        print(f"quarantined {result['quarantined']} feedback item(s) that trained {_name(result['from'])}")
    _warn_taken_back(db, result["to"])
    return 0


def _prune(db, args) -> int:
    from learning.config import load_learn_config

    keep = args.keep if args.keep is not None else load_learn_config(db).keep_versions
    if keep is None:
        raise VersionError("the learn config keeps every version's weights (keep_versions is None): "
                           "say how many to keep with --keep N")
    if keep < 0:
        raise VersionError(f"--keep must be >= 0 (got {keep})")
    pruned = prune_weights(db, keep)
    print(f"deleted the weights of {', '.join(f'v{v}' for v in pruned)}" if pruned else
          "nothing to delete: only the newest versions, the active one and its parent have weights")
    return 0


_ACTIONS = {"list": _list, "show": _show, "promote": _promote, "rollback": _rollback, "prune": _prune}
