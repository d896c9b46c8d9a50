"""A real browser (Debian's headless Chromium via Playwright) signs in, judges a pair with the
keyboard, and the judgement is in the database. Saves a screenshot as a test artifact."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from onbrand.annotate import service
from onbrand.annotate.db import Judgement, open_db

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, brand_facts):
    import uvicorn

    from onbrand.annotate.app import create_app

    url = f"sqlite:///{tmp_path / 'browser.db'}"
    app = create_app(url, [brand_facts])
    with open_db(url)() as s:
        project = service.get_project(s, "aurora")
        token = service.add_annotator(s, project, "alice")[1]
        admin = service.set_admin_token(s)
        pair = {
            "prompt": [
                {"role": "user", "content": "My Dawn lamp stopped working <script>alert('x')</script>"}
            ],
            "a": "I'm sorry about that. Please hold the button for 10 seconds to reset it; if it stays dark, "
            "reply here and we will send a replacement.",
            "b": "THAT NEVER HAPPENS!!! Our lamps are 100% guaranteed, unlike the cheap competitors.",
            "channel": "complaint_reply",
        }
        service.add_tasks(s, project, [pair])
        service.assign(s, project, overlap=0.0)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        if time.time() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", token, url, admin
    srv.should_exit = True
    thread.join(timeout=10)


def test_browser_login_judge_with_keyboard(server, tmp_path):
    from playwright.sync_api import sync_playwright

    base, token, url, admin = server
    dialogs = []
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            args=ARGS,
            headless=True,
            viewport={"width": 1280, "height": 860},
        )
        try:
            page = ctx.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{base}/login")
            page.fill("#token", token)
            page.click("#login")
            page.wait_for_url(f"{base}/annotate")
            assert "0 / 1 judged" in page.inner_text("#progress")
            assert "<script>alert('x')</script>" in page.inner_text("main")  # shown as text
            page.check("input[value=tone]")
            page.check("input[value=guarantee]")
            page.locator("body").click(position={"x": 5, "y": 5})  # focus the page, not a checkbox
            shot = tmp_path / "annotate_screenshot.png"
            page.screenshot(path=str(shot), full_page=True)
            left = page.inner_text("#cand-left")
            key = "1" if left.startswith("I'm sorry") else "2"  # the good answer, wherever it is shown
            with page.expect_navigation():
                page.keyboard.press(key)
            page.wait_for_selector("#empty")
            assert "1 / 1 judged" in page.inner_text("#progress")
            # The admin signs in on the same page and sees the judgement in the dashboard.
            page.click("text=Sign out")
            page.fill("#token", admin)
            page.click("#login")
            page.wait_for_url(f"{base}/admin")
            assert "1 judgements on 1 tasks" in page.inner_text("main")
            page.screenshot(path=str(tmp_path / "annotate_admin_screenshot.png"), full_page=True)
        finally:
            ctx.close()
    assert dialogs == []  # the <script> in the prompt never ran
    # The screenshots are test artifacts: kept under pytest's tmp dir, and copied to
    # $ONBRAND_TEST_ARTIFACTS when set (CI sets it), never into the source tree.
    if os.environ.get("ONBRAND_TEST_ARTIFACTS"):
        out = Path(os.environ["ONBRAND_TEST_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "annotate_screenshot.png")
        shutil.copy(tmp_path / "annotate_admin_screenshot.png", out / "annotate_admin_screenshot.png")
    assert shot.stat().st_size > 10_000
    with open_db(url)() as s:
        js = list(s.scalars(select(Judgement)))
    assert len(js) == 1
    j = js[0]
    assert j.screen_choice == ("left" if key == "1" else "right")
    assert j.choice == "a" and j.reason_tags == ["guarantee", "tone"]
