"""The learner process bench/faults.py kills: `python -m learning.learner` with a kill hook.

    python bench/faults_learner.py --home H --model M --job-id J [--kill-at POINT] [--pass-gate]

POINT is where the process SIGKILLs itself, for the instants a kill from outside would hit only
by luck: `registered` (candidate registered, no gate yet), `decided` (gate decision recorded,
not acted on), `mid-promotion` (inside the promotion's transaction, the old version already
retired in it), `promoted` (active, job not finished), `pruning` (deleting old weights).
--pass-gate: the gate's decision is a pass whatever it measured (the tiny model learns nothing,
so the real gate always rejects and promotion would never run); the decision is still recorded.
"""
import argparse
import os
import signal
import sys

from benchkit import ROOT  # noqa: F401 - sets the environment up first

# isort: split

from learning import gate, learner  # noqa: E402
from store import adapters  # noqa: E402
from store.db import now_iso  # noqa: E402

POINTS = ("registered", "decided", "mid-promotion", "promoted", "pruning")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after(module, name: str, when=lambda *a: True) -> None:
    real = getattr(module, name)

    def wrapped(*a, **kw):
        out = real(*a, **kw)
        if when(*a):
            die()
        return out

    setattr(module, name, wrapped)


def killing_promotion(db, version):
    """adapters.activate's first statement inside its transaction, then the kill (no COMMIT)."""
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE adapters SET status = 'retired', status_changed_at = ? WHERE status = 'active'", [now_iso()])
    die()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--job-id")
    p.add_argument("--kill-at", choices=POINTS)
    p.add_argument("--pass-gate", action="store_true")
    args = p.parse_args(argv)
    if args.pass_gate:
        real = gate.decide

        def decide(cand, inc, config):
            measured = real(cand, inc, config)
            return gate.Decision(True, ["faults bench: passed on purpose", *measured.reasons])

        gate.decide = decide
    if args.kill_at == "registered":
        after(adapters, "register_candidate")
    elif args.kill_at == "decided":
        # not the rejection of an abandoned candidate at the cycle's start (its evidence is {})
        after(adapters, "record_decision", when=lambda *a: bool(a[6]))
    elif args.kill_at == "mid-promotion":
        adapters.activate = killing_promotion
    elif args.kill_at == "promoted":
        after(adapters, "activate")
    elif args.kill_at == "pruning":
        learner._prune = lambda db, keep: die()
    return learner.main(["--home", args.home, "--model", args.model]
                        + (["--job-id", args.job_id] if args.job_id else []))


if __name__ == "__main__":
    sys.exit(main())
