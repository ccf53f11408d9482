"""The web page in headless Chromium (Debian's /usr/bin/chromium driven by Playwright):
send a message, watch the reply stream in, like it, correct it, and find both in the database.
Two browsers chatting at once both get answers."""
import shutil
import time
from pathlib import Path

import pytest

from assistant.config import Config
from assistant.runtime import Runtime
from assistant.server import start_server
from store import feedback

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path("/tmp/assistant-ui-browser.png")

# Records every text the newest answer shows, so the test can see it grow while streaming.
WATCH_JS = """() => {
  window.__states = [];
  const root = document.querySelector('#chatbot');
  new MutationObserver(() => {
    const bots = root.querySelectorAll('.message.bot');
    if (!bots.length) return;
    const text = bots[bots.length - 1].innerText.trim();
    if (window.__states[window.__states.length - 1] !== text) window.__states.push(text);
  }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture
def server(home, tiny_model_path, tiny_served):
    # Sampling (temperature 1) makes the tiny random model print visible text; greedy gives newlines.
    cfg = Config(home=home, model=str(tiny_model_path), default_max_new_tokens=48, default_temperature=1.0)
    tiny_served.use(None)
    runtime = Runtime.create(cfg, model=tiny_served, with_memory=False)
    srv = start_server(runtime, port=0)
    yield srv, runtime
    srv.stop()


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


# An answer, not a note (notes are folded "thought" groups: answered-by, recalled, your correction).
ANSWERS = "#chatbot .message.bot:not(:has(.thought-group))"


def wait_for(predicate, timeout=20.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def send(page, text):
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()


def ui_turns(db):
    return list(db["turns"].rows_where("source = 'ui'", order_by="id"))


def test_chat_stream_like_and_correct_in_the_browser(server, browser):
    srv, runtime = server
    db = runtime.db
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(srv.url)
    page.locator("#chatbot").wait_for()
    page.evaluate(WATCH_JS)

    send(page, "What is the name of my dog?")
    turn = wait_for(lambda: ui_turns(db), what="the turn to be logged")[0]
    wait_for(lambda: page.locator("#feedback-target").inner_text().startswith("Feedback on"),
             what="the reply to finish")
    states = page.evaluate("window.__states")
    turn = ui_turns(db)[0]  # re-read: the turn is saved before its reply ends (issue 29), then completed
    assert turn["user_message"] == "What is the name of my dog?" and turn["completion_tokens"] > 0
    assert len([s for s in states if s]) >= 2, f"the reply did not stream: {states}"
    assert page.locator(ANSWERS).count() == 1
    # what wrote it, in one folded line above the answer (48 tokens at temperature 1: cut, or not)
    said = page.locator("#chatbot .thought-group .title").first.inner_text()
    assert said.startswith("ℹ answered by the base model"), said
    assert ("cut at 48 tokens" in said) == (ui_turns(db)[0]["finish_reason"] == "length")
    assert not page.locator("#chatbot .thought-group .content").first.is_visible()  # folded
    page.locator("#chatbot").screenshot(path="/tmp/assistant-ui-answered-by.png")  # docs/ screenshots

    page.locator("#chatbot button[aria-label='Like']").last.click()  # on the (only) answer
    up = wait_for(lambda: [f for f in feedback.feedback_for_turn(db, turn["id"]) if f["kind"] == "up"],
                  what="the thumbs-up in the database")
    assert len(up) == 1

    page.locator("#fb-correction textarea").fill("Your dog is called Biscuit.")
    page.locator("#fb-correct").click()
    fixes = wait_for(lambda: [f for f in feedback.feedback_for_turn(db, turn["id"])
                              if f["kind"] == "correction"], what="the correction in the database")
    assert fixes[0]["correction"] == "Your dog is called Biscuit."
    page.locator("#chatbot").get_by_text("Your dog is called Biscuit.").wait_for()
    # the thumbs-up is still lit after the messages changed (Gradio alone would forget it)
    page.locator("#chatbot button[aria-label='Liked']").wait_for()
    assert "Correction saved" in page.locator("#notice").inner_text()
    wait_for(lambda: "What is the name of my dog?" in page.locator("#conversations").inner_text(),
             what="the conversation in the list")
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_an_offered_replacement_is_confirmed_with_its_button(server, browser, monkeypatch):
    """Supersession by meaning cannot decide whether the second correction replaces the first: the
    page quotes the first in its notice and shows "↻ It replaces the earlier one"; a click records
    it, and the button goes away."""
    from tests.test_supersede import DESK, DIAL, undecided_superseder

    srv, runtime = server
    monkeypatch.setattr(runtime, "superseder", undecided_superseder())
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(srv.url)
    page.locator("#chatbot").wait_for()
    button = page.locator("#fb-replaces")
    for n, (question, answer) in enumerate((DESK, DIAL), start=1):
        send(page, question)
        wait_for(lambda n=n: len(ui_turns(runtime.db)) == n and page.locator(ANSWERS).count() == n
                 and page.locator("#feedback-target").inner_text().startswith("Feedback on"),
                 what=f"answer {n} to finish")
        assert not button.is_visible()  # nothing offered yet
        page.locator("#fb-correction textarea").fill(answer)
        page.locator("#fb-correct").click()
        wait_for(lambda answer=answer: "Correction saved" in page.locator("#notice").inner_text()
                 and answer in page.locator("#chatbot").inner_text(), what=f"correction {n} saved")
    wait_for(button.is_visible, what="the replace button after the second correction")
    assert DESK[1] in page.locator("#notice").inner_text()
    button.click()
    old, new = (feedback.feedback_for_turn(runtime.db, t["id"])[-1]["id"] for t in ui_turns(runtime.db))
    wait_for(lambda: feedback.superseded_by(runtime.db, [old]) == {old: new}, what="the replacement recorded")
    wait_for(lambda: not button.is_visible(), what="the button to go")
    assert "Replaced" in page.locator("#notice").inner_text()


def test_two_browsers_chat_at_once(server, browser):
    srv, runtime = server
    pages = []
    for _ in range(2):
        page = browser.new_context().new_page()
        page.goto(srv.url)
        page.locator("#chatbot").wait_for()
        pages.append(page)
    send(pages[0], "Hello there")
    send(pages[1], "Where do I work?")
    for page in pages:
        wait_for(lambda p=page: p.locator("#feedback-target").inner_text().startswith("Feedback on"),
                 what="both browsers to get an answer")
        # one answer once the turn is over (a loaded machine shows the pending "•••" a while longer)
        wait_for(lambda p=page: p.locator(ANSWERS).count() == 1, what="one answer in each browser")
        assert page.locator(".message.user").count() == 1
    turns = ui_turns(runtime.db)
    assert sorted(t["user_message"] for t in turns) == ["Hello there", "Where do I work?"]
    assert len({t["conversation_id"] for t in turns}) == 2
    # each browser shows only its own conversation
    assert "Where do I work?" not in pages[0].locator("#chatbot").inner_text()
    assert "Hello there" not in pages[1].locator("#chatbot").inner_text()


def test_the_chatbots_own_retry_edit_and_dislike_buttons(server, browser):
    srv, runtime = server
    db = runtime.db
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(srv.url)
    send(page, "Hello there")
    first = wait_for(lambda: ui_turns(db), what="the turn to be logged")[0]
    wait_for(lambda: page.locator("#feedback-target").inner_text().startswith("Feedback on"),
             what="the reply to finish")

    page.locator("#chatbot button[aria-label='Retry']").last.click()
    retried = wait_for(lambda: [t for t in ui_turns(db) if t["retry_of"] == first["id"]], what="the retry")[0]
    wait_for(lambda: "New answer kept" in page.locator("#notice").inner_text(), what="the retry to finish")
    assert [f["kind"] for f in feedback.feedback_for_turn(db, first["id"])] == ["retry"]
    assert page.locator(ANSWERS).count() == 1  # replaced in place

    page.locator(ANSWERS).last.hover()
    page.locator("#chatbot button[aria-label='Edit']").last.click()
    page.locator("#chatbot textarea").last.fill("Hi! I am fine, thank you.")
    page.locator("#chatbot button[aria-label='Submit']").first.click()
    fix = wait_for(lambda: [f for f in feedback.feedback_for_turn(db, retried["id"]) if f["kind"] == "correction"],
                   what="the edit to be saved as a correction")
    assert fix[0]["correction"] == "Hi! I am fine, thank you."

    page.locator("#chatbot button[aria-label='Dislike'] >> visible=true").first.click()  # a note has none
    wait_for(lambda: [f for f in feedback.feedback_for_turn(db, retried["id"]) if f["kind"] == "down"],
             what="the thumbs-down")
    page.locator("#fb-reason textarea").fill("too terse")
    page.locator("#fb-down").click()
    wait_for(lambda: [f["reason"] for f in feedback.feedback_for_turn(db, retried["id"])
                      if f["kind"] == "down"] == ["too terse"], what="the reason on the same vote")


def test_issue_27_feedback_notes_versions_and_what_it_knows(server, browser, tmp_path):
    """The page's visible fixes of issue 27 in one page load: an unchanged correction is refused,
    the flag's reasons say what they recorded, notes carry no buttons, the edit box is wide, the
    Versions tab shows sentences before any cycle, and "What it knows about me" lists the correction,
    edits it (the old one superseded) and imports a file."""
    srv, runtime = server
    db = runtime.db
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(srv.url)
    send(page, "What is the name of my dog?")
    turn = wait_for(lambda: ui_turns(db), what="the turn to be logged")[0]
    wait_for(lambda: page.locator("#feedback-target").inner_text().startswith("Feedback on"),
             what="the reply to finish")

    # the correction box holds the answer itself: saving it unchanged is refused
    wait_for(lambda: page.locator("#fb-correction textarea").input_value().strip(), what="the pre-filled box")
    page.locator("#fb-correct").click()
    wait_for(lambda: "as it was given" in page.locator("#notice").inner_text(), what="the refusal")
    assert not [f for f in feedback.feedback_for_turn(db, turn["id"]) if f["kind"] == "correction"]

    # the flag's reasons: picking one records it and says so
    page.locator("#chatbot button[aria-label='Feedback']").last.hover()
    page.locator("#chatbot .extra-feedback-option", has_text="Too long").last.click()
    wait_for(lambda: "Too long" in page.locator("#notice").inner_text(), what="the flag's reason in the notice")
    assert [f["reason"] for f in feedback.feedback_for_turn(db, turn["id"])] == ["Too long"]

    page.locator("#fb-correction textarea").fill("Your dog is called Biscuit.")
    page.locator("#fb-correct").click()
    page.locator("#chatbot").get_by_text("Your dog is called Biscuit.").wait_for()
    # one row of buttons: the answer's; the correction note below it has none
    visible = [b for b in page.locator("#chatbot .message-buttons-left button[aria-label='Like']").all()
               if b.is_visible()]
    assert len(visible) == 1
    page.screenshot(path="/tmp/assistant-ui-chat.png")

    # the pencil's edit box takes the chat's width, not ~160 px
    page.locator(ANSWERS).first.hover()
    page.locator("#chatbot .message-buttons-left button[aria-label='Edit'] >> visible=true").first.click()
    box = page.locator("#chatbot textarea.edit-textarea").first.bounding_box()
    assert box["width"] > 600, box

    page.get_by_role("tab", name="Versions").click()
    page.locator("#promote-none").get_by_text("Nothing to promote").wait_for()  # the tab's refresh is done
    page.locator("#rollback-none").get_by_text("Nothing to roll back to").wait_for()
    assert page.locator("#versions-empty").get_by_text("No versions yet").is_visible()
    assert not page.locator("#versions-table").is_visible()  # no "1 | 2 | 3" headers
    assert not page.locator("#promote-pick").is_visible() and not page.locator("#rollback-pick").is_visible()
    page.evaluate("document.querySelectorAll('.toast-wrap').forEach(t => t.remove())")  # docs/ screenshots
    page.screenshot(path="/tmp/assistant-ui-versions.png", full_page=True)

    page.get_by_role("tab", name="What it knows about me").click()
    table = page.locator("#knows-table")
    wait_for(lambda: table.is_visible() and "Your dog is called Biscuit." in table.inner_text(),
             what="the correction in the list")
    assert "waiting for the next learning cycle" in table.inner_text()
    assert turn["id"] not in table.inner_text()
    assert "today" in table.inner_text()  # the browser's own clock, readable
    page.screenshot(path="/tmp/assistant-ui-knows.png", full_page=True)

    # editing an item writes a new correction; the old one reads superseded
    page.locator("#knows-pick input").click()
    page.get_by_role("option").first.click()
    edit = page.locator("#knows-edit textarea")
    wait_for(lambda: edit.input_value() == "Your dog is called Biscuit.", what="the item's answer in the edit box")
    edit.fill("Your dog is called Rex.")
    page.locator("#knows-save-edit").click()
    wait_for(lambda: "Saved" in page.locator("#knows-notice").inner_text(), what="the edit to be saved")
    wait_for(lambda: "superseded by a later correction" in table.inner_text(), what="the old one superseded")

    # the Import box: a TRL preference line is logged as a correction
    page.locator("#knows-import-box").get_by_text("Import what you already have").click()
    upload = tmp_path / "my-feedback.jsonl"
    upload.write_text('{"prompt": [{"role": "user", "content": "What tea do I like?"}], '
                      '"chosen": [{"role": "assistant", "content": "Lapsang souchong."}], '
                      '"rejected": [{"role": "assistant", "content": "Earl Grey."}]}\n')
    page.locator("#knows-import-file input[type=file]").set_input_files(str(upload))
    page.locator("#knows-import").click()
    wait_for(lambda: "1" in page.locator("#knows-import-notice").inner_text(), what="the import report")
    wait_for(lambda: "Lapsang souchong." in table.inner_text(), what="the imported correction in the list")
    page.locator("#knows-import-box").screenshot(path="/tmp/assistant-ui-import.png")


def test_settings_stay_after_a_reload(server, browser):
    """Issue 27 item 4: the chat's recall toggle and the learning schedule survive a page reload."""
    from assistant import configure

    srv, runtime = server
    # Values that differ from what the page is built with: seeing them proves the page's load
    # handlers ran, so a late one cannot overwrite what the test sets (it did once, under load).
    configure.save_chat_setting(runtime, "default_temperature", 0.35)
    configure.set_value(runtime.db, "learn.min_new_feedback", 7)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(srv.url)
    page.locator("#settings").get_by_text("Settings").click()
    recall = page.locator("#recall input[type=checkbox]")
    wait_for(lambda: page.locator("#temperature input[type=number]").input_value() == "0.35",
             what="the stored chat settings to load")
    assert recall.is_checked()
    recall.uncheck()
    wait_for(lambda: configure.stored(runtime.db, configure.SECTIONS["chat"]).get("recall") is False,
             what="the toggle to be stored")
    page.get_by_role("tab", name="Learning").click()
    page.locator("#learn-settings").get_by_text("Schedule and gate").click()
    box = page.locator("#setting-learn-min-new-feedback input")
    wait_for(lambda: box.input_value() == "7", what="the stored schedule to load")
    box.fill("3")
    wait_for(lambda: box.input_value() == "3", what="the new value in the box")
    page.locator("#learn-settings-save").click()
    # the store is the truth; a busy machine (the suite beside a benchmark) once took over 20 s
    wait_for(lambda: configure.stored(runtime.db, configure.SECTIONS["learn"]).get("min_new_feedback") == 3,
             timeout=60, what="the schedule to be stored")
    wait_for(lambda: "Saved: learn.min_new_feedback" in page.locator("#learn-settings-notice").inner_text(),
             what="the schedule's notice")
    page.locator("#learn-settings").screenshot(path="/tmp/assistant-ui-schedule.png")  # docs/ screenshots

    page.reload()
    page.locator("#settings").get_by_text("Settings").click()
    page.locator("#chatbot").wait_for()
    wait_for(lambda: not page.locator("#recall input[type=checkbox]").is_checked(), what="recall off after reload")
    page.get_by_role("tab", name="Learning").click()
    page.locator("#learn-settings").get_by_text("Schedule and gate").click()
    wait_for(lambda: page.locator("#setting-learn-min-new-feedback input").input_value() == "3",
             what="the schedule after reload")
