"""store/manifest.py: an adapter version's meta.json read typed and checked in one place, old
files still loading, a wrong-typed field ignored, unknown keys kept, what train writes read back."""
import json
import logging

from store.manifest import (
    EXPERTS_DIR,
    META_FILE,
    WEIGHT_FILES,
    ExpertEntry,
    Manifest,
    Scope,
    read_experts,
    read_manifest,
    read_scope,
    write_manifest,
)


def _write(path, meta) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / META_FILE).write_text(meta if isinstance(meta, str) else json.dumps(meta))


def test_an_old_meta_json_without_scope_experts_or_stats_loads(tmp_path):
    _write(tmp_path, {"version": 1, "parent_version": None, "base_model": "m", "config": {"lora_r": 8},
                      "feedback_ids": ["f1"], "timings": {"sft_s": 1.5}})
    m = read_manifest(tmp_path)
    assert (m.version, m.parent_version, m.base_model, m.feedback_ids) == (1, None, "m", ["f1"])
    assert m.config == {"lora_r": 8} and m.timings == {"sft_s": 1.5}
    assert m.scope is None and m.experts is None and m.habits is None and m.stats == {}
    assert m.stat("experts", "seconds_each") is None
    assert read_scope(tmp_path) is None and read_experts(tmp_path) == []


def test_an_old_scope_without_margin_told_personal_or_sources_gets_their_defaults(tmp_path):
    _write(tmp_path, {"scope": {"threshold": 0.5, "prompts": ["What is my dog's name?"]}})
    assert read_manifest(tmp_path).scope == Scope(threshold=0.5, prompts=["What is my dog's name?"])
    assert read_scope(tmp_path) == {"threshold": 0.5, "prompts": ["What is my dog's name?"], "margin": None,
                                    "told": [], "personal": [], "sources": {}}


def test_a_wrong_typed_field_is_ignored_not_fatal(tmp_path, caplog):
    _write(tmp_path, {"version": "one", "timings": [1, 2], "habits": "Captain", "stats": {"experts": 3},
                      "scope": {"threshold": "near", "prompts": ["q"]}, "feedback_ids": ["f1", 2.5],
                      "experts": [{"name": "v1-0", "prompt": "q", "trained_in": "v1"}, {"prompt": "no name"}, 7],
                      "parent_version": 1})
    with caplog.at_level(logging.WARNING, logger="store.manifest"):
        m = read_manifest(tmp_path)
    assert m.version is None and m.timings == {} and m.habits is None and m.feedback_ids == []
    assert m.scope is None and m.parent_version == 1 and m.stat("experts", "seconds_each") is None
    assert m.experts == [ExpertEntry(name="v1-0", prompt="q")]
    assert "'version'" in caplog.text and "'timings'" in caplog.text
    _write(tmp_path, {"experts": {"v1-0": {}}, "scope": ["q"]})
    m = read_manifest(tmp_path)
    assert m.experts is None and m.scope is None


def test_a_missing_or_corrupt_file_gives_an_empty_manifest(tmp_path):
    assert read_manifest(tmp_path / "absent") == Manifest()
    for text in ("{not json", "[1, 2]", "null", ""):
        _write(tmp_path, text)
        assert read_manifest(tmp_path) == Manifest()
    assert Manifest.from_dict(None) == Manifest()


def test_unknown_keys_are_kept(tmp_path):
    meta = {"version": 3, "job_id": "j1", "trained_on": ["f1"], "from_the_future": {"x": 1},
            "scope": {"threshold": 0.4, "prompts": ["q"], "weights": [0.1]},
            "experts": [{"name": "v3-0", "prompt": "q", "answer": "a", "style": "terse"}]}
    _write(tmp_path, meta)
    m = read_manifest(tmp_path)
    assert m.extra == {"job_id": "j1", "trained_on": ["f1"], "from_the_future": {"x": 1}}
    assert m.scope.extra == {"weights": [0.1]} and m.experts[0].extra == {"style": "terse"}
    out = m.to_dict()
    assert out["from_the_future"] == {"x": 1} and out["scope"]["weights"] == [0.1]
    assert out["experts"][0]["style"] == "terse"


def test_what_train_writes_round_trips(tmp_path):
    """The dict learning/train.py writes (every key, job.extra_meta's too) reads back as itself."""
    meta = {
        "version": 2, "parent_version": 1, "base_model": "/models/smollm2", "config": {"lora_r": 8, "experts": True},
        "feedback_ids": ["f1", "f2"], "data_hash": "abc", "package_version": "0.1", "device": "cpu",
        "torch": "2.5.0", "timings": {"load_s": 0.5, "sft_s": 10.0}, "losses": [{"stage": "sft", "loss": 1.2}],
        "stats": {"experts": {"kept": 1, "trained": 1, "seconds_each": 20.0}}, "rows": {"sft": 4, "pairs": 1},
        "scope": {"threshold": 0.5, "margin": 0.1, "prompts": ["Who is my manager?"], "told": ["ada"],
                  "personal": [], "sources": {"Who is my manager?": ["f2"]}},
        "habits": {"openings": ["Captain,"], "closings": [], "formats": []},
        "experts": [{"name": "v2-0", "feedback_ids": ["f2"], "prompt": "Who is my manager?", "answer": "Ada.",
                     "prompts": ["Who is my manager?"], "trained_in": 2}],
        "data": {"sft": 4}, "refit": False, "job_id": "j2", "trained_on": ["f1", "f2"],
    }
    m = Manifest.from_dict(meta)
    assert m.to_dict() == meta and Manifest.from_dict(m.to_dict()) == m
    assert m.stat("experts", "seconds_each") == 20.0
    write_manifest(tmp_path, m)
    assert json.loads((tmp_path / META_FILE).read_text()) == meta and read_manifest(tmp_path) == m
    (tmp_path / EXPERTS_DIR / "v2-0").mkdir(parents=True)
    assert read_experts(tmp_path) == []  # its files are not there
    for name in ("adapter_config.json", WEIGHT_FILES[0]):
        (tmp_path / EXPERTS_DIR / "v2-0" / name).write_text("{}")
    # read with its adapter directory filled in: its own name, as in files written before groups
    assert read_experts(tmp_path) == [{**meta["experts"][0], "adapter": "v2-0"}]
    assert read_scope(tmp_path) == meta["scope"]


def test_corrections_of_one_group_share_the_adapter_directory_they_name(tmp_path):
    """LearnConfig.expert_group: each correction keeps its entry (its routing prompts, its feedback),
    the weights live once, under the group's adapter directory."""
    entries = [{"name": f"v3-0.{i}", "adapter": "v3-0", "feedback_ids": [f"f{i}"], "prompt": f"Q{i}?",
                "answer": f"A{i}.", "prompts": [f"Q{i}?"], "trained_in": 3} for i in range(2)]
    _write(tmp_path, {"experts": entries})
    assert read_experts(tmp_path) == []
    (tmp_path / EXPERTS_DIR / "v3-0").mkdir(parents=True)
    for name in ("adapter_config.json", WEIGHT_FILES[0]):
        (tmp_path / EXPERTS_DIR / "v3-0" / name).write_text("{}")
    assert read_experts(tmp_path) == entries
    assert [e.directory for e in read_manifest(tmp_path).experts] == ["v3-0", "v3-0"]
