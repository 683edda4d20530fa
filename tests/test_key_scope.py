"""Sensor keys scoped to what they may say, over real CurveZMQ sockets; per-key sequence tracking;
the permissions of the key directory; the `runtime keys` scope commands."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zmq

from exporters.metrics import RuntimeMetrics
from runtime.config import free_loopback_port
from runtime.ingest import Ingest
from sensors.core import keys, schema, wire
from sensors.core.key_scope import KeyScope, ScopeError, make_scope, read_scope

ARRAYS = {"rgb": {"kpts": np.full((17, 2), 100.0)}, "lidar": {"points": np.zeros((20, 3))},
          "wifi": {"amp": np.ones((1, 3, 114)), "phase": np.zeros((1, 3, 114))}, "gt": {"joints": np.zeros((17, 3))}}


@pytest.fixture()
def keydir(tmp_path):
    d = tmp_path / "keys"
    keys.init(d)
    keys.add(d, "lidar-1", "sensor", make_scope("lidar-1", ["lidar"], sources=["lidar-front"]))
    keys.add(d, "cam", "sensor", make_scope("cam", ["rgb"]))
    keys.add(d, "cam-b", "sensor", make_scope("cam-b", ["rgb"]))
    keys.add(d, "replay", "sensor", make_scope("replay", ["all"], ground_truth=True))
    keys.add(d, "legacy", "sensor")   # an allow-list file written before scopes: the default scope
    return d


class Clients:
    """One PUB socket per client key, connected to the ingest (subscription seen before sending)."""

    def __init__(self, d, endpoint, names):
        self.ctx = zmq.Context()
        self.socks = {}
        for name in names:
            s = self.ctx.socket(zmq.XPUB)
            keys.CurveClient.load(d / "clients" / f"{name}.key_secret", d / "server.key").apply(s)
            s.connect(endpoint)
            assert s.poll(5000), f"{name}: no subscription (handshake refused?)"
            s.recv()
            self.socks[name] = s

    def send(self, name, topic, src, seq=0, t_ns=None):
        t = time.time_ns() if t_ns is None else t_ns
        self.socks[name].send_multipart(wire.encode(wire.Message(topic, src, seq, t, t, ARRAYS[topic])))

    def close(self):
        for s in self.socks.values():
            s.close(0)
        self.ctx.term()


def _wait(cond, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not cond():
        time.sleep(0.02)
    assert cond()


def test_a_key_may_send_only_its_modalities_and_sources_and_gt_needs_its_own_grant(keydir):
    ep = f"tcp://127.0.0.1:{free_loopback_port()}"
    metrics = RuntimeMetrics()
    ing = Ingest(ep, bind=True, metrics=metrics, curve=keys.CurveServer.from_dir(keydir, "sensor")).start()
    clients = Clients(keydir, ep, ["lidar-1", "cam", "replay", "legacy"])

    def scope_drops(modality):
        return metrics.registry.get_sample_value("awc_messages_dropped_total", {"modality": modality, "reason": "scope"})

    try:
        clients.send("lidar-1", "rgb", "lidar-front")      # a lidar key sending rgb
        clients.send("lidar-1", "lidar", "cam")            # its modality, another key's src name
        clients.send("cam", "gt", "cam")                   # ground truth from a camera key
        clients.send("legacy", "gt", "legacy")             # the default scope: no gt
        _wait(lambda: ing.dropped_total(reason="scope") == 4)
        assert scope_drops("rgb") == 1 and scope_drops("lidar") == 1 and scope_drops("unknown") == 2
        assert ing.received_total() == 0
        clients.send("lidar-1", "lidar", "lidar-front")
        clients.send("cam", "rgb", "cam")
        clients.send("replay", "gt", "mmfi-replay")
        clients.send("legacy", "wifi", "nic")
        _wait(lambda: ing.received_total() == 4)
        got = {(m.topic, m.key, m.src) for m in ing.drain()}
        assert got == {("lidar", "lidar-1", "lidar-front"), ("rgb", "cam", "cam"), ("gt", "replay", "mmfi-replay"),
                       ("wifi", "legacy", "nic")}
        assert ing.dropped_total(reason="scope") == 4   # the accounting still holds: sent = received + dropped
    finally:
        clients.close()
        ing.stop()


def test_one_key_cannot_invent_sequence_gaps_for_another(keydir):
    ep = f"tcp://127.0.0.1:{free_loopback_port()}"
    ing = Ingest(ep, bind=True, curve=keys.CurveServer.from_dir(keydir, "sensor")).start()
    clients = Clients(keydir, ep, ["cam", "cam-b"])
    try:
        for k in range(20):   # the same topic and src name from two keys, the second raising seq by 6
            clients.send("cam", "rgb", "cam", seq=k)
            clients.send("cam-b", "rgb", "cam", seq=6 * k + 1000)
        _wait(lambda: ing.received_total() == 40)
        lost = {key: sum(m.lost for m in msgs) for key, msgs in
                (("cam", [m for m in ing.drain() if m.key == "cam"]),)}
        assert lost == {"cam": 0}                          # the camera's own stream lost nothing
        assert ing.dropped_total("rgb", "sequence_gap") == 19 * 5   # cam-b's own gaps, counted as its
        assert ing.restarts == 0
    finally:
        clients.close()
        ing.stop()


def test_scope_metadata_round_trips_and_bad_scopes_are_refused(keydir, tmp_path):
    scope = read_scope(keydir / "sensors" / "lidar-1.key")
    assert scope == KeyScope("lidar-1", frozenset({"lidar"}), frozenset({"lidar-front"}))
    legacy = read_scope(keydir / "sensors" / "legacy.key")
    assert not legacy.explicit and legacy.topics == frozenset(schema.MODALITIES) and legacy.sources is None
    assert zmq.auth.load_certificate(str(keydir / "sensors" / "lidar-1.key"))[0]   # still ZeroMQ's format
    keys.set_scope(keydir, "legacy", make_scope("legacy", ["wifi"]))
    assert read_scope(keydir / "sensors" / "legacy.key").topics == frozenset({"wifi"})
    with pytest.raises(ScopeError, match="scope topics"):
        make_scope("x", ["pose"])
    bad = keydir / "sensors" / "legacy.key"
    bad.write_text(bad.read_text().replace('topics = "wifi"', 'topics = "wifi sonar"'))
    with pytest.raises(keys.KeyFileError, match="sonar"):
        keys.CurveServer.from_dir(keydir, "sensor")
    with pytest.raises(keys.KeyFileError, match="viewer"):
        keys.add(keydir, "v", "viewer", make_scope("v", ["rgb"]))


@pytest.mark.parametrize("target", [".", "sensors", "sensors/cam.key"])
def test_group_or_world_writable_key_folders_and_allow_lists_are_refused(keydir, target):
    path = keydir / target
    os.chmod(path, os.stat(path).st_mode | 0o002)
    with pytest.raises(keys.KeyFileError, match="chmod go-w"):
        keys.CurveServer.from_dir(keydir, "sensor")
    os.chmod(path, os.stat(path).st_mode & ~0o022 | 0o020)   # group-writable: refused as well
    with pytest.raises(keys.KeyFileError, match="group or others can write"):
        keys.CurveServer.from_dir(keydir, "sensor")
    os.chmod(path, os.stat(path).st_mode & ~0o022)
    assert keys.CurveServer.from_dir(keydir, "sensor").scopes


def test_runtime_keys_commands_require_and_show_a_scope(tmp_path, capsys, caplog):
    from runtime.cli import main

    d = tmp_path / "keys"
    assert main(["keys", "init", str(d)]) == 0
    assert main(["keys", "add", str(d), "cam", "--role", "sensor"]) == 2          # no scope: refused
    assert "needs its scope" in caplog.text
    assert main(["keys", "add", str(d), "cam", "--role", "sensor", "--modality", "rgb", "--src", "cam-front"]) == 0
    assert main(["keys", "add", str(d), "bad", "--role", "sensor", "--modality", "sonar"]) == 2
    assert main(["keys", "add", str(d), "v", "--role", "viewer", "--modality", "rgb"]) == 2
    assert main(["keys", "scope", str(d), "cam", "--modality", "rgb,lidar", "--ground-truth"]) == 0
    capsys.readouterr()
    assert main(["keys", "list", str(d)]) == 0
    listed = capsys.readouterr().out
    assert "rgb,lidar,gt; any src" in listed


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another account")
def test_allow_lists_owned_by_another_account_are_refused(keydir):
    os.chown(keydir / "sensors" / "cam.key", 4242, -1)
    with pytest.raises(keys.KeyFileError, match="belongs to uid 4242"):
        keys.CurveServer.from_dir(keydir, "sensor")
