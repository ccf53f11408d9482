"""The README's screenshots of a home that has learned, taken in headless Chromium.

    python docs/screenshots.py --home DIR [--out docs]

`DIR` is an assistant home with live versions and experts, such as the one a season run leaves
(`bench/season.py` prints it). It is not changed: the server runs on a copy of its database, with
its adapters, models and cache linked. The chat asks the question of the newest expert of the
active version and unfolds the note above the reply ("Learned from"), corrects the reply (on
the copy: "You wear EU size 39 shoes." becomes "... 40 ...", the first number one higher) and
takes the page, then the *Versions* and *What it knows about me* tabs whole. Writes
screenshot-answered-by.png, screenshot-chat.png, screenshot-versions.png and
screenshot-knows.png under `--out`.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from benchkit import ROOT, manual_learning  # noqa: E402 - offline loading, the project on sys.path

from assistant.terminal import backup_database  # noqa: E402
from store import adapters, open_db  # noqa: E402
from store.manifest import read_experts  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def copy_home(home: Path, into: Path) -> None:
    """`into` as `home` with its own copy of the database (consistent while in use) and the
    home's directories linked. The copy never starts a learning cycle by itself (the benchmarks'
    `manual_learning`): it would write a version into the home's own adapters directory."""
    backup_database(home / "assistant.db", into / "assistant.db")
    for entry in home.iterdir():
        if entry.is_dir():
            (into / entry.name).symlink_to(entry)
    manual_learning(into)


def newest_expert_question(home: Path) -> str:
    """The question of the newest expert of the active version of the home (or copy) at `home`."""
    active = adapters.active_adapter(open_db(home / "assistant.db"))
    if active is None:
        sys.exit("the home has no active version: learn first")
    experts = read_experts(active["path"])
    if not experts:
        sys.exit("the home's active version has no experts")
    return max(experts, key=lambda e: e.get("trained_in", 0))["prompt"]


def changed(reply: str) -> str:
    """`reply` with its first number one higher (or " Not any more." added): a correction to show."""
    match = re.search(r"\d+", reply)
    if match is None:
        return reply + " Not any more."
    return reply[:match.start()] + str(int(match.group()) + 1) + reply[match.end():]


def wait_until_up(url: str, server: subprocess.Popen, timeout_s: float = 180.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if server.poll() is not None:
            sys.exit(f"the server exited with {server.returncode}")
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2)
            return
        except OSError:
            time.sleep(1)
    sys.exit("the server did not start in time")


def shoot(url: str, question: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else None, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.locator("#message textarea").fill(question)
        page.locator("#send").click()
        title = page.locator("#chatbot .thought-group .title").first
        title.get_by_text("answered by").wait_for(timeout=120_000)  # "answering…" until the reply ends
        answer = page.locator("#chatbot .message.bot:not(:has(.thought-group))").last
        for _ in range(100):  # the reply's text lands a moment after the note's title
            if any(c.isalnum() for c in answer.inner_text()):
                break
            time.sleep(0.2)
        # the turn's last update names the reply under "Feedback on": then the chat is idle
        page.locator("#feedback-target").get_by_text(answer.inner_text().strip()[:20]).wait_for()
        learned = page.locator("#chatbot").get_by_text("Learned from")
        for _ in range(5):  # unfold it (a click while the chat still re-renders can be lost)
            title.click()
            time.sleep(1)
            if learned.is_visible():
                break
        learned.wait_for()
        page.locator("#chatbot").screenshot(path=str(out / "screenshot-answered-by.png"))
        page.locator("#fb-correction textarea").fill(changed(answer.inner_text().strip()))
        page.locator("#fb-correct").click()
        page.locator("#notice").get_by_text("Correction saved").wait_for(timeout=60_000)
        page.screenshot(path=str(out / "screenshot-chat.png"), full_page=True)
        for tab, name in (("Versions", "screenshot-versions.png"), ("What it knows about me", "screenshot-knows.png")):
            page.get_by_role("tab", name=tab).click()
            time.sleep(5)  # the tab fills its tables when shown
            page.evaluate("document.querySelectorAll('.toast-wrap').forEach(t => t.remove())")
            page.screenshot(path=str(out / name), full_page=True)
        browser.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--port", type=int, default=7893)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        copy_home(args.home, Path(tmp))
        question = newest_expert_question(Path(tmp))  # opening a database migrates it: the copy's
        env = {**os.environ, "ASSISTANT_HOME": tmp}
        server = subprocess.Popen([str(ROOT / ".venv/bin/assistant"), "serve", "--port", str(args.port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{args.port}"
            wait_until_up(url, server)
            shoot(url, question, args.out)
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"asked {question!r}; screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
