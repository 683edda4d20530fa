"""CurveZMQ over real sockets: allow-listed keys get through, plaintext peers and unknown keys get
nothing in or out; key files and the plaintext guard."""

from __future__ import annotations

import stat
import time

import numpy as np
import pytest
import zmq

from exporters.pose_publisher import PosePublisher, pose_message
from runtime.config import free_loopback_port
from runtime.ingest import Ingest
from sensors import keys, wire
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
    ing = Ingest(ep, bind=True, curve=keys.CurveServer.from_dir(d, "sensor")).start()
    try:
        # a plaintext publisher: no handshake, no subscription, nothing received
        with SensorPublisher(ep, src="plain") as plain:
            assert not plain.wait_connected(1.0)
            _send_rgb(plain, 20)
        # a client whose key is not on the allow-list
        with SensorPublisher(ep, src="intruder", curve=_client(other, "intruder", other)) as bad:
            assert not bad.wait_connected(1.0)
            _send_rgb(bad, 20)
        # a client with a key for the right runtime... of another runtime (wrong server key)
        with SensorPublisher(ep, src="wrong-server", curve=_client(d, "cam-1", other)) as wrong:
            assert not wrong.wait_connected(1.0)
        assert _wait(lambda: ing.counts["handshake_failed"] >= 2)
        assert ing.received_total() == 0 and ing.dropped_total() == 0
        # the allow-listed sensor gets through, encrypted
        with SensorPublisher(ep, src="cam-1", curve=_client(d, "cam-1")) as good:
            assert good.wait_connected(5.0)
            _send_rgb(good, 5)
            assert _wait(lambda: ing.received_total("rgb") == 5)
        assert ing.get(1.0).src == "cam-1"
    finally:
        ing.stop()


def _recv_pose(sock, timeout_ms=300):
    if not sock.poll(timeout_ms):
        return None
    return wire.decode(sock.recv_multipart())


def test_secured_pose_stream_reaches_only_allowed_viewers(keydir):
    d, other = keydir
    ep = f"tcp://127.0.0.1:{free_loopback_port()}"
    pub = PosePublisher(ep, curve=keys.CurveServer.from_dir(d, "viewer"))
    ctx = zmq.Context()
    socks = {}
    try:
        for name, client in (("viewer", _client(d, "viewer-1")), ("intruder", _client(other, "intruder", other)),
                             ("plain", None), ("sensor-key", _client(d, "cam-1"))):
            s = ctx.socket(zmq.SUB)
            if client is not None:
                client.apply(s)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(ep)
            socks[name] = s
        got = dict.fromkeys(socks, 0)
        for tick in range(30):
            pub.publish(pose_message("st", tick, time.time_ns(), np.zeros((17, 3)), np.ones(4), np.zeros(4),
                                     np.zeros(4), 1000))
            for name, s in socks.items():
                while _recv_pose(s, 0) is not None:
                    got[name] += 1
            time.sleep(0.05)
        assert got["viewer"] > 10
        # unknown key, plaintext, and a sensor's key (not a viewer) receive nothing
        assert got["intruder"] == got["plain"] == got["sensor-key"] == 0
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
    from runtime.replay_eval import run_replay
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
