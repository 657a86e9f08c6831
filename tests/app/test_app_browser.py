"""The app in headless Chromium (Debian's /usr/bin/chromium driven by Python playwright; no browser download): pick a
sample, see the views, ask a question, read the answer, save a screenshot.

Skips when playwright or chromium is missing (`make setup` installs playwright, `make test` chromium). Set
FUSION_APP_SCREENSHOT=PATH to also write the screenshot there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from app_helpers import expected_count

CHROMIUM = os.environ.get("FUSION_CHROMIUM", "/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup)")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which("chromium"):
    pytest.skip(f"no chromium at {CHROMIUM} (make browser, part of make test, installs it)", allow_module_level=True)


def _value(page, selector: str) -> str:
    return page.locator(selector).first.input_value()


def test_pick_a_sample_see_the_views_ask_and_read_the_answer(app_server, tmp_path):
    url, state = app_server
    browser_nusc = state.browser.nusc
    samples = state.browser.samples(state.browser.scenes()[0]["token"])
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = chromium.new_page(viewport={"width": 1600, "height": 1200})
            page.goto(url, wait_until="load", timeout=60_000)
            token_box = "#sample-token textarea, #sample-token input"
            page.wait_for_function(f"() => document.querySelector('{token_box.split(',')[0]}')?.value.length > 0",
                                   timeout=60_000)  # fmt: skip
            assert _value(page, token_box) == samples[0]
            # Pick the next sample of the scene: the token and the views follow.
            page.get_by_role("button", name="next ▶").click()
            page.wait_for_function(
                f"() => document.querySelector('#sample-token textarea').value === '{samples[1]}'", timeout=60_000
            )
            page.wait_for_function("() => document.querySelectorAll('#cameras img').length >= 6", timeout=60_000)
            page.wait_for_function("() => document.querySelector('#bev img')?.complete", timeout=60_000)
            # Playback: play moves on through the scene (one sample a second), pause stops it.
            page.get_by_role("button", name="▶ play").click()
            page.wait_for_function(
                f"() => document.querySelector('#sample-token textarea').value === '{samples[2]}'", timeout=60_000
            )
            page.get_by_role("button", name="⏸ pause").click()
            page.wait_for_timeout(2500)
            current = _value(page, token_box)
            page.wait_for_timeout(1500)
            # stopped where it was, on a sample of the scene (playback loops: a slow machine may have wrapped around)
            assert _value(page, token_box) == current and current in samples
            # Ask about the sample; the answer (the reference QA counts the annotated cars) shows up.
            page.locator("#question textarea").fill("How many cars are there?")
            page.locator("#ask").click()
            page.wait_for_function("() => document.querySelector('#answer textarea').value.length > 0", timeout=60_000)
            answer = _value(page, "#answer textarea")
            assert answer == str(expected_count(browser_nusc, current, "car"))
            page.wait_for_function("() => document.querySelector('#chat')?.innerText.includes('(score 0.90)')",
                                   timeout=60_000)  # fmt: skip
            page.wait_for_timeout(1500)  # the redraw with the grounded objects outlined
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 50_000
            if os.environ.get("FUSION_APP_SCREENSHOT"):
                shutil.copyfile(shot, Path(os.environ["FUSION_APP_SCREENSHOT"]))
        finally:
            chromium.close()
