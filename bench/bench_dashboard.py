"""How fast the dashboard is on this machine: first paint in a browser, and the live update per slider move.

    python bench/bench_dashboard.py [--out bench/results/dashboard_cpu.json] [--no-browser]

* Browser: ``streamlit run`` in a fresh process (cold imports, cold caches), headless Chromium opens the page: the
  first paint is the time from navigation until the cards and the whole explore view are drawn; then
  the slider moves below made with the keyboard, each timed from the key press until the live panel's last line
  names the new point (the whole view redrawn; the other fit's row of the side-by-side table follows after it),
  fitted to the kernel, then the same moves fitted to the outputs.
* Live update: the app in ``streamlit.testing.v1.AppTest`` (the server side of a rerun, no browser); the KT and CP
  sliders move through 10 positions never computed before (each a new decomposition, evaluation and latency
  measurement); the median of the rerun times. Layers: the offline digits CNN's ``conv4`` (64x64x3x3 at 8x8) and
  a 256x256x3x3 layer at 14x14 (``layer3.1.conv1`` of a ResNet-18 with random weights, seeded into a temporary
  TORCH_HOME, with real activations of 16 ImageNet-style images).

Prints a table and writes the figures, with the machine and its load, as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboard" / "app.py"
CHROMIUM = Path(os.environ.get("KCP_CHROMIUM", "/usr/bin/chromium"))
# How long the browser waits for a view before the run fails.
WAIT_MS = int(os.environ.get("KCP_BENCH_WAIT_MS", "120000"))
# One step at a time, as a user drags: every position is new to the caches. All within the app's budget: R=6 K=8
# (in the first release's list) is estimated at about 15 s and now asks for a confirmation, so K goes to 7.
MOVES = [("kt", 3), ("cp", 5), ("kt", 4), ("cp", 6), ("kt", 5), ("cp", 7), ("kt", 6), ("cp", 3), ("kt", 1),
         ("cp", 2)]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


CAPTION_HAS = """([text]) => Array.from(document.querySelectorAll('[data-testid="stCaptionContainer"]'))
    .some(c => c.innerText.includes(text)) ? performance.now() : false"""


# What the page says when a view does not come: its messages, errors and captions.
SHOWN = """() => Array.from(document.querySelectorAll(
    '[data-testid="stAlert"], [data-testid="stException"], [data-testid="stCaptionContainer"]'))
    .map(e => e.innerText.slice(0, 300))"""


def _seen_after(page, text: str, start_ms: float) -> float:
    """Seconds from ``start_ms`` (the page's clock) until a caption containing ``text`` is drawn.

    Checked in the page on every animation frame, so the figure is not rounded up by Playwright's own polling.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        hit = page.wait_for_function(CAPTION_HAS, arg=[text], polling="raf", timeout=WAIT_MS)
    except PlaywrightTimeout:
        shown = page.evaluate(SHOWN)
        raise TimeoutError(f"{text!r} not drawn within {WAIT_MS / 1000:.0f} s; the page shows {shown}") from None
    return (hit.json_value() - start_ms) / 1000


@contextlib.contextmanager
def streamlit_server(cache_dir: str) -> Iterator[tuple[subprocess.Popen, int, float]]:
    """A fresh ``streamlit run`` of the app on a free port: ``(process, port, seconds until healthy)``; stopped on
    exit (killed if a script thread still waits on a worker)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP.relative_to(REPO)), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env={**os.environ, "KCP_CACHE_DIR": cache_dir}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                if time.perf_counter() - started > 120:
                    raise TimeoutError("streamlit did not start within 120 s") from None
                time.sleep(0.1)
        yield proc, port, time.perf_counter() - started
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def browser(cache_dir: str) -> dict:
    """On a freshly started server: seconds from opening the page to the drawn cards, then the same 10 slider
    moves as below made with the keyboard, each timed until the view shows the new point."""
    from playwright.sync_api import sync_playwright

    with streamlit_server(cache_dir) as (_, port, healthy), sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/")
        cards = page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=\"stMetricValue\"]').length >= 6 && performance.now()",
            polling="raf", timeout=120_000).json_value() / 1000
        done = _seen_after(page, "View updated for R=2 K=4 in", 0.0)
        page.wait_for_selector('[data-testid="stStatusWidgetRunningIcon"]', state="detached", timeout=WAIT_MS)
        moves = {"kernel": browser_moves(page, MOVES)}
        # Fitted to the outputs: the same moves again from where they ended, every point new to this fit.
        r, k = (int(page.get_by_role("slider", name=n).input_value()) for n in ("KT rank R", "CP rank K"))
        page.get_by_test_id("stSidebarUserContent").get_by_text("outputs on real images", exact=True).click()
        _seen_after(page, f"View updated for R={r} K={k} in", page.evaluate("() => performance.now()"))
        page.wait_for_selector('[data-testid="stStatusWidgetRunningIcon"]', state="detached", timeout=300_000)
        moves["outputs"] = browser_moves(page, MOVES)
        chromium.close()
    return {"server_start_s": round(healthy, 2), "cards_drawn_s": round(cards, 2), "view_drawn_s": round(done, 2),
            "clock": "from navigation start (first paint) and from the key press (moves), timed in the page",
            "layer": "digits-cnn conv4", "moves": [f"{w}={v}" for w, v in MOVES],
            "move_s": moves["kernel"], "median_move_s": round(statistics.median(moves["kernel"]), 3),
            "move_s_fit_outputs": moves["outputs"],
            "median_move_s_fit_outputs": round(statistics.median(moves["outputs"]), 3)}


def browser_moves(page, moves: list[tuple[str, int]]) -> list[float]:
    """Each slider move made with the keyboard, timed from the key press until the view names the new point."""
    seconds = []
    for which, value in moves:
        slider = page.get_by_role("slider", name="KT rank R" if which == "kt" else "CP rank K")
        current = int(slider.input_value())
        other = int(page.get_by_role("slider", name="CP rank K" if which == "kt" else "KT rank R").input_value())
        r, k = (value, other) if which == "kt" else (other, value)
        slider.focus()
        start = page.evaluate("() => performance.now()")
        for _ in range(abs(value - current)):
            page.keyboard.press("ArrowRight" if value > current else "ArrowLeft")
        # The live panel's last line names the point it was drawn for: then the whole view is updated.
        seconds.append(round(_seen_after(page, f"View updated for R={r} K={k} in", start), 3))
    return seconds


def live(model: str | None, layer: str | None) -> dict:
    """Median rerun time over MOVES for one layer, in AppTest."""
    from streamlit.testing.v1 import AppTest

    from dashboard.components.sidebar import widget_key

    at = AppTest.from_file(str(APP), default_timeout=600)
    t = time.perf_counter()
    at.run()
    if model is not None:
        at.selectbox(key=widget_key("model")).set_value(model).run()
    if layer is not None:
        key = next(s.key for s in at.selectbox if s.key.startswith("_layer::"))
        at.selectbox(key=key).set_value(layer).run()
    opened = time.perf_counter() - t
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    asked: list[str] = []
    times, inside, drawn = slider_moves(at, asked)
    shown = {m.label: m.value for m in at.metric}
    return {"open_s": round(opened, 2), "moves": [f"{w}={v}" for w, v in MOVES],
            "rerun_s": [round(x, 3) for x in times], "median_rerun_s": round(statistics.median(times), 3),
            "cards_s": drawn, "median_cards_s": round(statistics.median(drawn), 3), "confirmed": asked,
            "page_s": inside, "median_page_s": round(statistics.median(inside), 3), "last_cards": shown}


def slider_moves(at, asked: list[str] | None = None) -> tuple[list[float], list[float], list[float]]:
    """Each of MOVES on an open app: the rerun's wall time (to the end of the script, the other fit's row of the
    side-by-side table included), the time the page itself reports for the update, and the time until the new
    point's cards were drawn (the script's call that draws them returned). A point the app asks about first (its
    estimate is over the app's budget) is confirmed with the page's button, and that second rerun counts in the
    move's times; the move is then listed in ``asked``."""
    from dashboard.components import cards
    from dashboard.components.sidebar import widget_key

    times, inside, drawn = [], [], []
    show, shown = cards.show, []

    def timed_show(*args, **kwargs) -> None:
        show(*args, **kwargs)
        shown.append(time.perf_counter())

    cards.show = timed_show
    try:
        for which, value in MOVES:
            slider = at.slider(key=widget_key("kt_rank" if which == "kt" else "cp_rank"))
            shown.clear()
            t = time.perf_counter()
            slider.set_value(value).run()
            confirm = [b for b in at.button if b.label == "Compute it anyway"]
            if confirm and not any("View updated for" in c.value for c in at.caption):
                confirm[0].click().run()
                if asked is not None:
                    asked.append(f"{which}={value}")
            times.append(time.perf_counter() - t)
            assert not at.exception, [e.value for e in at.exception]
            note = next(c.value for c in at.caption if "View updated for" in c.value)
            inside.append(float(note.rsplit(" in ", 1)[1].split(" s")[0]))
            drawn.append(round(shown[-1] - t, 3))
    finally:
        cards.show = show
    return times, inside, drawn


def seed_resnet18(home: Path) -> None:
    import torch
    from torchvision import models as tvm

    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(tvm.resnet18().state_dict(), folder / tvm.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "dashboard_cpu.json"))
    parser.add_argument("--no-browser", action="store_true", help="skip the first-paint measurement")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    work = Path(tempfile.mkdtemp(prefix="kcp-bench-"))
    os.environ["KCP_CACHE_DIR"] = str(work / "cache")
    load_before = os.getloadavg()
    report: dict = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}}
    if not args.no_browser and CHROMIUM.is_file():
        report["browser"] = browser(str(work / "cache-browser"))
    os.environ["TORCH_HOME"] = str(work / "torch_home")
    seed_resnet18(work / "torch_home")
    import torch
    from _common import day

    report["machine"].update(torch=torch.__version__, torch_threads=torch.get_num_threads(), **day())
    report["live"] = {
        "digits-cnn conv4 64x64x3x3 @8x8": live(None, None),
        "resnet18 (random) layer3.1.conv1 256x256x3x3 @14x14": live("resnet18", "layer3.1.conv1"),
    }
    report["machine"]["loadavg_before_after"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]

    print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, torch "
          f"{report['machine']['torch']} ({report['machine']['torch_threads']} threads); load average before/after "
          f"{report['machine']['loadavg_before_after']}")
    if "browser" in report:
        b = report["browser"]
        print(f"browser, first paint: server healthy {b['server_start_s']} s after start; cards drawn "
              f"{b['cards_drawn_s']} s and the whole view {b['view_drawn_s']} s after opening the page")
        for fit, suffix in (("kernel", ""), ("outputs", "_fit_outputs")):
            print(f"browser, digits conv4 fitted to the {fit}: median {b['median_move_s' + suffix]:.3f} s from key "
                  f"press to the updated view; per move " + " ".join(f"{x:.2f}" for x in b["move_s" + suffix]))
    print(f"{'layer':<55} {'median cards':>13} {'median rerun':>13} {'median page':>12}  cards per move (s)")
    for name, r in report["live"].items():
        print(f"{name:<55} {r['median_cards_s']:>12.3f}s {r['median_rerun_s']:>12.3f}s {r['median_page_s']:>11.3f}s  "
              + " ".join(f"{x:.2f}" for x in r["cards_s"])
              + (f"  ({len(r['confirmed'])} asked for a confirmation first)" if r["confirmed"] else ""))
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
