"""The whole station on one machine, on embedded defaults (what `make demo` runs).

1. generate a small synthetic dataset in MM-Fi's layout — 8 subjects doing 6 exercises of MM-Fi's
   rehabilitation protocol P2 — and read it back (`sensors simulate`, `sensors inspect`);
2. train a small fused model with AWC balancing on P2 (`training fit`) and export it to ONNX
   (`training export`);
3. serve it (`runtime serve --console`) with CurveZMQ on the sensor and pose sockets (a key
   directory made on the fly in the run folder: `runtime keys init/add`), replay a squat session
   of a test subject into it over ZeroMQ in real time with the replay's own client key, a LiDAR
   failure injected half way, and show live poses, contributions and degradation (console, and
   the station viewer page at http://127.0.0.1:8080/, which reads the pose stream with the
   `viewer` client key);
4. show the Prometheus metrics the runtime exports;
5. validate the model offline through the real pipeline (`runtime replay`);
6. the rehabilitation report of the live session of step 3 (`runtime report`): the squat's knee
   angle, repetitions with their range of motion, tempo and symmetry, and how far to trust each
   one (the repetitions measured after the LiDAR stopped are marked low-confidence).

Every step is a plain command-line call, printed before it runs, so each can be repeated by hand.
Settings come from the environment: DEMO_DIR (default runs/demo), DEMO_DATA (data/demo),
DEMO_PRESET (small; tiny: 3 subjects x 3 exercises and the tiny model, a quick check), DEMO_EPOCHS (default
6), DEMO_REPLAY_S (seconds of live replay, default 24), DEMO_VIEW_PORT (viewer page, default 8080;
0 = no viewer), DEMO_METRICS_PORT, DEMO_INPUT, DEMO_OUTPUT (the runtime's metrics port, sensor and
pose endpoints), DEMO_SCREENSHOT (a PNG path: screenshot of the viewer during the LiDAR fault, in
headless Chromium).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PY = sys.executable
RUN = Path(os.environ.get("DEMO_DIR", "runs/demo"))
DATA = Path(os.environ.get("DEMO_DATA", "data/demo"))
PRESET = os.environ.get("DEMO_PRESET", "small")
EPOCHS = int(os.environ.get("DEMO_EPOCHS", "6"))
REPLAY_S = float(os.environ.get("DEMO_REPLAY_S", "24"))
METRICS_PORT = int(os.environ.get("DEMO_METRICS_PORT", "9108"))
INPUT = os.environ.get("DEMO_INPUT", "tcp://127.0.0.1:5555")
OUTPUT = os.environ.get("DEMO_OUTPUT", "tcp://127.0.0.1:5556")
VIEW_PORT = int(os.environ.get("DEMO_VIEW_PORT", "8080"))
SCREENSHOT = os.environ.get("DEMO_SCREENSHOT")
PROTOCOL = "P2"
# Exercises of the rehabilitation protocol P2 the demo's model learns, the live session's first:
# squat, limb extension (both arms), lunge (right-front), stretching, jump, body extension (left).
EXERCISES = ("A12", "A11", "A10", "A01", "A26", "A24")[: 3 if PRESET == "tiny" else 6]


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def run(*args: str) -> None:
    cmd = [PY, "-m", *args]
    print("$ " + " ".join(["python", "-m", *map(shlex.quote, args)]), flush=True)
    subprocess.run(cmd, check=True)


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"runtime serve exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"runtime serve did not become ready at {url} within {timeout_s:.0f} s")


def show_metrics(url: str) -> None:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    keep = ("awc_contribution_share_ratio", "awc_degradation_score_ratio", "awc_modality_degraded",
            "awc_ticks_total", "awc_messages_received_total", "awc_inference_provider_info")
    for line in text.splitlines():
        if line.startswith(keep):
            print("  " + line)


def live_session(data: Path) -> str:
    """The sequence the live session replays: a test-split recording of the first of EXERCISES the
    test split holds (a squat on the `small` preset), as ENV/SUBJECT/ACTION."""
    from sensors import mmfi, splits

    test = splits.subset_pairs(PROTOCOL, "S1", "test")
    keys = [k for k in mmfi.discover_sequences(data) if (k.subject, k.action) in test]
    for action in EXERCISES:
        for key in sorted(keys, key=str):
            if key.action == action:
                return str(key)
    raise SystemExit(f"{data} holds no test recording of {', '.join(EXERCISES)} ({PROTOCOL}, S1)")


def has_demo_dataset(data: Path) -> bool:
    from sensors import mmfi
    from sensors.simulate.presets import PRESETS

    found = {(k.subject, k.action) for k in mmfi.discover_sequences(data)} if data.is_dir() else set()
    return {(s, a) for s in PRESETS[PRESET].subjects for a in EXERCISES} <= found


def main() -> int:
    RUN.mkdir(parents=True, exist_ok=True)
    banner(f"1. a small synthetic MM-Fi-format dataset: exercises of the rehabilitation protocol {PROTOCOL}")
    if not has_demo_dataset(DATA):
        run("sensors", "simulate", "--out", str(DATA), "--preset", PRESET, "--actions", ",".join(EXERCISES),
            "--seed", "0", "--workers", "2")
    run("sensors", "inspect", "--data", str(DATA), "--protocol", PROTOCOL)

    banner(f"2. train a small fused model with AWC on {PROTOCOL} ({EPOCHS} epochs), export to ONNX")
    ckpt = RUN / "train" / "best.pt"
    run("training", "fit", "--preset", PRESET, "--data", str(DATA), "--protocol", PROTOCOL, "--out",
        str(RUN / "train"), "--balance", "awc", "--epochs", str(EPOCHS), "--seed", "0", "--overwrite")
    model = RUN / "awc.onnx"
    run("training", "export", "--checkpoint", str(ckpt), "--out", str(model))
    run("runtime", "info", "--model", str(model))

    session = live_session(DATA)
    banner(f"3. serve it with CurveZMQ and replay a test subject's session into it ({session}, {REPLAY_S:.0f} s, "
           "LiDAR stops half way)")
    keydir = RUN / "keys"
    if not (keydir / "server.key_secret").exists():
        run("runtime", "keys", "init", str(keydir))
        run("runtime", "keys", "add", str(keydir), "replay", "--role", "sensor", "--modality", "all", "--ground-truth")
        run("runtime", "keys", "add", str(keydir), "viewer", "--role", "viewer")
    else:   # a key directory of an older demo: its replay key sends ground truth too
        run("runtime", "keys", "scope", str(keydir), "replay", "--modality", "all", "--ground-truth")
    run("runtime", "keys", "list", str(keydir))
    serve_cmd = [PY, "-m", "runtime", "serve", "--model", str(model), "--console",
                 "--input", INPUT, "--output", OUTPUT, "--metrics-port", str(METRICS_PORT),
                 "--record", str(RUN / "poses.jsonl"), "--keys", str(keydir),
                 *(["--view", str(VIEW_PORT)] if VIEW_PORT else [])]
    print("$ " + " ".join(["python", "-m", *serve_cmd[2:]]), flush=True)
    serve = subprocess.Popen(serve_cmd)
    metrics_url = f"http://127.0.0.1:{METRICS_PORT}"
    try:
        wait_ready(f"{metrics_url}/healthz", 60, serve)
        frames = int(REPLAY_S * 10)
        replay_args = ["sensors", "replay", "--data", str(DATA), "--sequences", session,
                       "--connect", INPUT, "--rate", "1.0", "--max-frames", str(frames),
                       "--fault", f"lidar:stop@{REPLAY_S / 2:.0f}", "--no-progress",
                       "--keys", str(keydir), "--key-name", "replay"]
        print("$ python -m " + " ".join(map(shlex.quote, replay_args)), flush=True)
        replay = subprocess.Popen([PY, "-m", *replay_args])
        started = time.monotonic()
        shot = None
        if VIEW_PORT:
            print(f"station viewer: http://127.0.0.1:{VIEW_PORT}/", flush=True)
        if VIEW_PORT and SCREENSHOT:   # the browser opens now; the shot is taken while the LiDAR is out
            shot_args = ["runtime.view.snapshot", f"http://127.0.0.1:{VIEW_PORT}/", SCREENSHOT,
                         "--settle", f"{REPLAY_S * 0.75:.0f}"]
            print("$ python -m " + " ".join(map(shlex.quote, shot_args)), flush=True)
            shot = subprocess.Popen([PY, "-m", *shot_args])
        # Read the metrics while the sensors still stream (after the LiDAR stopped): once the
        # replay ends, every modality is rightly reported missing.
        time.sleep(max(0.0, REPLAY_S * 0.85 - (time.monotonic() - started)))
        banner(f"4. Prometheus metrics at {metrics_url}/metrics (excerpt, LiDAR stopped)")
        show_metrics(f"{metrics_url}/metrics")
        if shot is not None and shot.wait(timeout=60) != 0:
            print(f"viewer screenshot failed with code {shot.returncode}", flush=True)
        if replay.wait(timeout=REPLAY_S + 60) != 0:
            raise SystemExit(f"sensors replay failed with code {replay.returncode}")
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
    print(f"poses recorded to {RUN / 'poses.jsonl'}")

    banner("5. offline validation through the real pipeline (ZeroMQ on loopback, as fast as possible)")
    run("runtime", "replay", "--model", str(model), "--data", str(DATA), "--protocol", PROTOCOL,
        "--split", "S1", "--rate", "0", "--report", str(RUN / "replay.json"))
    banner("6. rehabilitation report of the live session (angles, repetitions, trust)")
    run("runtime", "report", "--recording", str(RUN / "poses.jsonl"), "--out", str(RUN / "rehab-report.html"),
        "--json-out", str(RUN / "rehab-report.json"), "--title", "Demo session: rehabilitation report")
    banner("done")
    print(f"training run, plots and log: {RUN / 'train'}  ·  model: {model}  ·  report: {RUN / 'replay.json'}  ·  "
          f"rehabilitation report: {RUN / 'rehab-report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
