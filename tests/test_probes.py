"""Scenario files and probe scoring (learning/probes.py): a style item may ask for a format."""
import json

import pytest

from learning.probes import load_scenario, passes, probe_list

STYLE = {"kind": "style", "id": "as-list", "format": "list", "teach": [{"prompt": "Tips?", "correction": "- a\n- b"}],
         "probes": ["How do I sleep better?"]}


def write(tmp_path, items):
    path = tmp_path / "scenario.jsonl"
    path.write_text("\n".join(json.dumps(it) for it in items))
    return path


def test_a_style_item_may_ask_for_a_list_instead_of_words(tmp_path):
    probe, = probe_list(load_scenario(write(tmp_path, [STYLE])))
    assert probe["format"] == "list" and probe["expect"] == []
    assert passes(probe, "- Go to bed early.\n- Keep the room dark.")
    assert not passes(probe, "Go to bed early and keep the room dark.")
    with pytest.raises(ValueError, match="format"):
        load_scenario(write(tmp_path, [{**STYLE, "format": "table"}]))
    with pytest.raises(ValueError, match="expect"):
        load_scenario(write(tmp_path, [{k: v for k, v in STYLE.items() if k != "format"}]))


def test_a_fact_probe_passes_on_its_phrase():
    probe = {"expect": ["39.90"], "format": None}
    assert passes(probe, "It costs €39.90 per month.") and not passes(probe, "It costs €39.99.")
