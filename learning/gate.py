"""The gate: a pure decision on whether a candidate adapter may replace the incumbent.

Contract: `decide(candidate, incumbent, config) -> Decision(passed, reasons)` reads only the two
metric dicts produced by `learning.evaluate.evaluate` and the thresholds in `GateConfig`; it
does no I/O, so it is cheap to test over any combination of numbers. Every check adds one
reason in words (passing checks too), so the Versions tab and the CLI can show why, e.g.
"learned 11/12 new corrections; kept 40/40 earlier ones; canaries 38/38; held-out preference
accuracy 0.71 vs 0.55". A failing reason starts with "FAILED:".
"""
from dataclasses import asdict, dataclass, field

SETTINGS_KEY = "gate_config"


@dataclass(frozen=True)
class GateConfig:
    min_taught_fraction: float = 0.0
    """Share of this cycle's corrections the candidate's greedy reply must carry; at least one
    whenever there are any. A candidate that learned some and lost nothing goes live: what it did
    not learn stays pending (recall answers it) and is taught again next cycle (learning/learner.py).
    0.8 until a first session's candidate that learned 1 of 2 corrections and lost nothing was
    thrown away."""
    max_retention_lost: int = 0
    """How many earlier corrections that the incumbent still carries the candidate may lose."""
    canary_tolerance: int = 1
    """The candidate may pass this many fewer canaries than the incumbent (greedy replies of
    a 135M model flip on tiny weight changes; one flip in ~40 is noise, two is a trend)."""
    preference_tolerance: float = 0.0
    """Held-out preference accuracy may drop at most this much below the incumbent's."""
    min_pairs: int = 4
    """Below this many held-out pairs, preference accuracy is reported but not enforced."""

    def __post_init__(self):
        problems = []
        if not 0 <= self.min_taught_fraction <= 1:
            problems.append(f"min_taught_fraction must be in [0, 1] (got {self.min_taught_fraction})")
        if self.max_retention_lost < 0 or self.canary_tolerance < 0:
            problems.append(f"max_retention_lost and canary_tolerance must be >= 0 "
                            f"(got {self.max_retention_lost}, {self.canary_tolerance})")
        if not 0 <= self.preference_tolerance <= 1:
            problems.append(f"preference_tolerance must be in [0, 1] (got {self.preference_tolerance})")
        if self.min_pairs < 1:
            problems.append(f"min_pairs must be >= 1 (got {self.min_pairs})")
        if problems:
            raise ValueError("invalid GateConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict) -> "GateConfig":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown GateConfig fields {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def load_gate_config(db) -> GateConfig:
    """The GateConfig stored in settings (key 'gate_config'), defaults otherwise."""
    from store.settings import get_setting

    return GateConfig.from_dict(get_setting(db, SETTINGS_KEY, {}) or {})


@dataclass
class Decision:
    passed: bool
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return ("passed: " if self.passed else "rejected: ") + "; ".join(self.reasons)


def _counts(metrics: dict, family: str) -> tuple[int, int, int]:
    f = metrics.get(family) or {}
    return int(f.get("passed", 0)), int(f.get("total", 0)), int(f.get("lost", 0))


def _check_taught(cand: dict, cfg: GateConfig) -> tuple[bool, str]:
    passed, total, _ = _counts(cand, "taught")
    if total == 0:
        return True, "no new corrections to learn in this cycle"
    ok = passed >= max(cfg.min_taught_fraction * total - 1e-9, 1)
    text = f"learned {passed}/{total} new corrections"
    if ok and passed < total:
        text += f" ({total - passed} not yet: recalled meanwhile, taught again next cycle)"
    if not passed:
        return False, f"FAILED: {text}: nothing new would go live"
    return ok, text if ok else f"FAILED: {text} (needs {cfg.min_taught_fraction:.0%})"


def _check_retention(cand: dict, inc: dict, cfg: GateConfig) -> tuple[bool, str]:
    passed, total, lost = _counts(cand, "retention")
    if total == 0:
        return True, "no earlier corrections to keep"
    ok = lost <= cfg.max_retention_lost
    text = f"kept {passed}/{total} earlier ones"
    if lost:
        text += f", lost {lost} the incumbent still knew (allowed {cfg.max_retention_lost})"
    relearning = int((cand.get("retention") or {}).get("relearning", 0))
    if relearning:  # learning/repair.py: retrained after a take-back, not held against the candidate
        text += (f"; {relearning} retrained because a correction sharing its expert was taken back is "
                 "not relearned yet (recalled meanwhile, trained again next cycle)")
    return ok, text if ok else "FAILED: " + text


def _check_canaries(cand: dict, inc: dict, cfg: GateConfig) -> tuple[bool, str]:
    passed, total, _ = _counts(cand, "canary")
    inc_passed, _, _ = _counts(inc, "canary")
    if total == 0:
        return True, "no canaries"
    ok = passed >= inc_passed - cfg.canary_tolerance
    text = f"canaries {passed}/{total}"
    if passed != inc_passed:
        text += f" (incumbent {inc_passed}/{total})"
    return ok, text if ok else f"FAILED: {text}, more than {cfg.canary_tolerance} forgotten"


def _check_preference(cand: dict, inc: dict, cfg: GateConfig) -> tuple[bool, str]:
    pref, inc_pref = cand.get("preference") or {}, inc.get("preference") or {}
    pairs, acc, inc_acc = pref.get("pairs", 0), pref.get("accuracy"), inc_pref.get("accuracy")
    if not pairs or acc is None or inc_acc is None:
        return True, "no held-out preference pairs"
    text = f"held-out preference accuracy {acc:.2f} vs {inc_acc:.2f}"
    if pref.get("reward_margin") is not None:
        text += f" (reward margin {pref['reward_margin']:+.3f})"
    if pairs < cfg.min_pairs:
        return True, f"{text} on only {pairs} pairs, not enforced"
    ok = acc >= inc_acc - cfg.preference_tolerance - 1e-9
    return ok, text if ok else f"FAILED: {text}, worse than the incumbent"


def decide(candidate: dict, incumbent: dict, config: GateConfig | None = None) -> Decision:
    """Pass only if every check passes; the reasons list every check, in a fixed order."""
    config = config or GateConfig()
    checks = [_check_taught(candidate, config), _check_retention(candidate, incumbent, config),
              _check_canaries(candidate, incumbent, config),
              _check_preference(candidate, incumbent, config)]
    return Decision(passed=all(ok for ok, _ in checks), reasons=[text for _, text in checks])
