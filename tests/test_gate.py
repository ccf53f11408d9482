"""The gate's decision, table-driven over metric combinations (no model needed)."""
import copy

import pytest

from learning.gate import Decision, GateConfig, decide


def metrics(taught=(12, 12), retention=(40, 40, 0), canary=(40, 40), pref=(None, 0), margin=None) -> dict:
    """Metrics as `learning.evaluate` returns them: (passed, total[, lost]) per family,
    (accuracy, pairs) for held-out preference pairs."""
    return {
        "taught": {"passed": taught[0], "total": taught[1], "lost": 0},
        "retention": {"passed": retention[0], "total": retention[1], "lost": retention[2]},
        "canary": {"passed": canary[0], "total": canary[1], "lost": 0},
        "preference": {"pairs": pref[1], "accuracy": pref[0], "reward_margin": margin},
    }


INC = metrics(taught=(0, 12), canary=(40, 40), pref=(0.55, 10))
CHECKS = ("taught", "retention", "canary", "preference")

CASES = [
    # id, candidate, incumbent, config overrides, passed, failing checks
    ("all-good", metrics(pref=(0.71, 10)), INC, {}, True, set()),
    ("taught-some-lost-nothing", metrics(taught=(1, 2)), INC, {}, True, set()),
    ("taught-at-threshold", metrics(taught=(8, 10)), INC, {"min_taught_fraction": 0.8}, True, set()),
    ("taught-below-threshold", metrics(taught=(7, 10)), INC, {"min_taught_fraction": 0.8}, False, {"taught"}),
    ("taught-none-learned", metrics(taught=(0, 5)), INC, {}, False, {"taught"}),
    ("taught-lower-threshold", metrics(taught=(5, 10)), INC, {"min_taught_fraction": 0.5}, True, set()),
    ("no-new-corrections", metrics(taught=(0, 0)), INC, {}, True, set()),
    ("retention-one-lost", metrics(retention=(39, 40, 1)), INC, {}, False, {"retention"}),
    ("retention-one-lost-allowed", metrics(retention=(39, 40, 1)), INC, {"max_retention_lost": 1}, True, set()),
    ("retention-never-known", metrics(retention=(30, 40, 0)), INC, {}, True, set()),
    ("no-earlier-corrections", metrics(retention=(0, 0, 0)), INC, {}, True, set()),
    ("canary-one-flip-tolerated", metrics(canary=(39, 40)), INC, {}, True, set()),
    ("canary-two-lost", metrics(canary=(38, 40)), INC, {}, False, {"canary"}),
    ("canary-strict", metrics(canary=(39, 40)), INC, {"canary_tolerance": 0}, False, {"canary"}),
    ("canary-better-than-weak-incumbent", metrics(canary=(40, 40)), metrics(canary=(35, 40)), {}, True, set()),
    ("canary-below-weak-incumbent", metrics(canary=(33, 40)), metrics(canary=(35, 40)), {}, False, {"canary"}),
    ("pref-worse", metrics(pref=(0.5, 10)), INC, {}, False, {"preference"}),
    ("pref-worse-within-tolerance", metrics(pref=(0.5, 10)), INC, {"preference_tolerance": 0.1}, True, set()),
    ("pref-too-few-pairs", metrics(pref=(0.0, 3)), INC, {}, True, set()),
    ("pref-equal", metrics(pref=(0.55, 10)), INC, {}, True, set()),
    ("pref-missing", metrics(pref=(None, 0)), INC, {}, True, set()),
    ("pref-incumbent-missing", metrics(pref=(0.6, 10)), metrics(pref=(None, 0)), {}, True, set()),
    # A poisoned batch: the user's corrections are memorised, general knowledge breaks.
    ("poisoned-canaries", metrics(taught=(12, 12), canary=(29, 40)), INC, {}, False, {"canary"}),
    ("poisoned-everything", metrics(taught=(12, 12), retention=(31, 40, 9), canary=(20, 40), pref=(0.2, 10)),
     INC, {}, False, {"retention", "canary", "preference"}),
    ("nothing-learned-and-forgetting", metrics(taught=(0, 12), canary=(30, 40)), INC, {}, False,
     {"taught", "canary"}),
]


@pytest.mark.parametrize("candidate,incumbent,overrides,passed,failing",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(candidate, incumbent, overrides, passed, failing):
    before = copy.deepcopy((candidate, incumbent))
    decision = decide(candidate, incumbent, GateConfig(**overrides))
    assert isinstance(decision, Decision)
    assert decision.passed is passed
    assert len(decision.reasons) == len(CHECKS)  # every check explains itself, pass or fail
    failed = {name for name, reason in zip(CHECKS, decision.reasons, strict=True) if reason.startswith("FAILED")}
    assert failed == failing
    assert (candidate, incumbent) == before  # pure: inputs untouched
    assert decide(candidate, incumbent, GateConfig(**overrides)) == decision  # deterministic


def test_reasons_read_as_words():
    cand = metrics(taught=(11, 12), retention=(40, 40, 0), canary=(38, 38), pref=(0.71, 20), margin=0.42)
    inc = metrics(taught=(0, 12), retention=(40, 40, 0), canary=(38, 38), pref=(0.55, 20))
    decision = decide(cand, inc)
    assert decision.passed
    assert decision.reasons == [
        "learned 11/12 new corrections (1 not yet: recalled meanwhile, taught again next cycle)", "kept 40/40 earlier ones", "canaries 38/38",
        "held-out preference accuracy 0.71 vs 0.55 (reward margin +0.420)"]
    assert decision.summary().startswith("passed: learned 11/12")


def test_failed_reasons_say_what_was_expected():
    decision = decide(metrics(taught=(3, 12), retention=(38, 40, 2), canary=(30, 40)), INC,
                      GateConfig(min_taught_fraction=0.8))
    assert not decision.passed
    assert decision.reasons[0] == "FAILED: learned 3/12 new corrections (needs 80%)"
    nothing = decide(metrics(taught=(0, 2)), INC)
    assert nothing.reasons[0] == "FAILED: learned 0/2 new corrections: nothing new would go live"
    assert "lost 2 the incumbent still knew (allowed 0)" in decision.reasons[1]
    assert decision.reasons[2] == "FAILED: canaries 30/40 (incumbent 40/40), more than 1 forgotten"


def test_missing_families_are_treated_as_empty():
    assert decide({}, {}).passed  # e.g. a version judged before a family existed


@pytest.mark.parametrize("bad", [{"min_taught_fraction": 1.5}, {"max_retention_lost": -1},
                                 {"canary_tolerance": -2}, {"preference_tolerance": 2}, {"min_pairs": 0}])
def test_invalid_config_names_the_offending_value(bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        GateConfig(**bad)


def test_config_from_settings_refuses_typos(db):
    from learning.gate import load_gate_config
    from store.settings import set_setting

    assert load_gate_config(db) == GateConfig()
    set_setting(db, "gate_config", {"canary_tolerance": 0})
    assert load_gate_config(db).canary_tolerance == 0
    with pytest.raises(ValueError, match="canary_tolerence"):
        GateConfig.from_dict({"canary_tolerence": 0})
