"""CurveZMQ keys: authenticated, encrypted sensor ingest and pose stream (docs/security.md).

A key directory, made by ``runtime keys init DIR``, holds::

    DIR/server.key            the runtime's public key (give it to every client)
    DIR/server.key_secret     the runtime's secret key (0600, never leaves the runtime host)
    DIR/sensors/NAME.key      allow-list: public keys of the sensors that may send (ingest)
    DIR/viewers/NAME.key      allow-list: public keys of the clients that may read the pose stream
    DIR/clients/NAME.key[_secret]   key pairs made by ``runtime keys add`` (move each to its client)

Key files are ZeroMQ's own certificate format (``zmq.auth``); every file written here is 0600 and
a secret key file that group or others can read is refused (as ssh does). The runtime binds with
``curve_server`` and a ZAP authenticator (``zmq.auth.thread.ThreadAuthenticator``) that admits only
the allow-listed public keys; a client (``CurveClient``) needs its own key pair and the server's
public key. Rotation: ``add`` a new client key, restart the runtime, move the client to it, then
``revoke`` the old one and restart again (the allow-list is read when a socket starts).

Used by: ``runtime.ingest.Ingest`` and ``exporters.pose_publisher.PosePublisher`` (servers),
``sensors.publisher.SensorPublisher`` / ``sensors replay --keys`` and pose-stream readers (clients):

    from sensors.core import keys
    sock = ctx.socket(zmq.SUB)
    keys.CurveClient.load("DIR/clients/viewer-1.key_secret", "DIR/server.key").apply(sock)
    sock.connect("tcp://127.0.0.1:5556")
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.monitor
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

SERVER_NAME = "server"
ROLES: dict[str, str] = {"sensor": "sensors", "viewer": "viewers"}   # role -> allow-list folder
CLIENTS_DIR = "clients"
NETWORK_SCHEMES = ("tcp://", "udp://", "pgm://", "epgm://", "ws://", "wss://", "norm://", "vmci://")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# Why a peer's handshake on a CurveZMQ server socket failed, as seen by the socket monitor (closed
# set: the ``reason`` label of ``awc_ingest_handshake_failures_total``, docs/security.md).
HANDSHAKE_FAILURE_REASONS: tuple[str, ...] = (
    "unknown_key",          # the ZAP authenticator refused the client's public key (not allow-listed)
    "wrong_server_key",     # the client's HELLO does not open with this server's key (another runtime's server.key)
    "mechanism_mismatch",   # the peer speaks another security mechanism (a plaintext client)
    "aborted",              # the peer hung up mid-handshake (a plaintext client that saw the greeting, a port probe)
    "other",                # any other handshake error (malformed handshake command, ZAP handler error)
)
HANDSHAKE_FAILED_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                           | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_ZAP_DENIED = 400   # ZAP status code of a refused key (300 = try later, 500 = handler error)


def handshake_failure_reason(event: int, value: int) -> str:
    """The ``HANDSHAKE_FAILURE_REASONS`` entry of one socket-monitor event (``event``, ``value``):
    the value is the ZAP status code for an AUTH failure, the ZMTP protocol error code for a
    PROTOCOL failure, an errno for NO_DETAIL."""
    if event & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "unknown_key" if value == _ZAP_DENIED else "other"
    if event & zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return {zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "wrong_server_key",
                zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "mechanism_mismatch"}.get(value, "other")
    if event & zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return "aborted"
    raise ValueError(f"socket-monitor event {event:#x} is not a failed handshake "
                     f"(expected one of the HANDSHAKE_FAILED events {HANDSHAKE_FAILED_EVENTS:#x})")


class HandshakeFailures:
    """Refused handshakes of one server socket, counted by reason (``HANDSHAKE_FAILURE_REASONS``)
    from its ZeroMQ socket monitor. Shared by the sensor ingest and the pose publisher.

    ``watch(sock)`` opens the monitor (before the socket binds); the thread that owns the socket
    calls ``read()`` (non-blocking: it drains the events waiting) and ``unwatch(sock)`` at the end.
    Each failure calls ``on_failure(reason)`` (the Prometheus counter) and is logged as
    ``"<what>: handshake refused ..."``, at most one line a second per reason (a client with a wrong
    server key retries ten times a second). ``counts()`` may be read from any thread."""

    def __init__(self, what: str, on_failure: Callable[[str], None] | None = None,
                 logger: logging.Logger | None = None):
        self.what, self.on_failure, self.log = what, on_failure, logger or log
        self.monitor: zmq.Socket | None = None
        self._counts: dict[str, int] = dict.fromkeys(HANDSHAKE_FAILURE_REASONS, 0)
        self._last_log: dict[str, float] = {}   # reason -> monotonic time of its last log line
        self._lock = threading.Lock()

    def watch(self, sock: zmq.Socket) -> zmq.Socket:
        self.monitor = sock.get_monitor_socket(HANDSHAKE_FAILED_EVENTS)
        return self.monitor

    def unwatch(self, sock: zmq.Socket) -> None:
        if self.monitor is not None and not self.monitor.closed:
            if not sock.closed:
                sock.disable_monitor()
            self.monitor.close(linger=0)

    def read(self) -> int:
        """Count the failed handshakes the monitor reported since the last call; returns how many."""
        n = 0
        while self.monitor is not None and not self.monitor.closed:
            try:
                event = zmq.utils.monitor.recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            if event["event"] & HANDSHAKE_FAILED_EVENTS:
                self.count(handshake_failure_reason(event["event"], event["value"]), event.get("endpoint", b"?"))
                n += 1
        return n

    def count(self, reason: str, endpoint: bytes | str = b"?") -> None:
        """Account one refused handshake."""
        if reason not in self._counts:
            raise ValueError(f"handshake failure reason must be one of {HANDSHAKE_FAILURE_REASONS}, got {reason!r}")
        with self._lock:
            self._counts[reason] += 1
            n = self._counts[reason]
        if self.on_failure is not None:
            self.on_failure(reason)
        now = time.monotonic()
        if now - self._last_log.get(reason, -1e9) >= 1.0:
            self._last_log[reason] = now
            self.log.warning("%s: handshake refused on %s (%s; %d so far): see docs/security.md", self.what,
                             endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else endpoint, reason, n)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class KeyFileError(ValueError):
    """A key file or directory that cannot be used (message says what to do)."""


def _check_name(name: str) -> str:
    if not _NAME.match(name) or name == SERVER_NAME:
        raise KeyFileError(f"key name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (not {SERVER_NAME!r})")
    return name


def _private(path: Path) -> None:
    os.chmod(path, 0o600)


def _generate(folder: Path, name: str) -> tuple[Path, Path]:
    """A key pair NAME.key / NAME.key_secret in ``folder``, both 0600; refuses to overwrite."""
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for p in (public, secret):
        if p.exists():
            raise KeyFileError(f"{p} exists: pick another name, or revoke/remove the old key first")
    old = os.umask(0o077)   # the secret file is never readable by others, not even for a moment
    try:
        pub, sec = zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(old)
    for p in (pub, sec):
        _private(Path(p))
    return Path(pub), Path(sec)


def init(keys_dir: str | Path) -> tuple[Path, Path]:
    """Create DIR with the server key pair and empty allow-lists (sensors/, viewers/)."""
    root = Path(keys_dir)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for folder in (*ROLES.values(), CLIENTS_DIR):
        (root / folder).mkdir(exist_ok=True)
        os.chmod(root / folder, 0o700)
    return _generate(root, SERVER_NAME)


def add(keys_dir: str | Path, name: str, role: str) -> tuple[Path, Path]:
    """A client key pair in DIR/clients/ and its public key in the role's allow-list."""
    if role not in ROLES:
        raise KeyFileError(f"role must be one of {sorted(ROLES)}, got {role!r}")
    root = Path(keys_dir)
    if not (root / f"{SERVER_NAME}.key").exists():
        raise KeyFileError(f"{root} is not a key directory: run `runtime keys init {root}` first")
    pub, sec = _generate(root / CLIENTS_DIR, _check_name(name))
    allowed = root / ROLES[role] / pub.name
    allowed.write_bytes(pub.read_bytes())
    _private(allowed)
    return allowed, sec


def revoke(keys_dir: str | Path, name: str, role: str) -> Path:
    """Remove NAME from the role's allow-list (effective when the runtime restarts its sockets)."""
    if role not in ROLES:
        raise KeyFileError(f"role must be one of {sorted(ROLES)}, got {role!r}")
    path = Path(keys_dir) / ROLES[role] / f"{_check_name(name)}.key"
    if not path.exists():
        raise KeyFileError(f"{path} does not exist: `runtime keys list {keys_dir}` shows the allowed keys")
    path.unlink()
    return path


def listing(keys_dir: str | Path) -> list[dict]:
    """Every key file under DIR: role, name, public key (Z85), whether it has a secret, mode."""
    root = Path(keys_dir)
    if not root.is_dir():
        raise KeyFileError(f"{root} is not a directory: run `runtime keys init {root}` first")
    rows = []
    folders = {".": "server", CLIENTS_DIR: "client pair", **{v: f"allowed {k}" for k, v in ROLES.items()}}
    for folder, role in folders.items():
        for pub in sorted((root / folder).glob("*.key")):
            try:
                public, _ = zmq.auth.load_certificate(str(pub))
            except (ValueError, OSError) as err:
                public = f"UNREADABLE ({err})".encode()
            secret = pub.with_name(pub.name + "_secret")
            rows.append({"role": role, "name": pub.stem, "public": public.decode(), "path": str(pub),
                         "secret": secret.exists(), "mode": oct(stat.S_IMODE(pub.stat().st_mode))})
    return rows


def load_secret(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a NAME.key_secret file; refuses files group/others can read."""
    p = Path(path)
    if not p.is_file():
        raise KeyFileError(f"secret key file {p} not found (made by `runtime keys init` / `runtime keys add`)")
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"secret key file {p} has mode {oct(mode)}: others can read it. Fix with: chmod 600 {p}")
    try:
        public, secret = zmq.auth.load_certificate(str(p))
    except (ValueError, OSError) as err:
        raise KeyFileError(f"{p} is not a ZeroMQ key file: {err}") from err
    if secret is None:
        raise KeyFileError(f"{p} holds no secret key: pass the NAME.key_secret file")
    return public, secret


def load_public(path: str | Path) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise KeyFileError(f"public key file {p} not found (the server's is DIR/server.key)")
    try:
        public, _ = zmq.auth.load_certificate(str(p))
    except (ValueError, OSError) as err:
        raise KeyFileError(f"{p} is not a ZeroMQ key file: {err}") from err
    return public


@dataclass(frozen=True)
class CurveServer:
    """The runtime's side of a socket: its key pair and the folder of allowed client keys."""

    public: bytes
    secret: bytes
    allowed_dir: Path

    @classmethod
    def from_dir(cls, keys_dir: str | Path, role: str) -> CurveServer:
        root = Path(keys_dir)
        public, secret = load_secret(root / f"{SERVER_NAME}.key_secret")
        allowed = root / ROLES[role]
        if not allowed.is_dir():
            raise KeyFileError(f"allow-list {allowed} missing: run `runtime keys init {root}`")
        if not list(allowed.glob("*.key")):
            log.warning("allow-list %s is empty: no %s can connect (add one with `runtime keys add %s NAME "
                        "--role %s`)", allowed, role, root, role)
        return cls(public, secret, allowed)

    def start_authenticator(self, ctx: zmq.Context) -> ThreadAuthenticator:
        """ZAP handler of ``ctx`` admitting only the allow-listed keys (start before binding)."""
        auth = ThreadAuthenticator(ctx, log=logging.getLogger("sensors.core.keys.zap"))
        auth.start()
        auth.configure_curve(domain="*", location=str(self.allowed_dir))
        return auth

    def apply(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


@dataclass(frozen=True)
class CurveClient:
    """A client's side: its own key pair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, secret_file: str | Path, server_public_file: str | Path) -> CurveClient:
        public, secret = load_secret(secret_file)
        return cls(public, secret, load_public(server_public_file))

    def apply(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


def is_loopback(endpoint: str) -> bool:
    """True for inproc/ipc endpoints and tcp endpoints on 127.0.0.0/8, ::1 or localhost."""
    if endpoint.startswith(("inproc://", "ipc://")):
        return True
    m = re.match(r"^tcp://(\[?[^\]]*\]?):[0-9*]+$", endpoint)
    if not m:
        return False
    host = m.group(1).strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext(endpoints: list[str] | tuple[str, ...], force: bool, what: str) -> None:
    """Plaintext only on loopback unless forced (``security.force_plaintext``)."""
    remote = [ep for ep in endpoints if ep.startswith(NETWORK_SCHEMES) and not is_loopback(ep)]
    if remote and not force:
        raise ValueError(f"{what}: plaintext (no CurveZMQ) on the non-loopback endpoint(s) {remote} would let "
                         f"anyone on the network read or inject health data. Use keys (runtime keys init DIR, "
                         f"then --keys DIR) or, on a trusted network only, force it "
                         f"(--set security.force_plaintext=true)")
    if remote:
        log.warning("%s: PLAINTEXT on non-loopback %s (forced): unauthenticated and unencrypted", what, remote)


# ------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_cmd", required=True)
    q = sub.add_parser("init", help="create a key directory: server key pair and empty allow-lists")
    q.add_argument("dir")
    for name, text in (("add", "generate a client key pair and allow-list its public key"),
                       ("revoke", "remove a client's public key from an allow-list")):
        q = sub.add_parser(name, help=text)
        q.add_argument("dir")
        q.add_argument("name")
        q.add_argument("--role", required=True, choices=sorted(ROLES), help="sensor (ingest) or viewer (pose stream)")
    q = sub.add_parser("list", help="list the keys of a key directory")
    q.add_argument("dir")


def run(args: argparse.Namespace) -> int:
    try:
        if args.keys_cmd == "init":
            pub, sec = init(args.dir)
            print(f"server public key: {pub}\nserver secret key: {sec} (0600, keep it on this host)")
        elif args.keys_cmd == "add":
            allowed, sec = add(args.dir, args.name, args.role)
            print(f"allowed {args.role} {args.name}: {allowed}\nclient secret key: {sec} (0600): move it to the "
                  f"client with {Path(args.dir) / (SERVER_NAME + '.key')}")
        elif args.keys_cmd == "revoke":
            print(f"revoked: removed {revoke(args.dir, args.name, args.role)}; restart the runtime to apply")
        else:
            for r in listing(args.dir):
                print(f"{r['role']:<15} {r['name']:<20} {r['public']}  {r['mode']}"
                      f"{'  +secret' if r['secret'] else ''}")
    except (KeyFileError, OSError) as err:
        log.error("%s", err)
        return 2
    return 0
