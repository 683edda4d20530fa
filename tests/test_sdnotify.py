"""runtime.sdnotify: the datagrams systemd would receive, on a real AF_UNIX socket."""

from __future__ import annotations

import os
import socket

import pytest

from runtime.sdnotify import Notifier


@pytest.fixture
def systemd_socket(tmp_path):
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2)
    yield s, str(path)
    s.close()


def test_ready_status_and_stopping_arrive_as_systemd_datagrams(systemd_socket):
    sock, path = systemd_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled and n.ready("serving station demo")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving station demo"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_watchdog_pings_at_most_once_per_half_interval(systemd_socket):
    sock, path = systemd_socket
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_s == 10.0
    assert n.watchdog(now=100.0)
    assert not n.watchdog(now=104.9)          # within half the interval: no ping
    assert n.watchdog(now=105.0)
    assert [sock.recv(4096), sock.recv(4096)] == [b"WATCHDOG=1", b"WATCHDOG=1"]


def test_watchdog_for_another_pid_and_no_socket_are_no_ops():
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    n = Notifier({})
    assert not n.enabled and not n.ready() and not n.watchdog(now=0.0)


def test_abstract_socket_address(tmp_path):
    name = f"awc-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert s.recv(4096) == b"READY=1"
    finally:
        s.close()


def test_a_vanished_socket_is_logged_not_raised(tmp_path, caplog):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False
    assert "sd_notify" in caplog.text
