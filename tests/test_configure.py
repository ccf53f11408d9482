"""Settings that stay (issue 27 item 4): `assistant config show|set` and the page's forms store the
generation defaults, the learning schedule and the gate's thresholds in the settings table."""
import pytest

from assistant import configure
from assistant.cli import main
from assistant.config import Config
from assistant.runtime import Runtime
from learning.config import load_learn_config
from learning.gate import load_gate_config


def config(home, *args) -> int:
    return main(["--home", str(home), "config", *args])


def test_config_show_lists_each_setting_with_its_value_and_meaning(home, db, capsys):
    assert config(home, "show") == 0
    out = capsys.readouterr().out
    for key in ("chat.default_max_new_tokens", "chat.default_temperature", "chat.recall",
                "learn.min_new_feedback", "learn.interval_s", "learn.min_gap_s", "gate.canary_tolerance"):
        assert key in out
    assert "A cycle starts by itself once this many new learnable feedback items arrived." in out  # its docstring
    assert "learn.sft_lr" not in out  # the schedule only, unless --all
    assert config(home, "show", "--all") == 0
    out = capsys.readouterr().out
    assert "learn.sft_lr" in out and "learn.lora_r" not in out  # the LoRA shape is not a setting


def test_config_set_stores_what_the_learner_and_gate_read(home, db, capsys):
    assert config(home, "set", "learn.min_new_feedback", "3") == 0
    assert config(home, "set", "canary_tolerance", "0") == 0  # a bare name only one section has
    assert config(home, "set", "experts_budget_s", "none") == 0
    assert capsys.readouterr().out.splitlines() == ["learn.min_new_feedback = 3", "gate.canary_tolerance = 0",
                                                    "learn.experts_budget_s = none"]
    lcfg, gcfg = load_learn_config(db), load_gate_config(db)
    assert (lcfg.min_new_feedback, lcfg.experts_budget_s, gcfg.canary_tolerance) == (3, None, 0)
    assert config(home, "show") == 0
    assert "(default 10)" in capsys.readouterr().out  # a changed value says what it replaced


@pytest.mark.parametrize("key, value, words", [
    ("learn.min_new_feedback", "0", "min_new_feedback must be >= 1 (got 0)"),
    ("learn.min_gap_s", "99999", "cannot exceed interval_s"),
    ("gate.min_taught_fraction", "1.5", "min_taught_fraction must be in [0, 1]"),
    ("chat.default_temperature", "9", "default_temperature must be in [0, 2.0]"),
    ("chat.default_max_new_tokens", "12.5", "is a whole number"),
    ("chat.recall", "maybe", "write true or false"),
    ("gate.canary_tolerance", "lots", "is a number"),
    ("lora_r", "8", "the LoRA shape is fixed across versions"),
    ("learn.nonsense", "1", "unknown setting 'learn.nonsense'"),
    ("nonsense.x", "1", "unknown section 'nonsense'"),
])
def test_config_set_refuses_in_words_and_changes_nothing(home, db, capsys, key, value, words):
    assert config(home, "set", key, value) == 2
    captured = capsys.readouterr()
    assert words in captured.err and "Traceback" not in captured.err and captured.err.startswith("Not changed:")
    assert configure.stored(db, configure.SECTIONS["learn"]) == {}
    assert configure.stored(db, configure.SECTIONS["gate"]) == {}


def test_the_schedule_and_gate_form_saves_all_or_nothing(db):
    values = configure.page_values(db)
    names = [f"{s}.{n}" for s, n in configure.PAGE_FIELDS]
    assert values[names.index("learn.min_new_feedback")] == 10
    changed = list(values)
    changed[names.index("learn.min_new_feedback")] = 4.0  # a number box gives floats
    changed[names.index("gate.max_retention_lost")] = 1
    assert configure.save_page(db, *changed) == \
        "Saved: learn.min_new_feedback, gate.max_retention_lost. It counts from the next check."
    assert load_learn_config(db).min_new_feedback == 4 and load_gate_config(db).max_retention_lost == 1
    assert configure.save_page(db, *changed) == "Nothing changed."
    bad = list(changed)
    bad[names.index("learn.interval_s")] = 100  # below min_gap_s (600): the trigger could never fire
    bad[names.index("gate.min_pairs")] = 2
    notice = configure.save_page(db, *bad)
    assert notice.startswith("⚠ Not saved:") and "min_gap_s" in notice
    assert load_gate_config(db).min_pairs == 4  # the valid gate change was not stored either


def test_chat_settings_stay_across_a_reload_and_a_restart(cfg, tiny_served, capsys):
    rt = Runtime.create(cfg, model=tiny_served, with_memory=False)
    assert configure.chat_values(rt) == [8, 0.0, True]  # nothing stored: what the server started with
    assert configure.save_chat_setting(rt, "default_temperature", 0.7) == ""
    assert configure.save_chat_setting(rt, "recall", False) == ""
    assert configure.save_chat_setting(rt, "default_max_new_tokens", 0).startswith("⚠ Not saved:")
    assert rt.cfg.default_temperature == 0.7 and rt.cfg.recall is False  # the running server, at once
    again = Runtime.create(Config(home=cfg.home, model=cfg.model, default_max_new_tokens=8),
                           model=tiny_served, with_memory=False)
    assert configure.chat_values(again) == [8, 0.7, False]  # a page load shows what was stored
    restarted = Config(home=cfg.home, model=cfg.model)
    configure.apply_chat_settings(again.db, restarted)  # as cli.main does for every command
    assert (restarted.default_temperature, restarted.recall) == (0.7, False)


def test_the_page_has_the_settings_forms(cfg, tiny_served):
    from assistant.ui import build_ui

    rt = Runtime.create(cfg, model=tiny_served, with_memory=False)
    ui = build_ui(rt)
    ids = {getattr(b, "elem_id", None) for b in ui.blocks.values()}
    assert {"setting-learn-min-new-feedback", "setting-learn-interval-s", "setting-gate-canary-tolerance",
            "learn-settings-save", "temperature", "recall", "max-new-tokens"} <= ids


def test_the_experts_modules_are_set_as_names(home, db, capsys):
    assert config(home, "set", "learn.expert_targets", "gate_proj, up_proj,down_proj") == 0
    assert load_learn_config(db).expert_targets == ("gate_proj", "up_proj", "down_proj")
    assert config(home, "set", "learn.expert_targets", "none") == 0  # back to lora_targets
    assert load_learn_config(db).expert_targets is None
    capsys.readouterr()
    assert config(home, "set", "learn.expert_targets", ",") == 2
    assert "is a list of names" in capsys.readouterr().err
