"""The learning tab's handlers: "Learn now", the status of the latest cycle, cancel.

Contract: plain functions of a Runtime (tests call them directly). `learning.control` is
imported inside each handler, never at module import: the chat must start without the
training stack, and if the learner is missing the tab says so instead of failing.
`status_view` returns (stage markdown, progress-bar HTML, loss figure|None, cancel visible).
"""
import functools
import html

import gradio as gr

UNAVAILABLE = "⚠ The learner is not available in this installation (learning.control could not be imported)."
OPTIONAL = ("habit", "experts")  # listed only in cycles that reach them


def _control():
    try:
        from learning import control
    except ImportError:
        return None
    return control


def _act(action, doing: str) -> str:
    """Run `action(control)` and turn the outcome, or why it failed, into a sentence."""
    control = _control()
    if control is None:
        return UNAVAILABLE
    try:
        return action(control)
    except control.AlreadyRunning:
        return "A learning cycle is already running: watch it below, or cancel it first."
    except Exception as e:  # noqa: BLE001 - e.g. nothing to learn yet: say it, don't break the page
        return f"⚠ Could not {doing}: {e}"


def learn_now(runtime) -> str:
    return _act(lambda c: f"Learning cycle started (job {c.start_cycle(runtime.cfg)}).",
                "start a learning cycle")


def cancel(runtime) -> str:
    return _act(lambda c: "Cancel requested: the cycle stops within a few seconds; nothing it did so far is kept."
                if c.cancel(runtime.db) else "No learning cycle is running.", "cancel")


def status_view(runtime):
    control = _control()
    if control is None:
        return UNAVAILABLE, "", None, gr.update(visible=False)
    try:
        st = control.status(runtime.db)
    except Exception as e:  # noqa: BLE001 - a status glitch must not stop the timer
        return f"⚠ Could not read the learner status: {e}", "", None, gr.update(visible=False)
    if not st:
        return ("No learning cycle has run yet. Give feedback in the chat, then press **Learn now** "
                "(cycles also start by themselves when enough feedback has accumulated).",
                "", None, gr.update(visible=False))
    running = st.get("status") == "running"
    return status_markdown(st), progress_html(st), losses_figure(st.get("losses") or []), \
        gr.update(visible=running)


def status_markdown(st: dict) -> str:
    from learning.progress import STAGES  # the cycle's stages, in order (no training library)

    status = st.get("status") or "unknown"
    result = st.get("result") or {}
    stage = st.get("stage") or "starting"
    lines = [headline(status, stage, result)]
    # habit and experts are optional (LearnConfig): listed only in cycles that reach them
    ran = {stage} | {x.get("stage") for x in st.get("losses") or []}
    steps = " → ".join(f"**{s}**" if s == stage else s for s in STAGES if s not in OPTIONAL or s in ran)
    lines.append(f"Stages: {steps}")
    if st.get("started_at"):
        lines.append(f"Started {st['started_at']}" + (f", ended {st['ended_at']}" if st.get("ended_at") else ""))
    if st.get("error") and status != "cancelled":
        lines.append(f"**Error:** {st['error']}")
    if result.get("reasons"):
        lines.append("The gate's reasons:\n" + "\n".join(f"- {r}" for r in result["reasons"]))
    if result.get("summary"):
        lines.append(str(result["summary"]))
    return "\n\n".join(lines)


def headline(status: str, stage: str, result: dict) -> str:
    """The first line: for a finished cycle, whether a new version went live (a cycle whose
    candidate the gate rejected has still "succeeded" as a job, which is not what the user asks)."""
    v = result.get("version")
    name = f"v{v}" if v is not None else "the new version"
    if status == "succeeded":
        outcome = result.get("status")
        if outcome == "active":
            return f"✓ **{name} is live**: it passed the gate and answers from the next message."
        if outcome == "rejected":
            return f"✗ **No new version went live**: the gate rejected {name}; the previous version keeps answering."
        if outcome == "candidate":
            return f"• **{name} was trained but is not live**: {result.get('message') or 'promote it in Versions'}."
        if result.get("skipped"):
            return f"■ **Nothing new to learn**: {result.get('message') or 'no new feedback'}."
        return f"✓ **Finished** — {result.get('message') or 'stage: ' + stage}"
    if status == "running":
        return f"… **Running** — stage: **{stage}**"
    if status == "cancelled":
        return f"■ **Cancelled** during {stage}: nothing changed, the previous version keeps answering."
    if status == "failed":
        return f"✗ **Failed** during {stage}: nothing changed, the previous version keeps answering."
    return f"• **{status.capitalize()}** — stage: **{stage}**"


def progress_html(st: dict) -> str:
    p = st.get("progress")
    p = 1.0 if p is None and st.get("status") == "succeeded" else float(p or 0.0)
    p = min(max(p, 0.0), 1.0)
    eta = st.get("eta_s")
    tail = f" · about {format_eta(eta)} left" if st.get("status") == "running" and eta else ""
    color = {"failed": "#d9534f", "cancelled": "#999"}.get(st.get("status"), "#3b82f6")
    return (f'<div class="learn-progress" role="progressbar" aria-valuenow="{p * 100:.0f}" '
            f'aria-valuemin="0" aria-valuemax="100" style="width:100%;background:#e5e7eb;border-radius:6px;'
            f'height:18px;overflow:hidden"><div style="width:{p * 100:.1f}%;background:{color};height:100%">'
            f'</div></div><div style="font-size:0.9em;margin-top:4px">{p * 100:.0f}%'
            f'{html.escape(tail)}</div>')


def format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    m, s = divmod(seconds, 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def losses_figure(losses: list[dict]):
    """The loss curve, one line per stage, or None before the first logged step."""
    points = tuple((int(r.get("step", i)), float(r["loss"]), str(r.get("stage") or "train"))
                   for i, r in enumerate(losses) if r.get("loss") is not None)
    return _figure(points) if points else None


@functools.lru_cache(maxsize=8)  # the timer asks every 2 s; redraw only when a step was added
def _figure(points: tuple):
    """One panel per stage, each on its own step axis: stages count steps differently (the
    experts stage runs hundreds of steps, SFT and DPO a few), so one shared axis squeezes them."""
    from matplotlib.figure import Figure  # no pyplot: safe on Gradio's worker threads

    stages = list(dict.fromkeys(p[2] for p in points))  # in the order they ran
    fig = Figure(figsize=(8, 3), dpi=100, layout="tight")
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    for i, (ax, stage) in enumerate(zip(axes, stages, strict=True)):
        xs, ys = zip(*[(p[0], p[1]) for p in points if p[2] == stage], strict=True)
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None, color=f"C{i}")
        ax.set_title(f"{stage} loss", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    return fig
