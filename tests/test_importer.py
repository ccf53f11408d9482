"""Import (issue 27 item 5): TRL SFT / preference JSONL and Open WebUI feedback exports become
feedback with their source, once, and every line that cannot be imported is named with why."""
import json

from assistant import importer
from assistant.cli import main
from learning.config import LearnConfig
from learning.datasets import build
from store import feedback


def jsonl(path, rows) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def facts(db) -> list[dict]:
    return list(db.query("SELECT f.kind, f.correction, f.reason, t.user_message, t.reply, t.source, t.params_json, "
                         "t.messages_json, c.system_prompt FROM feedback f JOIN turns t ON t.id = f.turn_id "
                         "JOIN conversations c ON c.id = t.conversation_id ORDER BY f.id"))


SFT = [{"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                     {"role": "user", "content": "What is my dog called?"},
                     {"role": "assistant", "content": "Your dog is called Biscuit."}]}]
PREFERENCE = [
    {"prompt": [{"role": "user", "content": "Where do I work?"}],  # conversational
     "chosen": [{"role": "assistant", "content": "You work at Halvorsen Robotics."}],
     "rejected": [{"role": "assistant", "content": "I don't know."}]},
    {"prompt": "What is my cat's name?", "chosen": "Your cat is Pemberton.", "rejected": "Whiskers."},  # plain
    {"chosen": [{"role": "user", "content": "Which car do I drive?"},  # implicit prompt
                {"role": "assistant", "content": "A blue Volvo."}],
     "rejected": [{"role": "user", "content": "Which car do I drive?"},
                  {"role": "assistant", "content": "A bicycle."}]},
]


def test_trl_sft_and_preference_rows_become_likes_and_corrections_once(db, tmp_path):
    report = importer.import_file(db, jsonl(tmp_path / "mixed.jsonl", SFT + PREFERENCE))
    assert report.text().startswith("Imported from mixed.jsonl (TRL preference JSONL): 3 corrections, "
                                    "1 liked answer; 0 already there (skipped); 0 rejected.")
    rows = facts(db)
    assert [(r["kind"], r["user_message"], r["reply"], r["correction"]) for r in rows] == [
        ("up", "What is my dog called?", "Your dog is called Biscuit.", None),
        ("correction", "Where do I work?", "I don't know.", "You work at Halvorsen Robotics."),
        ("correction", "What is my cat's name?", "Whiskers.", "Your cat is Pemberton."),
        ("correction", "Which car do I drive?", "A bicycle.", "A blue Volvo."),
    ]
    liked = rows[0]
    assert liked["source"] == "import" and liked["system_prompt"] == "Be brief."
    assert json.loads(liked["params_json"])["import"] | {"key": None} == \
        {"format": "trl-sft", "file": "mixed.jsonl", "where": "line 1", "key": None}  # each row's own format
    assert [m["content"] for m in json.loads(liked["messages_json"])] == \
        ["Be brief.", "Hi", "Hello!", "What is my dog called?"]
    # the learner reads them as any feedback: the history in front, the correction over the answer
    data = build(db, LearnConfig(heldout_fraction=0.0))
    assert {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": "Hello!"},
                       {"role": "user", "content": "What is my dog called?"}]}["prompt"] == \
        [m for m in data.sft if m["source"] == "liked"][0]["messages"][:-1]
    assert len(data.pairs) == 3

    again = importer.import_file(db, str(tmp_path / "mixed.jsonl"))  # the same file again: nothing new
    assert not again.added and again.duplicates == 4 and len(facts(db)) == 4


def test_each_line_that_cannot_be_imported_is_named_with_why(db, tmp_path):
    rows = ["{not json", {"text": "hello"},
            {"messages": [{"role": "user", "content": "Hi"}]},
            {"prompt": "Q?", "chosen": "Same.", "rejected": "Same."},
            {"prompt": "Q?", "chosen": "Bad\u0000text", "rejected": "No."},
            {"prompt": [{"role": "assistant", "content": "Hi"}], "chosen": "A.", "rejected": "B."},
            "", PREFERENCE[1]]
    report = importer.import_file(db, jsonl(tmp_path / "bad.jsonl", rows))
    assert report.added == {"correction": 1}
    why = dict(report.rejected)
    assert why["line 1"].startswith("not JSON")
    assert "neither a conversational SFT row" in why["line 2"]
    assert why["line 3"] == "the last message must be the assistant's answer"
    assert why["line 4"] == "chosen and rejected are the same answer: nothing to correct"
    assert "NUL" in why["line 5"]
    assert why["line 6"] == "the prompt must end with a user message"
    assert "line 7" not in why and len(why) == 6  # a blank line is no row
    assert "- line 4: chosen and rejected are the same answer" in report.text()


def test_a_file_of_no_known_shape_is_refused_whole(db, tmp_path):
    report = importer.import_file(db, jsonl(tmp_path / "notes.jsonl", [{"text": "a"}, {"text": "b"}]))
    assert not report.added and [w for w, _ in report.rejected] == ["line 1", "line 2", "the file"]
    assert "no line is a TRL SFT or preference row" in report.text()
    missing = importer.import_file(db, tmp_path / "nowhere.jsonl")
    assert "cannot be read" in missing.text()


def owui_record(rating, rated="a2", **data) -> dict:
    """An Open WebUI feedback record as its export writes it: snapshot.chat is the chat row, whose
    own "chat" holds the message tree (history.messages by id, each with its parentId)."""
    messages = {
        "u1": {"id": "u1", "parentId": None, "role": "user", "content": "What is my dog called?"},
        "a1": {"id": "a1", "parentId": "u1", "role": "assistant", "content": "Rex."},
        "u2": {"id": "u2", "parentId": "a1", "role": "user", "content": "Are you sure?"},
        "a2": {"id": "a2", "parentId": "u2", "role": "assistant", "content": "Yes, Rex.", "model": "llama3"},
    }
    return {"id": "f1", "user_id": "u", "version": 0, "type": "rating",
            "data": {"rating": rating, "model_id": "llama3", "reason": "", "comment": "", **data},
            "meta": {"model_id": "llama3", "message_id": rated, "message_index": 3, "chat_id": "c1"},
            "snapshot": {"chat": {"id": "c1", "user_id": "u", "title": "Dog chat",
                                  "chat": {"history": {"messages": messages, "currentId": "a2"}}}},
            "created_at": 1704067200, "updated_at": 1704067200}


def test_an_open_webui_feedback_export_becomes_likes_and_dislikes(db, tmp_path):
    records = [owui_record(1, rated="a1"),
               owui_record(-1, reason="inaccurate_information", comment="His name is Biscuit."),
               owui_record(0), owui_record(1, rated="zz")]
    path = tmp_path / "feedback-export.json"
    path.write_text(json.dumps(records))
    report = importer.import_file(db, path)
    assert report.format == "open-webui" and report.added == {"up": 1, "down": 1}
    assert dict(report.rejected) == {"record 3": "rating is 0, not 1 (liked) or -1 (disliked)",
                                     "record 4": "the rated message 'zz' is not an answer in the snapshot"}
    up, down = facts(db)
    assert (up["kind"], up["user_message"], up["reply"]) == ("up", "What is my dog called?", "Rex.")
    assert (down["kind"], down["user_message"], down["reply"]) == ("down", "Are you sure?", "Yes, Rex.")
    assert down["reason"] == "inaccurate_information; His name is Biscuit."
    assert [m["content"] for m in json.loads(down["messages_json"])] == \
        ["What is my dog called?", "Rex.", "Are you sure?"]  # the path to the rated answer
    assert json.loads(down["params_json"])["import"]["format"] == "open-webui"
    assert importer.import_file(db, path).duplicates == 2 and len(facts(db)) == 2


def test_assistant_import_reports_counts_and_exits_nonzero_when_nothing_could_be(home, db, tmp_path, capsys):
    good = jsonl(tmp_path / "prefs.jsonl", PREFERENCE)
    assert main(["--home", str(home), "import", good]) == 0
    assert capsys.readouterr().out.startswith("Imported from prefs.jsonl (TRL preference JSONL): 3 corrections;")
    assert main(["--home", str(home), "import", good]) == 0  # all already there: fine, nothing added
    assert "3 already there (skipped)" in capsys.readouterr().out
    assert main(["--home", str(home), "import", jsonl(tmp_path / "x.jsonl", ["{oops"])]) == 1
    assert "- line 1: not JSON" in capsys.readouterr().out
    assert len([f for f in facts(db) if f["kind"] == "correction"]) == 3


def test_the_pages_import_button_lists_items_in_what_it_knows_not_in_the_sidebar(cfg, tiny_served, tmp_path):
    from assistant import ui_knows
    from assistant.runtime import Runtime
    from assistant.ui_conversations import ChatTab

    tiny_served.use(None)
    rt = Runtime.create(cfg, model=tiny_served, with_memory=False)
    assert importer.import_into(rt, None) == "Choose a file to import first."
    notice = importer.import_into(rt, jsonl(tmp_path / "prefs.jsonl", PREFERENCE))
    assert notice.startswith("Imported from prefs.jsonl") and "3 corrections" in notice
    listed = " ".join(str(i) for i in ui_knows.items(rt.db))
    assert "You work at Halvorsen Robotics." in listed and "A blue Volvo." in listed
    assert ChatTab(rt).conversation_list(None)["choices"] == []  # 3 imported items do not bury the chats
    assert feedback.feedback_for_turn(rt.db, rt.db.execute("SELECT id FROM turns").fetchone()[0])
