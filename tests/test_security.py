"""CurveZMQ over real sockets: allow-listed keys get through, plaintext peers and unknown keys get
nothing in or out; key files and the plaintext guard."""

from __future__ import annotations

import stat
import threading
import time
import urllib.request

import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from exporters.metrics import RuntimeMetrics
from exporters.pose_publisher import PosePublisher
from runtime.config import RuntimeConfig, free_loopback_port
from runtime.ingest import Ingest
from runtime.serve import Runtime
from sensors.core import keys, wire
from sensors.core.pose_record import PoseRecord
from sensors.publisher import SensorPublisher


@pytest.fixture()
def keydir(tmp_path):
    d = tmp_path / "keys"
    keys.init(d)
    keys.add(d, "cam-1", "sensor")
    keys.add(d, "viewer-1", "viewer")
    # A key pair that is NOT allow-listed: made elsewhere, with the same tooling.
    other = tmp_path / "other"
    keys.init(other)
    keys.add(other, "intruder", "sensor")
    return d, other


def _client(d, name, server_dir=None):
    return keys.CurveClient.load(d / "clients" / f"{name}.key_secret", (server_dir or d) / "server.key")


def _send_rgb(pub: SensorPublisher, n: int) -> None:
    for i in range(n):
        pub.send("rgb", time.time_ns(), kpts=np.full((17, 2), 100.0 + i, np.float32))


def _wait(cond, timeout_s=3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_key_files_are_private_and_listed(keydir, tmp_path):
    d, _ = keydir
    for f in [*d.glob("*.key*"), *(d / "clients").glob("*"), *(d / "sensors").glob("*")]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    rows = keys.listing(d)
    assert {(r["role"], r["name"]) for r in rows} >= {("server", "server"), ("allowed sensor", "cam-1"),
                                                    ("allowed viewer", "viewer-1"), ("client pair", "cam-1")}
    secret = d / "clients" / "cam-1.key_secret"
    secret.chmod(0o644)
    with pytest.raises(keys.KeyFileError, match="chmod 600"):
        keys.load_secret(secret)
    with pytest.raises(keys.KeyFileError, match="exists"):
        keys.add(d, "viewer-1", "viewer")
    with pytest.raises(keys.KeyFileError, match="keys init"):
        keys.add(tmp_path / "nowhere", "x", "sensor")
    keys.revoke(d, "viewer-1", "viewer")
    assert not (d / "viewers" / "viewer-1.key").exists()


def test_plaintext_only_on_loopback_unless_forced():
    assert keys.is_loopback("tcp://127.0.0.1:5555") and keys.is_loopback("tcp://[::1]:5") and \
        keys.is_loopback("ipc:///tmp/x") and keys.is_loopback("tcp://localhost:1")
    assert not keys.is_loopback("tcp://0.0.0.0:5555") and not keys.is_loopback("tcp://*:5555") and \
        not keys.is_loopback("tcp://10.0.0.2:5555")
    with pytest.raises(ValueError, match="plaintext"):
        Ingest("tcp://0.0.0.0:5555", bind=True)
    with pytest.raises(ValueError, match="plaintext"):
        SensorPublisher("tcp://10.0.0.2:5555")
    with pytest.raises(ValueError, match="plaintext"):
        PosePublisher("tcp://*:5556")
    Ingest("tcp://0.0.0.0:5555", bind=True, force_plaintext=True)   # constructed, not started: allowed


def test_secured_ingest_takes_only_allow_listed_sensors(keydir):
    d, other = keydir
    port = free_loopback_port()
    ep = f"tcp://127.0.0.1:{port}"
    metrics = RuntimeMetrics()
    ing = Ingest(ep, bind=True, metrics=metrics, curve=keys.CurveServer.from_dir(d, "sensor")).start()

    def refused(reason):
        return metrics.registry.get_sample_value("awc_ingest_handshake_failures_total", {"reason": reason})

    try:
        assert all(refused(r) == 0 for r in keys.HANDSHAKE_FAILURE_REASONS)   # series exist before any event
        # a plaintext publisher: no handshake, no subscription, nothing received
        with SensorPublisher(ep, src="plain") as plain:
            assert not plain.wait_connected(1.0)
            _send_rgb(plain, 20)
        assert _wait(lambda: refused("aborted") + refused("mechanism_mismatch") >= 1)
        # a client whose key is not on the allow-list (made with the same tooling, for this server)
        with SensorPublisher(ep, src="intruder", curve=_client(other, "intruder", d)) as bad:
            assert not bad.wait_connected(1.0)
            _send_rgb(bad, 20)
        assert _wait(lambda: refused("unknown_key") >= 1)
        # an allow-listed client key, but the server key of another runtime
        with SensorPublisher(ep, src="wrong-server", curve=_client(d, "cam-1", other)) as wrong:
            assert not wrong.wait_connected(1.0)
        assert _wait(lambda: refused("wrong_server_key") >= 1)
        counts = ing.counts
        assert counts["handshake_failed"] == sum(counts["handshake_failures"].values()) >= 3
        assert counts["handshake_failures"] == {r: refused(r) for r in keys.HANDSHAKE_FAILURE_REASONS}
        assert ing.received_total() == 0 and ing.dropped_total() == 0
        # the allow-listed sensor gets through, encrypted
        with SensorPublisher(ep, src="cam-1", curve=_client(d, "cam-1")) as good:
            assert good.wait_connected(5.0)
            _send_rgb(good, 5)
            assert _wait(lambda: ing.received_total("rgb") == 5)
        assert ing.get(1.0).src == "cam-1"
    finally:
        ing.stop()


def test_handshake_failure_reasons_from_monitor_events():
    auth, proto, none = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                         zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    assert keys.handshake_failure_reason(auth, 400) == "unknown_key"
    assert keys.handshake_failure_reason(auth, 500) == "other"
    assert keys.handshake_failure_reason(proto, zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC) == "wrong_server_key"
    assert keys.handshake_failure_reason(proto, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) == "mechanism_mismatch"
    assert keys.handshake_failure_reason(proto, zmq.PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_HELLO) == "other"
    assert keys.handshake_failure_reason(none, 104) == "aborted"
    with pytest.raises(ValueError, match="not a failed handshake"):
        keys.handshake_failure_reason(zmq.EVENT_CONNECTED, 0)


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_secured_runtime_exports_refused_handshakes_and_keeps_serving(keydir, tiny_model):
    """A live runtime with CurveZMQ keys, fed by an allow-listed sensor and read by an allow-listed
    viewer: a plaintext publisher, an unknown key and a wrong server key each raise
    awc_ingest_handshake_failures_total (scraped over HTTP) under their reason, get nothing in,
    and the runtime stays ready with poses flowing."""
    d, other = keydir
    cfg = RuntimeConfig.from_dict({
        "inputs": {"endpoints": [f"tcp://127.0.0.1:{free_loopback_port()}"]},
        "output": {"endpoint": f"tcp://127.0.0.1:{free_loopback_port()}"},
        "metrics": {"port": 0}, "security": {"keys_dir": str(d)}, "health": {"startup_grace_ticks": 0}})
    rt = Runtime(cfg, tiny_model).start()
    loop = threading.Thread(target=rt.run, daemon=True)
    loop.start()
    ep, halt, sent = cfg.inputs.endpoints[0], threading.Event(), [0]
    ctx = zmq.Context()
    viewer = ctx.socket(zmq.SUB)
    _client(d, "viewer-1").apply(viewer)
    viewer.setsockopt(zmq.SUBSCRIBE, b"")
    viewer.connect(rt.pose_endpoint)

    def sensor():
        with SensorPublisher(ep, src="cam-1", curve=_client(d, "cam-1")) as good:
            good.wait_connected(5.0)
            while not halt.is_set():
                sent[0] += 1
                good.send("rgb", time.time_ns(), kpts=np.full((17, 2), 200.0, np.float32))
                time.sleep(0.1)

    def poses(n):
        got = 0
        for _ in range(10 * n + 50):
            got += _recv_pose(viewer, 100) is not None
            if got >= n:
                return got
        return got

    feeder = threading.Thread(target=sensor, daemon=True)
    feeder.start()
    try:
        assert poses(3) >= 3, "no pose reached the allow-listed viewer"
        port = rt.http.port

        def refused(reason):
            return _scrape(port)[("awc_ingest_handshake_failures_total", (("reason", reason),))]

        assert all(refused(r) == 0 for r in keys.HANDSHAKE_FAILURE_REASONS)
        with SensorPublisher(ep, src="intruder", curve=_client(other, "intruder", d)) as bad:
            assert not bad.wait_connected(1.0)
            _send_rgb(bad, 10)
        with SensorPublisher(ep, src="wrong-server", curve=_client(d, "cam-1", other)) as wrong:
            assert not wrong.wait_connected(1.0)
        with SensorPublisher(ep, src="plain") as plain:
            assert not plain.wait_connected(1.0)
            _send_rgb(plain, 10)
        assert _wait(lambda: refused("unknown_key") >= 1 and refused("wrong_server_key") >= 1
                     and refused("aborted") + refused("mechanism_mismatch") >= 1)
        # a viewer whose key is not allow-listed: refused on the pose socket, counted there
        intruder = ctx.socket(zmq.SUB)
        _client(other, "intruder", d).apply(intruder)
        intruder.setsockopt(zmq.SUBSCRIBE, b"")
        intruder.connect(rt.pose_endpoint)
        try:
            assert _wait(lambda: _scrape(port)[("awc_pose_handshake_failures_total", (("reason", "unknown_key"),))] >= 1)
            assert _recv_pose(intruder, 300) is None
        finally:
            intruder.close(linger=0)
        # still serving: ready, poses flowing to the viewer, nothing of the refused clients got in
        assert rt.ingest.running and rt.readiness() == (True, "ready")
        assert poses(3) >= 3
        scraped = _scrape(port)
        assert scraped[("awc_ready", ())] == 1.0
        received = scraped[("awc_messages_received_total", (("modality", "rgb"),))]
        assert 0 < received <= sent[0]
        assert sum(v for (name, _), v in scraped.items() if name == "awc_messages_dropped_total") == 0
    finally:
        halt.set()
        feeder.join(3)
        rt.stop_event.set()
        loop.join(5)
        rt.close()
        viewer.close(linger=0)
        ctx.term()


def _recv_pose(sock, timeout_ms=300):
    if not sock.poll(timeout_ms):
        return None
    return wire.decode(sock.recv_multipart())


def test_secured_pose_stream_reaches_only_allowed_viewers(keydir):
    """Over real sockets: only the allow-listed viewer receives poses; each refused reader (unknown
    key, a sensor's key, another runtime's server key, plaintext) raises
    awc_pose_handshake_failures_total under its reason, and the sensor counter stays at 0."""
    d, other = keydir
    ep = f"tcp://127.0.0.1:{free_loopback_port()}"
    metrics = RuntimeMetrics()
    pub = PosePublisher(ep, curve=keys.CurveServer.from_dir(d, "viewer"), metrics=metrics)
    ctx = zmq.Context()
    socks = {}

    def refused(reason, name="awc_pose_handshake_failures_total"):
        return metrics.registry.get_sample_value(name, {"reason": reason})

    try:
        assert all(refused(r) == 0 for r in keys.HANDSHAKE_FAILURE_REASONS)   # series exist before any event
        for name, client in (("viewer", _client(d, "viewer-1")), ("intruder", _client(other, "intruder", d)),
                             ("plain", None), ("sensor-key", _client(d, "cam-1")),
                             ("wrong-server", _client(d, "viewer-1", other))):
            s = ctx.socket(zmq.SUB)
            if client is not None:
                client.apply(s)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(ep)
            socks[name] = s
        got = dict.fromkeys(socks, 0)
        for tick in range(30):
            pub.publish(PoseRecord(tick=tick, tick_ns=time.time_ns(), joints=np.zeros((17, 3)), presence=np.ones(4),
                                   degradation=np.zeros(4), degraded=np.zeros(4), latency_ns=1000, station="st"))
            for name, s in socks.items():
                while _recv_pose(s, 0) is not None:
                    got[name] += 1
            time.sleep(0.05)
        assert got["viewer"] > 10
        # unknown key, plaintext, a sensor's key (not a viewer), a wrong server key receive nothing
        assert got["intruder"] == got["plain"] == got["sensor-key"] == got["wrong-server"] == 0
        # and each was counted under its reason (the intruder and the sensor key: unknown_key)
        assert refused("unknown_key") >= 2 and refused("wrong_server_key") >= 1
        assert refused("aborted") + refused("mechanism_mismatch") >= 1
        assert pub.handshake_failures() == {r: refused(r) for r in keys.HANDSHAKE_FAILURE_REASONS}
        assert all(refused(r, "awc_ingest_handshake_failures_total") == 0 for r in keys.HANDSHAKE_FAILURE_REASONS)
    finally:
        for s in socks.values():
            s.close(linger=0)
        ctx.term()
        pub.close()


@pytest.mark.slow
def test_secured_end_to_end_replay_matches_the_plaintext_one(tiny_dataset, tmp_path):
    """`runtime replay --secure` (CurveZMQ on the sensor and pose sockets) gives the same poses as the
    plaintext replay: same count, same accuracy to the last digit, same contribution shares."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from runtime.replay import run_replay
    from training.export import export_untrained

    model = export_untrained(tmp_path / "tiny.onnx", preset="tiny", seed=0)
    reports = {secure: run_replay(str(model), str(tiny_dataset), "P1", "S1", "all", rate=0.0, max_frames=30,
                                  secure=secure)
               for secure in (False, True)}
    plain, secured = reports[False], reports[True]
    assert plain["throughput"]["poses"] == secured["throughput"]["poses"] == 30
    assert secured["accuracy"]["mpjpe_mm"] == plain["accuracy"]["mpjpe_mm"]
    assert secured["contribution_shares"] == plain["contribution_shares"]
    assert secured["pose_stream_invalid"] == plain["pose_stream_invalid"] == 0


def test_plaintext_off_loopback_is_refused_with_its_own_reason(tmp_path, caplog):
    """The refusal says what is wrong and how to fix it, not that the ports may be in use."""
    pytest.importorskip("torch").set_num_threads(1)
    from runtime.cli import main
    from training.export import export_untrained

    model = export_untrained(tmp_path / "tiny.onnx", preset="tiny", seed=0)
    rc = main(["serve", "--model", str(model), "--plaintext", "--input", f"tcp://0.0.0.0:{free_loopback_port()}",
               "--output", f"tcp://127.0.0.1:{free_loopback_port()}", "--metrics-port", "0", "--duration", "1"])
    assert rc == 2
    assert "plaintext (no CurveZMQ) on the non-loopback" in caplog.text and "force_plaintext" in caplog.text
    assert "another runtime" not in caplog.text
