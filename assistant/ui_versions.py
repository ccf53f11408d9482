"""The versions tab's handlers: the adapter table and plot, promote (with a confirmation when
the gate failed), rollback (optionally quarantining what trained the bad version), a side-by-side
compare, and the state of each of the user's corrections.

Contract: plain functions of a Runtime. `learning.versions` is imported inside the handlers;
without it the tab says so and the chat keeps working. Version choices use "base" for the base
model alone (an adapter version is a positive int).
"""
import re

import gradio as gr
import pandas as pd

from assistant.model import weights_deleted
from store import adapters, conversations

UNAVAILABLE = ("⚠ Version management is not available in this installation "
               "(learning.versions could not be imported).")
BASE = "base"


def _versions():
    try:
        from learning import versions
    except ImportError:
        return None
    return versions


ISO_TIME = re.compile(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d)")
VERSION_HEADERS = {"created_at": "trained at", "train_s": "training (s)", "n_corrections": "corrections",
                   "n_votes": "votes", "scope": "answers", "incumbent_metrics": "incumbent's metrics"}
# The decision and its reasons first: the user reads a table from the left, and the wide
# columns after them (scope, metrics) used to push the reasons two screens sideways.
VERSION_ORDER = ("version", "status", "decision", "reasons", "metrics", "incumbent", "incumbent_metrics",
                 "scope", "n_corrections", "n_votes", "created_at", "train_s", "parent", "weights")
CORRECTION_HEADERS = {"created_at": "corrected at", "feedback_id": "id"}
NO_VERSIONS = ("**No versions yet**: the base model alone is answering. A version appears here after "
               "the first learning cycle (Learning tab).")
NO_CORRECTIONS = "No corrections yet: correct an answer in the chat (✎) and it is listed here."


def _cell(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "; ".join(str(_cell(v)) for v in value)
    if isinstance(value, str) and ISO_TIME.match(value):
        return ISO_TIME.sub(r"\1 \2", value)[:16]
    return "" if value is None else value


def frame(rows: list[dict], headers: dict | None = None) -> pd.DataFrame:
    """Rows of dicts as a table whose cells read as words (nested values flattened, times
    to the minute, headers in words)."""
    headers = headers or {}
    return pd.DataFrame([{headers.get(k, k.replace("_", " ")): _cell(v) for k, v in r.items()}
                         for r in rows]) if rows else pd.DataFrame()


def version_rows(rows: list[dict]) -> list[dict]:
    """versions_table rows with the gate's verdict in words and the columns in reading order."""
    out = []
    for r in rows:
        r = {**r, "decision": {"passed": "passed the gate", "failed": "rejected by the gate"}.get(
            r.get("gate"), "not judged")}
        out.append({k: r[k] for k in VERSION_ORDER if k in r} | {
            k: v for k, v in r.items() if k not in VERSION_ORDER and k != "gate"})
    return out


def shown(table: pd.DataFrame):
    """A table update that hides an empty table: Gradio draws an empty one as headers "1 | 2 | 3"."""
    return gr.update(value=table, visible=not table.empty)


def version_of(choice) -> int | None:
    if choice in (None, "", BASE):
        return None
    return int(choice)


def _label(v: int, status: str, db=None) -> str:
    """'v2 (retired)', with a ⚠ when its weights hold feedback taken back since (learning/held.py):
    the warning is seen before the version is chosen, not only after it went live."""
    held = _held()
    mark = " ⚠ holds feedback you took back" if db is not None and held and held.marked(db, v) else ""
    return f"v{v} ({status}){mark}"


def _held():
    try:
        from learning import held
    except ImportError:
        return None
    return held


def held_warning(db, version: int | None) -> str:
    """learning.held.warning, or "" without the learner."""
    held = _held()
    return held.warning(db, version) if held and version is not None else ""


def _picker(choices: list, nothing: str) -> tuple:
    """(drop-down update, its column's visibility, the "nothing to do" line): no empty drop-downs."""
    return (gr.update(choices=choices, value=None), gr.update(visible=bool(choices)),
            gr.update(value="" if choices else nothing, visible=not choices))


def view(runtime, plot_path=None) -> dict:
    """The whole tab as named updates (ui.py maps the names to components): table, empty,
    plot, corrections, no_corrections, promote (+ _box, _none), rollback (+ _box, _none),
    compare (choices for both compare drop-downs), prompts, notice."""
    db = runtime.db
    rows = adapters.list_adapters(db)
    active = adapters.active_version(db)
    # A version whose weights were deleted to save disk stays in the table but cannot serve.
    loadable = [r for r in rows if not weights_deleted(r["path"])]
    promote_choices = [(_label(r["version"], r["status"], db), str(r["version"])) for r in loadable
                       if r["status"] != "active"]
    everything = [("base model (no adapter)", BASE)] + [
        (_label(r["version"], r["status"]), str(r["version"])) for r in loadable]
    # Only a version that served before can be rolled back to (candidates are promoted instead);
    # the base model only while a version is active.
    rollback_choices = ([("base model (no adapter)", BASE)] if active is not None else []) + [
        (_label(r["version"], r["status"], db), str(r["version"])) for r in loadable if r["status"] == "retired"]
    out = {"prompts": "\n".join(recent_prompts(db)), "compare": gr.update(choices=everything)}
    for name, choices, nothing in (
            ("promote", promote_choices, "Nothing to promote: no version is waiting, rejected or retired."),
            ("rollback", rollback_choices, "Nothing to roll back to: " + (
                "the base model is answering and no version served before." if active is None
                else "no earlier version served."))):
        out[name], out[name + "_box"], out[name + "_none"] = _picker(choices, nothing)
    versions = _versions()
    table, corrections, notice = pd.DataFrame(), pd.DataFrame(), ""
    if versions is None:
        notice = UNAVAILABLE
    else:
        try:
            table = frame(version_rows(versions.versions_table(db)), VERSION_HEADERS)
            corrections = frame(versions.correction_states(db), CORRECTION_HEADERS)
        except Exception as e:  # noqa: BLE001 - show why, keep the rest of the tab usable
            notice = f"⚠ Could not read versions: {e}"
    plot = None
    if rows and plot_path is not None and versions is not None:
        try:
            plot = str(versions.metrics_plot(db, plot_path))
        except Exception as e:  # noqa: BLE001
            notice = notice or f"⚠ Could not draw the metrics plot: {e}"
    out.update(table=shown(table), empty=gr.update(visible=not rows and not notice),
               plot=gr.update(value=plot, visible=plot is not None), corrections=shown(corrections),
               no_corrections=gr.update(visible=corrections.empty), notice=notice)
    return out


def recent_prompts(db, n: int = 5) -> list[str]:
    seen, out = set(), []
    for t in conversations.recent_turns(db, limit=50):
        msg = " ".join((t["user_message"] or "").split())
        if msg and msg not in seen and len(msg) <= 500:
            seen.add(msg)
            out.append(msg)
        if len(out) == n:
            break
    return out


def gate_verdict(db, version: int) -> tuple[bool, list[str]]:
    """(passed?, reasons) of the latest gate decision about `version` (never judged: not passed)."""
    decisions = adapters.decisions_for(db, version)
    if not decisions:
        return False, ["the gate has not judged this version"]
    last = decisions[-1]
    return bool(last["passed"]), list(last["reasons"])


def promote(runtime, choice, confirmed: bool = False):
    """-> (notice, confirmation row visibility). A version the gate failed needs `confirmed`."""
    versions = _versions()
    if versions is None:
        return UNAVAILABLE, gr.update(visible=False)
    if choice in (None, "", BASE):
        return "⚠ Choose a version to promote.", gr.update(visible=False)
    version = int(choice)
    try:
        passed, reasons = gate_verdict(runtime.db, version)
        if not passed and not confirmed:
            return (f"⚠ The gate did not pass v{version}: " + "; ".join(reasons)
                    + ". Promote it anyway?"), gr.update(visible=True)
        versions.promote(runtime.db, version, force=not passed)
    except Exception as e:  # noqa: BLE001 - unknown version, refused adapter: say why
        return f"⚠ Could not promote v{version}: {e}", gr.update(visible=False)
    forced = " (gate overridden)" if not passed else ""
    return _with(f"✓ v{version} is now active{forced}; the chat uses it from the next message.",
                 held_warning(runtime.db, version)), gr.update(visible=False)


def _with(notice: str, warning: str) -> str:
    return f"{notice}\n\n{warning}" if warning else notice


def rollback(runtime, choice, quarantine: bool):
    versions = _versions()
    if versions is None:
        return UNAVAILABLE
    if choice in (None, ""):
        return "⚠ Choose the version to roll back to."
    target = version_of(choice)
    try:
        # learning.versions reads 0 as the base model (None would mean "the active one's parent").
        done = versions.rollback(runtime.db, 0 if target is None else target, quarantine=bool(quarantine))
    except Exception as e:  # noqa: BLE001 - refused (never served, broken directory): say why
        return f"⚠ Could not roll back: {e}"
    now = "the base model alone" if target is None else f"v{target}"
    extra = ""
    if done.get("quarantined"):
        extra = (f" {done['quarantined']} feedback item(s) that trained v{done['from']} are quarantined: "
                 "no later cycle learns them.")
    return _with(f"↩ Rolled back: {now} answers from the next message.{extra}", held_warning(runtime.db, target))


def compare(runtime, candidate, other, prompts_text):
    """Side by side on the given prompts (one per line), with the chat's settings. -> (table, notice)"""
    versions = _versions()
    if versions is None:
        return shown(pd.DataFrame()), UNAVAILABLE
    prompts = [p.strip() for p in str(prompts_text or "").splitlines() if p.strip()]
    if not prompts:
        return shown(pd.DataFrame()), "⚠ Give at least one prompt (one per line)."
    if candidate in (None, ""):
        return shown(pd.DataFrame()), "⚠ Choose a version to compare."
    a = version_of(candidate)
    b = adapters.active_version(runtime.db) if other in (None, "") else version_of(other)
    try:
        rows = versions.compare(runtime, a, b, prompts[:10])
    except Exception as e:  # noqa: BLE001
        return shown(pd.DataFrame()), f"⚠ Could not compare: {e}"
    name = lambda v: "base" if v is None else f"v{v}"  # noqa: E731
    return shown(frame(rows)), (f"{name(a)} vs {name(b)} on {len(prompts[:10])} prompt(s). "
                                + compare_terms(runtime.cfg, sum(bool(r["recalled"]) for r in rows)))


def compare_terms(cfg, recalling: int) -> str:
    """What Compare's replies share with the chat's, and what can still differ, in words: it
    answers with the chat's settings, but each prompt as a new chat's first message."""
    said = [f"Answered as the chat answers a new chat's first message: your system prompt, "
            f"up to {cfg.default_max_new_tokens} tokens, recall {'on' if cfg.recall else 'off'}"]
    if cfg.recall and recalling:
        said[0] += f" ({recalling} prompt(s) recalled a note, for both sides)"
    said[0] += "."
    if cfg.default_temperature > 0:
        said.append(f"Temperature {cfg.default_temperature:g} samples: a reply can differ from the chat's "
                    "and from one run to the next; at temperature 0 the chat says the same.")
    said.append("In a conversation the chat also reads the earlier messages, so its reply there can differ.")
    return " ".join(said)
