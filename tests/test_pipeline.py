"""The tick loop with the ingest's queue as source (no sockets) and a real exported tiny model."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from exporters.metrics import RuntimeMetrics
from exporters.recorder import open_recorder
from runtime.config import RuntimeConfig
from runtime.ingest import Ingest
from runtime.loop import Loop
from runtime.outputs import MetricsOutput, Outputs, RecorderOutput, pose_record
from runtime.pipeline import Pipeline
from sensors.core import schema
from sensors.core.wire import Message

T0 = 1_700_000_000_000_000_000   # a whole multiple of 100 ms
PERIOD = schema.FRAME_PERIOD_NS


def frame_messages(k: int, rng, skip=(), seq=None) -> list[Message]:
    """The four sensor messages of frame k (capture time T0 + k * 100 ms) plus ground truth."""
    t = T0 + k * PERIOD
    s = k if seq is None else seq
    arrays = {
        "rgb": {"kpts": rng.uniform([200, 100], [440, 400], size=(17, 2)).astype(np.float32)},
        "lidar": {"points": rng.normal([3, 0, 0], 0.4, size=(300, 3)).astype(np.float32)},
        "mmwave": {"points": rng.normal([3, 0, 0, 20, 0], 0.3, size=(10, 5)).astype(np.float32)},
        "wifi": {"amp": rng.normal(40, 3, size=(10, 3, 114)).astype(np.float32),
                 "phase": rng.uniform(-3, 3, size=(10, 3, 114)).astype(np.float32)},
        "gt": {"joints": rng.normal([0, 0, 3], 0.3, size=(17, 3)).astype(np.float32)},
    }
    extra = {"wifi": {"period_ns": PERIOD // 10}}
    return [Message(topic, f"{topic}0", s, t, t, a, extra.get(topic, {})) for topic, a in arrays.items()
            if topic not in skip]


def queue_source(messages=()) -> Ingest:
    """The real ingest, not started (no socket): messages go through its accounting into its queue."""
    src = Ingest(["tcp://127.0.0.1:0"], bind=True, queue_size=100_000)
    for m in messages:
        src.accept(m)
    return src


def make_loop(cfg, model, outputs=()) -> Loop:
    return Loop(cfg, Pipeline(cfg, model), Outputs(list(outputs), MetricsOutput(RuntimeMetrics(), cfg, model)))


def _cfg(**sync):
    return RuntimeConfig.from_dict({"sync": {"clock": "data", **sync}, "contributions": {"window_ticks": 10}})


def _run_data_clock(model, messages, outputs=(), cfg=None):
    pipe = make_loop(cfg or _cfg(), model, outputs)
    results = []
    pipe.outputs.items.append(results.append)
    stop = threading.Event()
    src = queue_source(messages)
    # stop as soon as the queue is empty and the final flush ran
    t = threading.Thread(target=pipe.run, args=(src, stop))
    t.start()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and not (src.queue.empty() and results and
                                               results[-1].tick_ns >= messages[-1].t_ns - PERIOD):
        time.sleep(0.05)
    time.sleep(pipe.config.sync.data_flush_s + 0.2)
    stop.set()
    t.join()
    return pipe, results


def test_every_frame_gives_a_pose_that_matches_offline_inference(tiny_model):
    rng = np.random.default_rng(0)
    messages = [m for k in range(25) for m in frame_messages(k, rng)]
    pipe, results = _run_data_clock(tiny_model, messages,
                                    cfg=RuntimeConfig.from_dict({"sync": {"clock": "data"},
                                                                 "recorder": {"record_inputs": True}}))
    assert len(results) == 25                      # every frame ticked once, none dropped
    assert pipe.stats.dropped == 0 and pipe.stats.errors == 0
    assert [r.tick_ns for r in results] == [T0 + k * PERIOD for k in range(25)]
    assert all(r.outcome == "fused" for r in results)
    for r in results:
        pose, coalitions = tiny_model.run(r.inputs)
        np.testing.assert_allclose(r.pose, pose[0], atol=1e-6)
        np.testing.assert_allclose(r.coalition_poses, coalitions[0], atol=1e-6)
        assert r.gt is not None
    last = results[-1].contributions
    assert last.shares.sum() == pytest.approx(1.0) and last.shares_gt is not None
    reg = pipe.outputs.metrics.registry
    assert reg.get_sample_value("awc_ticks_total", {"outcome": "fused"}) == 25
    assert reg.get_sample_value("awc_stage_duration_seconds_count", {"stage": "inference"}) == 25


def test_rgb_window_uses_the_keypoints_of_the_previous_ticks(tiny_model):
    rng = np.random.default_rng(1)
    messages = [m for k in range(6) for m in frame_messages(k, rng)]
    kpts = [m.arrays["kpts"] for m in messages if m.topic == "rgb"]
    _, results = _run_data_clock(tiny_model, messages, cfg=RuntimeConfig.from_dict(
        {"sync": {"clock": "data"}, "recorder": {"record_inputs": True}}))
    from sensors.core.preprocess import rgb_window

    r = tiny_model.metadata.rgb_window
    want = rgb_window(kpts[-r:], r)
    np.testing.assert_allclose(results[-1].inputs["rgb"][0], want)


def test_missing_modality_is_served_partial_and_zero_filled(tiny_model):
    rng = np.random.default_rng(2)
    messages = [m for k in range(15) for m in frame_messages(k, rng, skip=("wifi",))]
    cfg = RuntimeConfig.from_dict({"sync": {"clock": "data"}, "health": {"startup_grace_ticks": 0}})
    pipe, results = _run_data_clock(tiny_model, messages, cfg=cfg)
    assert len(results) == 15
    assert all(r.outcome == "partial" for r in results)
    w = schema.MODALITY_INDEX["wifi"]
    assert all(r.presence[w] == 0 for r in results)
    assert results[-1].contributions.shares[w] == 0.0
    assert results[-1].degradation.degraded[w]           # a missing input is flagged
    assert not results[-1].degradation.degraded[[0, 1, 2]].any()


def test_a_sensor_never_seen_is_not_flagged_during_the_startup_grace(tiny_model):
    rng = np.random.default_rng(2)
    messages = [m for k in range(15) for m in frame_messages(k, rng, skip=("wifi",))]
    cfg = RuntimeConfig.from_dict({"sync": {"clock": "data"}, "health": {"startup_grace_ticks": 10}})
    _, results = _run_data_clock(tiny_model, messages, cfg=cfg)
    w = schema.MODALITY_INDEX["wifi"]
    flags = [bool(r.degradation.degraded[w]) for r in results]
    assert not any(flags[:10]) and all(flags[12:])


def test_non_finite_inputs_are_masked_flagged_and_never_published(tiny_model):
    rng = np.random.default_rng(3)
    messages = [m for k in range(8) for m in frame_messages(k, rng)]
    bad = next(m for m in messages if m.topic == "rgb" and m.t_ns == T0 + 3 * PERIOD)
    bad.arrays["kpts"] = np.full((17, 2), np.nan, np.float32)   # the wire would refuse this
    pipe, results = _run_data_clock(tiny_model, messages)
    assert pipe.stats.errors == 0 and len(results) == 8
    hit = next(r for r in results if r.tick_ns == T0 + 3 * PERIOD)
    i = schema.MODALITY_INDEX["rgb"]
    assert hit.presence[i] == 0 and hit.health[i].non_finite == 1.0 and hit.health[i].worst() == "non_finite"
    assert all(np.isfinite(r.pose).all() for r in results if r.pose is not None)
    score = pipe.outputs.metrics.registry.get_sample_value("awc_degradation_score_ratio", {"modality": "rgb"})
    assert np.isfinite(score)


def test_a_non_finite_pose_is_an_invalid_tick_and_the_gauges_recover(tiny_model):
    class Overflowing:
        metadata, provider, requested_provider = tiny_model.metadata, tiny_model.provider, "cpu"
        calls = 0

        def run(self, inputs):
            pose, coalitions = tiny_model.run(inputs)
            Overflowing.calls += 1
            if Overflowing.calls in (3, 4):
                pose = np.full_like(pose, np.nan)
                coalitions = np.full_like(coalitions, np.inf)
            return pose, coalitions

    class EveryTick(list):
        every_tick = True

        def __call__(self, result):
            self.append(result)

    rng = np.random.default_rng(5)
    messages = [m for k in range(8) for m in frame_messages(k, rng)]
    results = EveryTick()
    pipe, _ = _run_data_clock(Overflowing(), messages, [results])
    outcomes = [r.outcome for r in results]
    assert outcomes.count("invalid") == 2 and all(r.pose is None for r in results if r.outcome == "invalid")
    reg = pipe.outputs.metrics.registry
    assert reg.get_sample_value("awc_ticks_total", {"outcome": "invalid"}) == 2
    for m in schema.MODALITIES:
        assert np.isfinite(reg.get_sample_value("awc_degradation_score_ratio", {"modality": m}))
        assert np.isfinite(reg.get_sample_value("awc_contribution_share_ratio", {"modality": m}))


def test_a_bad_tick_is_counted_and_the_loop_goes_on(tiny_model, caplog):
    from runtime.inference import ModelError

    class Flaky:
        metadata, provider, requested_provider = tiny_model.metadata, tiny_model.provider, "cpu"
        calls = 0

        def run(self, inputs):
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise OverflowError("int too large to convert")   # what a hostile value once caused
            if Flaky.calls == 4:
                raise ModelError("input refused")
            return tiny_model.run(inputs)

    rng = np.random.default_rng(3)
    messages = [m for k in range(8) for m in frame_messages(k, rng)]
    pipe, results = _run_data_clock(Flaky(), messages)
    assert pipe.stats.errors == 2
    reg = pipe.outputs.metrics.registry
    assert reg.get_sample_value("awc_tick_errors_total", {"stage": "inference"}) == 1
    assert reg.get_sample_value("awc_tick_errors_total", {"stage": "preprocess"}) == 1
    assert len(results) == 6 and results[-1].tick_ns == T0 + 7 * PERIOD
    assert "failed" in caplog.text


def test_wall_clock_drops_ticks_latest_wins_when_inference_is_slow(tiny_model):
    class Slow:
        metadata, provider, requested_provider = tiny_model.metadata, tiny_model.provider, "cpu"

        def run(self, inputs):
            time.sleep(0.25)   # 2.5 tick periods
            return tiny_model.run(inputs)

    now = time.time_ns()
    rng = np.random.default_rng(4)
    start = now // PERIOD * PERIOD
    src = queue_source()
    cfg = RuntimeConfig.from_dict({"sync": {"clock": "wall", "max_age_s": 5.0}})
    pipe = make_loop(cfg, Slow())
    results = []
    pipe.outputs.items.append(results.append)

    def feeder():
        for k in range(15):
            for m in frame_messages(k, rng):
                m.t_ns = m.sent_ns = start + k * PERIOD
                src.accept(m)
            time.sleep(0.1)

    threading.Thread(target=feeder, daemon=True).start()
    stats = pipe.run(src, threading.Event(), duration_s=1.5)
    dropped = pipe.outputs.metrics.registry.get_sample_value("awc_ticks_total", {"outcome": "dropped"})
    assert stats.dropped == dropped >= 3
    assert 3 <= stats.ticks <= 8
    assert stats.ticks + stats.dropped >= 13        # every period either ran or was counted dropped
    ticks = [r.tick_ns for r in results]
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)


def test_sequence_gaps_reach_input_health(tiny_model):
    rng = np.random.default_rng(5)
    messages = []
    for k in range(20):
        for m in frame_messages(k, rng):
            if m.topic == "lidar":
                m.seq = 3 * k          # two of every three lidar messages lost upstream
            messages.append(m)
    _, results = _run_data_clock(tiny_model, messages)
    lidar = schema.MODALITY_INDEX["lidar"]
    assert results[-1].health[lidar].loss == pytest.approx(1.0)
    assert results[-1].health[0].loss == 0.0


def test_recorder_output_writes_npz_and_jsonl(tiny_model, tmp_path):
    rng = np.random.default_rng(6)
    messages = [m for k in range(6) for m in frame_messages(k, rng)]
    outs = [RecorderOutput(open_recorder(tmp_path / "t.npz")), RecorderOutput(open_recorder(tmp_path / "t.jsonl"))]
    pipe, results = _run_data_clock(tiny_model, messages, outputs=outs)
    pipe.close()
    data = np.load(tmp_path / "t.npz")
    assert data["joints"].shape == (6, 17, 3)
    np.testing.assert_allclose(data["joints"], np.stack([r.pose for r in results]))
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert set(pose_record(results[0]).to_row()) >= {"joints", "presence", "shapley", "degradation", "degraded"}


def test_console_view_shows_presence_shares_degradation_and_pose(tiny_model):
    import io

    from runtime.console import ConsoleView

    rng = np.random.default_rng(8)
    messages = [m for k in range(12) for m in frame_messages(k, rng, skip=("wifi",))]
    cfg = RuntimeConfig.from_dict({"sync": {"clock": "data"}, "health": {"startup_grace_ticks": 0}})
    out = io.StringIO()
    _, results = _run_data_clock(tiny_model, messages, outputs=[ConsoleView(out, interval_s=0.0)], cfg=cfg)
    text = out.getvalue().strip().split("\n\n")[-1]
    assert f"tick {results[-1].tick:>6}" in text
    assert all(m in text for m in schema.MODALITIES)
    assert "DEGR:missing" in text and "pelvis" in text and "share (gt)" in text


def test_config_merges_file_and_overrides_and_says_what_is_wrong(tmp_path):
    f = tmp_path / "station.yaml"
    f.write_text("station: room-1\nsync:\n  rate_hz: 20\n")
    cfg = RuntimeConfig.load(f, ["sync.max_age_s=0.5", "inputs.endpoints=[tcp://10.0.0.2:5555]"])
    assert cfg.station == "room-1" and cfg.sync.rate_hz == 20 and cfg.sync.tolerance_s == 0.05
    assert cfg.inputs.endpoints == ("tcp://10.0.0.2:5555",)
    assert cfg.health.max_age_s == 0.5                      # staleness follows the sync
    assert cfg.metrics.host == "127.0.0.1"                  # loopback by default
    saved = RuntimeConfig.load(cfg.save(tmp_path / "resolved.yaml"))
    assert saved == cfg
    with pytest.raises(ValueError, match="unknown key"):
        RuntimeConfig.load(None, ["sync.rate=20"])
    with pytest.raises(ValueError, match="clock"):
        RuntimeConfig.load(None, ["sync.clock=sometimes"])
    with pytest.raises(ValueError, match="endpoint"):
        RuntimeConfig.load(None, ["output.endpoint=5556"])
    with pytest.raises(ValueError, match="record_inputs"):
        RuntimeConfig.load(None, ["recorder.path=r.jsonl", "recorder.record_inputs=true"])


def test_one_sensor_stamping_the_far_future_does_not_drag_the_data_clock(tiny_model):
    rng = np.random.default_rng(9)
    messages = [m for k in range(15) for m in frame_messages(k, rng)]
    bad = next(m for m in messages if m.topic == "lidar" and m.t_ns == T0 + 5 * PERIOD)
    bad.t_ns += 3600 * 10**9                              # one message an hour ahead
    pipe, results = _run_data_clock(tiny_model, messages)
    assert [r.tick_ns for r in results] == [T0 + k * PERIOD for k in range(15)]
    assert pipe.stats.dropped == 0
    lidar = schema.MODALITY_INDEX["lidar"]
    assert results[5].health[lidar].clock == 1.0          # seen as a wrong sensor clock ...
    assert results[-1].health[lidar].clock == 0.0         # ... and forgiven once it sends sane times
    assert not any(r.degradation.degraded[[0, 2, 3]].any() for r in results)


def test_empty_radar_frames_are_received_not_silent_and_a_stopped_wifi_is_silent(tiny_model):
    """A still subject: the radar sends empty clouds (received, absent to the model, empty); WiFi stops
    sending (silent). The metrics keep the two apart, so only the silent one looks missing."""
    rng = np.random.default_rng(3)
    messages = []
    for k in range(30):
        for m in frame_messages(k, rng, skip=("wifi",) if k >= 5 else ()):
            if m.topic == "mmwave":
                m = Message(m.topic, m.src, m.seq, m.t_ns, m.sent_ns, {"points": np.zeros((0, 5), np.float32)},
                            m.extra)
            messages.append(m)
    pipe, results = _run_data_clock(tiny_model, messages)
    i_mm, i_wifi = schema.MODALITY_INDEX["mmwave"], schema.MODALITY_INDEX["wifi"]
    last = results[-1]
    assert last.received[i_mm] == 1 and last.presence[i_mm] == 0 and last.empty[i_mm] == 1
    assert last.received[i_wifi] == 0 and last.empty[i_wifi] == 0
    reg = pipe.outputs.metrics.registry

    def gauge(name, mod):
        return reg.get_sample_value(name, {"modality": mod})

    assert gauge("awc_modality_received_ratio", "mmwave") > 0.99
    assert gauge("awc_modality_empty_ratio", "mmwave") > 0.99
    assert gauge("awc_modality_presence_ratio", "mmwave") < 0.01
    assert gauge("awc_modality_received_ratio", "wifi") < 0.05       # silent after frame 5
    assert gauge("awc_modality_received_ratio", "rgb") > 0.99 and gauge("awc_modality_empty_ratio", "lidar") < 0.01


def test_bench_drives_the_loop_as_serve_builds_it(tiny_model):
    """`runtime bench`'s per-stage and throughput parts on the tiny model (a few ticks, no sockets)."""
    from runtime.bench import bench_stages, bench_throughput

    cfg = RuntimeConfig()
    stages = bench_stages(tiny_model, cfg, n_ticks=5)
    assert {"decode", "sync", "preprocess", "inference", "contributions", "degradation", "publish",
            "metrics", "total"} <= set(stages)
    throughput = bench_throughput(tiny_model, cfg, seconds=0.3)
    assert throughput["ticks"] >= 1 and throughput["fused"] == throughput["ticks"]
