"""A real browser (Debian's headless Chromium via Playwright) signs in, judges a pair, and the
judgement is in the database: with JavaScript on (keyboard shortcuts) and off (the plain form
buttons; every form carries its CSRF token). Saves screenshots as test artifacts.

Without Chromium or Playwright the test skips, except under ``CI=true``, where it fails: a CI
image that lost the browser must not turn this check silently green."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from onbrand.annotate import access, service
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

pytestmark = [pytest.mark.browser]


def _need_browser() -> None:
    missing = [] if CHROMIUM.exists() else [f"Debian's chromium at {CHROMIUM}"]
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        reason = "needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{reason} (CI=true: a missing browser is a failure, not a skip)")
        pytest.skip(reason)


@pytest.fixture
def server(tmp_path, brand_facts, live_server):
    _need_browser()
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
    with live_server(app) as base:
        yield base, token, url, admin


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_browser_login_judge(server, tmp_path, javascript):
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
            java_script_enabled=javascript,
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
            suffix = "" if javascript else "_nojs"
            shot = tmp_path / f"annotate_screenshot{suffix}.png"
            page.screenshot(path=str(shot), full_page=True)
            left = page.inner_text("#cand-left")
            key = "1" if left.startswith("I'm sorry") else "2"  # the good answer, wherever it is shown
            with page.expect_navigation():
                if javascript:
                    page.keyboard.press(key)
                else:  # no script: the form's own submit buttons (and its hidden CSRF field)
                    page.click("#btn-left" if key == "1" else "#btn-right")
            page.wait_for_selector("#empty")
            assert "1 / 1 judged" in page.inner_text("#progress")
            # The admin signs in on the same page and sees the judgement in the dashboard.
            page.click("text=Sign out")
            page.fill("#token", admin)
            page.click("#login")
            page.wait_for_url(f"{base}/admin")
            assert "1 judgements on 1 tasks" in page.inner_text("main")
            admin_shot = tmp_path / f"annotate_admin_screenshot{suffix}.png"
            page.screenshot(path=str(admin_shot), full_page=True)
            # Member management with the page's own forms: add a reviewer, read the token once.
            form = "form[id^=add-member-]"
            page.fill(f"{form} input[name=name]", "rita")
            page.select_option(f"{form} select[name=role]", "reviewer")
            with page.expect_navigation():
                page.click(f"{form} button[type=submit]")
            new_token = page.inner_text("#new-token")
            page.click("text=Back to admin")
            page.wait_for_url(f"{base}/admin")
            assert "rita" in page.inner_text("main")
        finally:
            ctx.close()
    assert dialogs == []  # the <script> in the prompt never ran
    # The screenshots are test artifacts: kept under pytest's tmp dir, and copied to
    # $ONBRAND_TEST_ARTIFACTS when set (CI sets it), never into the source tree.
    if os.environ.get("ONBRAND_TEST_ARTIFACTS"):
        out = Path(os.environ["ONBRAND_TEST_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / shot.name)
        shutil.copy(admin_shot, out / admin_shot.name)
    assert shot.stat().st_size > 10_000
    with open_db(url)() as s:
        who = access.authenticate(s, new_token)
        assert (who.name, who.role) == ("rita", "reviewer")
        js = list(s.scalars(select(Judgement)))
    assert len(js) == 1
    j = js[0]
    assert j.screen_choice == ("left" if key == "1" else "right")
    assert j.choice == "a" and j.reason_tags == ["guarantee", "tone"]
