"""End to end in a real browser: `runtime serve --view` (the runtime and, in its own process, the
viewer subscribed to its pose stream), the dataset replay streaming into it with the LiDAR stopped
part way, and the page loaded in headless Chromium (the system browser, through selenium)."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from runtime.config import free_loopback_port
from runtime.view.browser import find_browser
from sensors.core import schema
from tests.test_serve_e2e import ServeProcess, export_tiny_model

REPLAY_FRAMES = 180          # 18 s at rate 1
LIDAR_STOP_S = 8


def _need_browser():
    if find_browser() is None:
        msg = "headless Chromium test needs `chromium` and `chromedriver` (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; .ci/run installs them")
        pytest.skip(msg)
    pytest.importorskip("selenium")


def _wait(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def pixel_std(png: Path, box=None) -> float:
    """Standard deviation of the grey levels of a PNG (0 for a blank image)."""
    from PIL import Image

    img = Image.open(png).convert("L")
    if box is not None:
        img = img.crop(box)
    return float(np.asarray(img, np.float32).std())


@pytest.mark.slow
def test_serve_replay_view_in_headless_chromium(tiny_dataset, tmp_path):
    _need_browser()
    from selenium.webdriver.common.by import By

    from runtime.view.browser import headless_chromium
    from sensors.replay import replay

    model = export_tiny_model(tmp_path)
    view_port = free_loopback_port()
    url = f"http://127.0.0.1:{view_port}"
    with ServeProcess(model, tmp_path, "--view", str(view_port)) as srv:
        _wait(lambda: _http_ok(url + "/healthz"), 30, f"the viewer at {url}\n{srv.log.read_text()}")
        # The page first (it waits for the stream), then the sensors: the LiDAR fault comes at a
        # known time after the first data, however long the browser took to start.
        driver = headless_chromium()
        result, sender = {}, None
        try:
            driver.get(url + "/")
            _wait(lambda: driver.find_element(By.ID, "connection").text == "live", 20, "the page's live stream")
            sender = threading.Thread(target=lambda: result.update(stats=replay(
                tiny_dataset, srv.input, protocol="P1", split="S1", subset="all", rate=1.0,
                max_frames=REPLAY_FRAMES, faults=[f"lidar:stop@{LIDAR_STOP_S}"])), daemon=True)
            sender.start()
            started = time.monotonic()
            station = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "article.station"), 20,
                            "a station card with live data")[0]
            rows = station.find_elements(By.CSS_SELECTOR, "tr[data-modality]")
            assert [r.get_attribute("data-modality") for r in rows] == list(schema.MODALITIES)

            def tick() -> int:
                text = station.find_element(By.CSS_SELECTOR, ".tick").get_attribute("data-tick")
                return int(text) if text else -1

            first = _wait(lambda: tick() >= 0 and tick(), 10, "a tick on the page")
            later = _wait(lambda: tick() > first and tick(), 10, "the tick to change")
            assert later > first
            assert driver.find_element(By.ID, "connection").text == "live"
            # Before the fault RGB, LiDAR and WiFi are lit (mmWave comes and goes: a radar frame with no
            # detection is an absent modality), every row shows a contribution share and a score.
            seen: set[str] = set()

            def lit() -> set[str]:
                seen.update(r.get_attribute("data-modality") for r in rows
                            if "on" in r.find_element(By.CSS_SELECTOR, ".light").get_attribute("class").split())
                return seen
            try:
                _wait(lambda: {"rgb", "lidar", "wifi"} <= lit(),
                      max(0.5, LIDAR_STOP_S - (time.monotonic() - started)), "presence lights on", poll=0.05)
            except AssertionError as err:
                raise AssertionError(f"{err}: lit before the LiDAR stopped: {sorted(seen)}") from None
            for r in rows:
                assert r.find_element(By.CSS_SELECTOR, ".bar > span").text.endswith("%")
                assert 0.0 <= float(r.find_element(By.CSS_SELECTOR, ".score").text) <= 1.0
            # The LiDAR stops: its light goes out and its status says degraded, with the reason.
            lidar = station.find_element(By.CSS_SELECTOR, 'tr[data-modality="lidar"]')
            _wait(lambda: lidar.get_attribute("data-status") == "degraded" and
                  "on" not in lidar.find_element(By.CSS_SELECTOR, ".light").get_attribute("class").split(),
                  15, "the LiDAR fault on the page")
            _wait(lambda: "missing" in lidar.find_element(By.CSS_SELECTOR, ".status").text
                  or "stale" in lidar.find_element(By.CSS_SELECTOR, ".status").text, 5, "the reason of the fault")
            rgb = station.find_element(By.CSS_SELECTOR, 'tr[data-modality="rgb"]')
            _wait(lambda: "on" in rgb.find_element(By.CSS_SELECTOR, ".light").get_attribute("class").split(), 5,
                  "RGB still lit while the LiDAR is out")
            stats = driver.execute_script("return window.viewerStats")
            assert stats["frames"] >= 10
            # The 3D view drew something, and the page is not blank.
            shot = tmp_path / "viewer.png"
            assert driver.save_screenshot(str(shot))
            canvas = station.find_element(By.CSS_SELECTOR, ".scene canvas")
            r = canvas.rect
            box = (int(r["x"]), int(r["y"]), int(r["x"] + r["width"]), int(r["y"] + r["height"]))
            assert pixel_std(shot) > 5.0
            assert pixel_std(shot, box) > 1.0, "the 3D scene is blank"
        finally:
            driver.quit()
        if sender is not None:
            sender.join(timeout=30)
    assert "stats" in result and result["stats"].sent["rgb"] == REPLAY_FRAMES


@pytest.mark.slow
def test_recording_plays_back_with_a_time_slider(tmp_path):
    _need_browser()
    import subprocess
    import sys

    from selenium.webdriver.common.by import By

    from exporters.recorder import open_recorder
    from runtime.view.bench import skeleton_sequence
    from runtime.view.browser import headless_chromium

    joints = skeleton_sequence()
    path = tmp_path / "poses.npz"
    rec = open_recorder(path)
    for t in range(60):
        rec.write({"tick": 100 + t, "tick_ns": t * schema.FRAME_PERIOD_NS, "outcome": "fused", "latency_ns": 3_000_000,
                   "presence": np.array([1, int(t < 30), 1, 1], np.uint8), "joints": joints[t],
                   "degradation": np.array([0, float(t >= 30), 0, 0], np.float32),
                   "degraded": np.array([0, int(t >= 32), 0, 0], np.uint8),
                   "reasons": ["", "missing" if t >= 30 else "", "", ""],
                   "shares": np.array([0.4, 0.3, 0.2, 0.1], np.float32), "station": "gym-2",
                   **({"exercise": "squat", "session": "", "reps": t // 10,
                       "angles": np.array([90 + t, 80.0, np.nan], np.float32)} if t >= 20 else {})})
    rec.close()
    port = free_loopback_port()
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "view", "--recording", str(path), "--port", str(port)],
                            cwd=Path(__file__).resolve().parents[1])
    driver = None
    try:
        _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), 30, "runtime view --recording")
        driver = headless_chromium()
        driver.get(f"http://127.0.0.1:{port}/")
        slider = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#playback:not([hidden]) #slider"), 15,
                       "the playback bar")[0]
        assert slider.get_attribute("max") == "59"
        assert driver.find_element(By.ID, "connection").text == "recording"
        station = driver.find_element(By.CSS_SELECTOR, "article.station")
        assert station.find_element(By.CSS_SELECTOR, ".station-name").text == "gym-2"   # the recorded station
        tick = station.find_element(By.CSS_SELECTOR, ".tick")
        _wait(lambda: int(tick.get_attribute("data-tick")) > 100, 10, "playback to advance")
        driver.find_element(By.ID, "play").click()                     # pause, then seek with the slider
        driver.execute_script("const s = document.getElementById('slider'); s.value = 45;"
                              "s.dispatchEvent(new Event('input'));")
        _wait(lambda: tick.get_attribute("data-tick") == "145", 5, "the slider to seek to tick 145")
        rehab = station.find_element(By.CSS_SELECTOR, ".rehab")                 # recorded rehab outputs shown
        assert rehab.is_displayed()
        assert rehab.find_element(By.CSS_SELECTOR, '[data-rehab="reps"]').text == "4"
        assert "squat" in rehab.text and "135.0°" in rehab.text
        lidar = station.find_element(By.CSS_SELECTOR, 'tr[data-modality="lidar"]')
        _wait(lambda: lidar.get_attribute("data-status") == "degraded", 5, "the recorded LiDAR fault")
        assert "missing" in lidar.find_element(By.CSS_SELECTOR, ".status").text
        driver.execute_script("const s = document.getElementById('slider'); s.value = 5;"
                              "s.dispatchEvent(new Event('input'));")
        _wait(lambda: tick.get_attribute("data-tick") == "105", 5, "the slider to seek back")
        assert lidar.get_attribute("data-status") == "ok"
        assert not rehab.is_displayed()                                          # none recorded at that tick
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=10)


def colourfulness(png: Path, box) -> float:
    """Mean spread between the colour channels of a PNG region (0 for pure grey)."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB").crop(box), np.float32)
    return float((rgb.max(axis=2) - rgb.min(axis=2)).mean())


@pytest.mark.slow
def test_the_viewer_turns_stale_when_every_sensor_stops(tiny_dataset, tmp_path):
    """Every sensor stops 4 s into a replay: the runtime has nothing to fuse and publishes nothing.
    Within the silence limit the page stops looking live: the badge, the card's freshness with the
    age of the last pose (growing), every light off, the skeleton greyed; /readyz agrees. While
    live, hovering a joint names it."""
    _need_browser()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from runtime.view.browser import headless_chromium
    from runtime.view.frames import STALE_AFTER_S
    from sensors.replay import replay

    model = export_tiny_model(tmp_path)
    view_port = free_loopback_port()
    url = f"http://127.0.0.1:{view_port}"
    stop_s = 4
    with ServeProcess(model, tmp_path, "--view", str(view_port)) as srv:
        _wait(lambda: _http_ok(url + "/healthz"), 30, f"the viewer at {url}\n{srv.log.read_text()}")
        driver = headless_chromium()
        sender = None
        try:
            driver.get(url + "/")
            _wait(lambda: driver.find_element(By.ID, "connection").text == "live", 20, "the page's live stream")
            sender = threading.Thread(target=lambda: replay(
                tiny_dataset, srv.input, protocol="P1", split="S1", subset="all", rate=1.0, max_frames=100,
                faults=[f"{m}:stop@{stop_s}" for m in schema.MODALITIES]), daemon=True)
            sender.start()
            station = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "article.station"), 20,
                            "a station card with live data")[0]
            fresh = station.find_element(By.CSS_SELECTOR, ".freshness")
            _wait(lambda: station.find_element(By.CSS_SELECTOR, ".tick").get_attribute("data-tick") not in ("", "-"),
                  10, "a tick on the page")
            assert fresh.get_attribute("data-stale") == "false" and fresh.text == "live"
            # hover: the joint under the pointer is named
            canvas = station.find_element(By.CSS_SELECTOR, ".scene canvas")
            knee = schema.JOINT_INDEX["left_knee"]
            label = station.find_element(By.CSS_SELECTOR, ".joint-label")

            def hover_knee() -> bool:
                """Point at where the left knee is drawn now (the pose moves at 10 Hz: retried)."""
                p = driver.execute_script("return window.viewerProject(arguments[0], arguments[1])",
                                          station.get_attribute("data-station"), knee)
                ActionChains(driver).move_to_element_with_offset(canvas, int(p["x"] - canvas.rect["width"] / 2),
                                                                 int(p["y"] - canvas.rect["height"] / 2)).perform()
                shown = label.is_displayed() and label.get_attribute("data-joint") == "left_knee"
                return label.text if shown else ""

            assert _wait(hover_knee, 10, "a joint label naming the left knee on hover") == "left knee"
            ActionChains(driver).move_by_offset(0, int(canvas.rect["height"])).perform()   # off the canvas
            live_shot = tmp_path / "live.png"
            driver.save_screenshot(str(live_shot))
            r = canvas.rect
            box = (int(r["x"]), int(r["y"]), int(r["x"] + r["width"]), int(r["y"] + r["height"]))
            # every sensor stops: no pose any more; the page says so within the silence limit
            _wait(lambda: station.get_attribute("data-stale") == "true", stop_s + STALE_AFTER_S + 10,
                  "the card to turn stale")
            badge = driver.find_element(By.ID, "connection")
            assert badge.get_attribute("data-state") == "stale" and "no pose for" in badge.text
            assert station.find_element(By.CSS_SELECTOR, ".scene").get_attribute("data-skeleton") == "stale"
            rows = station.find_elements(By.CSS_SELECTOR, "tr[data-modality]")
            assert len(rows) == schema.N_MODALITIES
            for row in rows:
                assert "on" not in row.find_element(By.CSS_SELECTOR, ".light").get_attribute("class").split()
                assert row.find_element(By.CSS_SELECTOR, ".status").text == "no data"
            age = float(fresh.get_attribute("data-age-s"))
            assert age > STALE_AFTER_S and "last pose" in fresh.text
            _wait(lambda: float(fresh.get_attribute("data-age-s")) >= age + 1.0, 5, "the age of the last pose to grow")
            assert srv.get("/readyz")[0] == 503                       # the runtime agrees: not ready
            stale_shot = tmp_path / "stale.png"
            driver.save_screenshot(str(stale_shot))
            assert colourfulness(live_shot, box) > 2 * colourfulness(stale_shot, box) + 0.05, \
                "the skeleton is not greyed"
        finally:
            driver.quit()
        if sender is not None:
            sender.join(timeout=30)
