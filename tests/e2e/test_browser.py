"""End to end: ``streamlit run`` on a free loopback port, driven by headless Chromium through Playwright.

Uses Debian's Chromium (installed by ``.ci/run``), never a downloaded browser. Screenshots, timings and the server
log go to ``tests/e2e/artifacts/``; with ``KCP_DOCS_SCREENSHOT=1`` the explore page is also saved as
``docs/screenshot.png`` for the README (the opening point, digits-cnn conv4 at KT rank 2 and CP rank 4, after a
round trip through two other points).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path(os.environ.get("KCP_CHROMIUM", "/usr/bin/chromium"))
VIEWPORT = {"width": 1400, "height": 1000}

# A real server and browser: the same flows run in the fast lane through AppTest (tests/dashboard:
# test_moving_the_sliders_decomposes_again, test_grid_cancel_keeps_finished_points).
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"streamlit was not healthy within {timeout:.0f} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard served by ``streamlit run`` (its own result cache), stopped afterwards whatever happens."""
    tmp_path = tmp_path_factory.mktemp("server")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "streamlit.log").open("w")
    env = {**os.environ, "KCP_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(url, proc, timeout=60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "streamlit.log", ARTIFACTS / "streamlit.log")


def _wait_idle(page, timeout_ms: float) -> None:
    """Until Streamlit's running indicator (the running icon in the toolbar) is gone: the rerun has finished."""
    page.wait_for_selector('[data-testid="stStatusWidgetRunningIcon"]', state="detached", timeout=timeout_ms)


CAPTION_HAS = """([text]) => Array.from(document.querySelectorAll('[data-testid="stCaptionContainer"]'))
    .some(c => c.innerText.includes(text)) ? performance.now() : false"""


def _drawn_at(page, text: str, timeout_ms: float) -> float:
    """The page-clock time (ms) at which a caption containing ``text`` is drawn, checked every animation frame.

    The live panel's last line names the point it was drawn for ("View updated for R=3 K=4 in ..."), so this is
    when the whole view has been redrawn.
    """
    return page.wait_for_function(CAPTION_HAS, arg=[text], polling="raf", timeout=timeout_ms).json_value()


def test_moving_a_slider_updates_the_metrics(server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            failure = ARTIFACTS / "failure.png"
            failure.unlink(missing_ok=True)
            page.goto(server)
            first_paint = _drawn_at(page, "View updated for R=2 K=4 in", 60_000) / 1000
            _wait_idle(page, 60_000)
            values = page.get_by_test_id("stMetricValue")
            expect(values).to_have_count(6)
            before = values.all_inner_texts()

            slider = page.get_by_role("slider", name="KT rank R")
            expect(slider).to_have_value("2")
            slider.focus()
            pressed = page.evaluate("() => performance.now()")
            page.keyboard.press("ArrowRight")
            update = (_drawn_at(page, "View updated for R=3 K=4 in", 30_000) - pressed) / 1000
            _wait_idle(page, 30_000)
            expect(slider).to_have_value("3")
            expect(values).to_have_count(6)
            expect(values.first).not_to_have_text(before[0])  # parameters moved
            expect(values.nth(2)).not_to_have_text(before[2])  # and the kernel error
            after = values.all_inner_texts()

            cp_slider = page.get_by_role("slider", name="CP rank K")
            cp_slider.focus()
            pressed = page.evaluate("() => performance.now()")
            page.keyboard.press("ArrowRight")
            second_update = (_drawn_at(page, "View updated for R=3 K=5 in", 30_000) - pressed) / 1000
            _wait_idle(page, 30_000)
            expect(values.nth(2)).not_to_have_text(after[2])
            after = values.all_inner_texts()
            expect(page.get_by_test_id("stException")).to_have_count(0)

            # A second browser session has its own sliders and cards.
            other = browser.new_context(viewport=VIEWPORT).new_page()
            other.goto(server)
            _drawn_at(other, "View updated for R=2 K=4 in", 60_000)
            # A new browser context loads the widgets' code lazily (grey placeholders meanwhile): seconds under load.
            expect(other.get_by_role("slider", name="KT rank R")).to_have_value("2", timeout=60_000)
            expect(other.get_by_test_id("stMetricValue").first).to_have_text(before[0], timeout=60_000)
            expect(slider).to_have_value("3")
            expect(cp_slider).to_have_value("5")
            expect(values.first).to_have_text(after[0])

            # Back to the opening point: served from the cache, the cards are the first ones again.
            cp_slider.focus()
            page.keyboard.press("ArrowLeft")
            _drawn_at(page, "View updated for R=3 K=4 in", 30_000)
            slider.focus()
            page.keyboard.press("ArrowLeft")
            _drawn_at(page, "View updated for R=2 K=4 in 0.", 30_000)
            _wait_idle(page, 30_000)
            expect(values.first).to_have_text(before[0])
            expect(values.nth(2)).to_have_text(before[2])

            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            page.screenshot(path=str(ARTIFACTS / "explore.png"))
            if os.environ.get("KCP_DOCS_SCREENSHOT"):
                (REPO / "docs").mkdir(exist_ok=True)
                shutil.copyfile(ARTIFACTS / "explore.png", REPO / "docs" / "screenshot.png")
            (ARTIFACTS / "timings.json").write_text(json.dumps(
                {"first_paint_s": round(first_paint, 2), "slider_updates_s": [round(update, 2),
                                                                              round(second_update, 2)],
                 "before": before, "after": after}, indent=1))
        except Exception:
            page.screenshot(path=str(failure))
            raise
        finally:
            browser.close()


def test_a_grid_can_be_cancelled_and_keeps_its_points(server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"{server}/grid")
            compute = page.get_by_role("button", name="Compute grid")
            expect(compute).to_be_enabled(timeout=60_000)
            _wait_idle(page, 60_000)
            compute.click()
            expect(page.get_by_text(re.compile(r"\d+ of \d+ points"))).to_be_visible(timeout=60_000)
            page.get_by_role("button", name="Cancel").click()
            expect(page.get_by_text(re.compile(r"Cancelled: \d+ of \d+ points kept"))).to_be_visible(timeout=60_000)
            _wait_idle(page, 60_000)
            expect(page.get_by_test_id("stException")).to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "grid-cancelled.png"))
        finally:
            browser.close()
