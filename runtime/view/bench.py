"""Viewer benchmark: update rate and added latency from pose to screen, in a real browser.

    python -m runtime.view.bench [--rate 10] [--seconds 20] [--stations 1]

Publishes synthetic ``pose`` messages (a moving skeleton of the synthetic generator, four
modalities, label-free shares) at ``--rate`` Hz from a PUB socket as the runtime does, starts
``runtime view --connect`` in its own process and loads the page in headless Chromium. The page
measures, per displayed frame, wall time at the end of the animation frame that drew it minus the
pose's ``sent_ns`` (same machine, same clock): the latency the viewer adds between the runtime
publishing a pose and the pose on screen. Prints the figures; needs the system Chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np

from exporters.pose_publisher import PosePublisher
from runtime.config import free_loopback_port
from runtime.view.browser import headless_chromium
from sensors.core import schema
from sensors.core.pose_record import PoseRecord


def skeleton_sequence(action: str = "A12", seed: int = 0) -> np.ndarray:
    """[T, 17, 3] joints (metres, camera frame) of one synthetic sequence."""
    from sensors.simulate import kinematics
    from sensors.simulate.body import make_subject
    from sensors.simulate.environment import get_environment

    env = get_environment(schema.environment_of("S01"))
    rng = np.random.default_rng(seed)
    person = make_subject("S01", rng, env)
    return kinematics.sequence_pose(action, person, env.camera_height_m, rng).astype(np.float32)


def synthetic_pose(station: str, tick: int, joints: np.ndarray, reasons=None) -> PoseRecord:
    """One tick's pose record with plausible per-modality values (for the benchmark and tests)."""
    shares = np.array([0.42, 0.33, 0.15, 0.10]) + 0.03 * np.sin(tick / 7 + np.arange(4))
    shares = shares / shares.sum()
    now = time.time_ns()
    return PoseRecord(tick=tick, tick_ns=now, joints=joints, presence=np.ones(4, np.uint8),
                      degradation=np.array([0.05, 0.08, 0.2, 0.35]), degraded=np.zeros(4, np.uint8), outcome="fused",
                      latency_ns=4_000_000, station=station, reasons=reasons or ["", "", "", "noise"],
                      shapley=shares * 3.0, shares=shares, input_t_ns=np.full(4, now, np.int64))


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"runtime view exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the viewer did not answer at {url} within {timeout_s:.0f} s")


def run_bench(rate_hz: float, seconds: float, stations: int) -> dict:
    endpoint = f"tcp://127.0.0.1:{free_loopback_port()}"
    port = free_loopback_port()
    pub = PosePublisher(endpoint, bind=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    view = subprocess.Popen([sys.executable, "-m", "runtime", "--log-level", "WARNING", "view", "--connect",
                             endpoint, "--port", str(port)], env=env)
    driver = None
    joints = skeleton_sequence()
    publish_s: list[float] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30, view)
        driver = headless_chromium()
        driver.get(f"http://127.0.0.1:{port}/")
        period = 1.0 / rate_hz
        n = int(seconds * rate_hz)
        start = time.perf_counter()
        for tick in range(n):
            for s in range(stations):
                msg = synthetic_pose(f"station-{s + 1}", tick, joints[tick % len(joints)])
                t0 = time.perf_counter()
                pub.publish(msg)
                publish_s.append(time.perf_counter() - t0)
            time.sleep(max(0.0, start + (tick + 1) * period - time.perf_counter()))
        time.sleep(0.5)
        page = driver.execute_script("return window.viewerStats;")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=5) as r:
            stream = json.loads(r.read())
    finally:
        if driver is not None:
            driver.quit()
        view.terminate()
        view.wait(timeout=10)
        pub.close()
    lat = np.asarray(page["latencies"][int(rate_hz * stations * 2):] or page["latencies"], float)  # skip warm-up
    drawn_s = (page["lastDrawnMs"] - page["firstDrawnMs"]) / 1e3
    return {
        "rate_hz": rate_hz, "stations": stations, "seconds": seconds, "published": len(publish_s),
        "viewer_received": stream["received"], "lost": stream["lost"], "coalesced": stream["coalesced"],
        "page_arrived": page["arrived"], "page_drawn": page["frames"],
        "page_updates_per_s": round((page["frames"] - 1) / drawn_s, 2) if drawn_s > 0 else 0.0,
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 1),
        "latency_ms_max": round(float(lat.max()), 1), "latency_samples": int(lat.size),
        "publish_us_p50": round(float(np.percentile(publish_s, 50)) * 1e6, 1),
        "load_avg_1min": round(os.getloadavg()[0], 1), "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.view.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=10.0, help="pose messages per second per station")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--stations", type=int, default=1)
    args = p.parse_args(argv)
    result = run_bench(args.rate, args.seconds, args.stations)
    for k, v in result.items():
        print(f"{k:>22}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
