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
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from sensors.core import schema
from sensors.core.cli_util import add_list_argument
from sensors.core.handshakes import (  # noqa: F401 - re-exported: keys.HandshakeFailures etc.
    HANDSHAKE_FAILED_EVENTS,
    HANDSHAKE_FAILURE_REASONS,
    HandshakeFailures,
    handshake_failure_reason,
)
from sensors.core.key_scope import (
    KeyFileError,
    KeyScope,
    check_not_writable,
    make_scope,
    read_scope,
    write_entry,
)

log = logging.getLogger(__name__)

SERVER_NAME = "server"
ROLES: dict[str, str] = {"sensor": "sensors", "viewer": "viewers"}   # role -> allow-list folder
CLIENTS_DIR = "clients"
NETWORK_SCHEMES = ("tcp://", "udp://", "pgm://", "epgm://", "ws://", "wss://", "norm://", "vmci://")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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


def add(keys_dir: str | Path, name: str, role: str, scope: KeyScope | None = None) -> tuple[Path, Path]:
    """A client key pair in DIR/clients/ and its public key in the role's allow-list; a sensor key
    with ``scope`` (``key_scope.make_scope``) may send only that (without: the default scope,
    every input modality and no ``gt``, see ``sensors.core.key_scope``)."""
    if role not in ROLES:
        raise KeyFileError(f"role must be one of {sorted(ROLES)}, got {role!r}")
    if scope is not None and role != "sensor":
        raise KeyFileError(f"only sensor keys have a scope (what they may send), not {role} keys")
    root = Path(keys_dir)
    if not (root / f"{SERVER_NAME}.key").exists():
        raise KeyFileError(f"{root} is not a key directory: run `runtime keys init {root}` first")
    pub, sec = _generate(root / CLIENTS_DIR, _check_name(name))
    allowed = root / ROLES[role] / pub.name
    if scope is None:
        allowed.write_bytes(pub.read_bytes())
        _private(allowed)
    else:
        write_entry(allowed, load_public(pub), KeyScope(name, scope.topics, scope.sources))
    return allowed, sec


def set_scope(keys_dir: str | Path, name: str, scope: KeyScope) -> Path:
    """Write ``scope`` into the sensor allow-list entry NAME (effective when the runtime restarts)."""
    path = Path(keys_dir) / ROLES["sensor"] / f"{_check_name(name)}.key"
    if not path.is_file():
        raise KeyFileError(f"{path} does not exist: `runtime keys list {keys_dir}` shows the allowed sensor keys")
    write_entry(path, load_public(path), KeyScope(name, scope.topics, scope.sources))
    return path


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
            try:
                scope = read_scope(pub).describe() if folder == ROLES["sensor"] else ""
            except KeyFileError as err:
                scope = f"UNUSABLE SCOPE ({err})"
            rows.append({"role": role, "name": pub.stem, "public": public.decode(), "path": str(pub),
                         "secret": secret.exists(), "mode": oct(stat.S_IMODE(pub.stat().st_mode)), "scope": scope})
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
    scopes: dict[str, KeyScope] = field(default_factory=dict)   # Z85 public key -> scope (sensor socket)

    @classmethod
    def from_dir(cls, keys_dir: str | Path, role: str) -> CurveServer:
        """The server key pair and the role's allow-list, read now; refuses a key directory, an
        allow-list folder or file that group or others can write, or that another user owns."""
        root = Path(keys_dir)
        allowed = root / ROLES[role]
        if not root.is_dir() or not allowed.is_dir():
            raise KeyFileError(f"allow-list {allowed} missing: run `runtime keys init {root}`")
        check_not_writable(root, "key directory")
        check_not_writable(allowed, "allow-list folder")
        public, secret = load_secret(root / f"{SERVER_NAME}.key_secret")
        entries = sorted(allowed.glob("*.key"))
        if not entries:
            log.warning("allow-list %s is empty: no %s can connect (add one with `runtime keys add %s NAME "
                        "--role %s`)", allowed, role, root, role)
        scopes: dict[str, KeyScope] = {}
        for path in entries:
            check_not_writable(path, "allow-list file")
            key = load_public(path).decode()
            if key in scopes:
                raise KeyFileError(f"{path} and {allowed / scopes[key].name}.key hold the same public key: revoke "
                                   "one of them")
            scopes[key] = read_scope(path) if role == "sensor" else KeyScope(path.stem)
        unscoped = sorted(s.name for s in scopes.values() if not s.explicit) if role == "sensor" else []
        if unscoped:
            log.warning("sensor keys without a scope: %s may send every input modality under any src, and no gt. "
                        "Scope each: runtime keys scope %s NAME --modality M [--src SRC] (docs/security.md)",
                        ", ".join(unscoped), root)
        return cls(public, secret, allowed, scopes)

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


class PlaintextRefused(ValueError):
    """Plaintext ZeroMQ on a non-loopback endpoint, not forced."""


def check_plaintext(endpoints: list[str] | tuple[str, ...], force: bool, what: str) -> None:
    """Plaintext only on loopback unless forced (``security.force_plaintext``)."""
    remote = [ep for ep in endpoints if ep.startswith(NETWORK_SCHEMES) and not is_loopback(ep)]
    if remote and not force:
        raise PlaintextRefused(f"{what}: plaintext (no CurveZMQ) on the non-loopback endpoint(s) {remote} would let "
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
        if name == "add":
            _scope_arguments(q)
    q = sub.add_parser("scope", help="set what an allow-listed sensor key may send (its modalities and src names)")
    q.add_argument("dir")
    q.add_argument("name")
    _scope_arguments(q)
    q = sub.add_parser("list", help="list the keys of a key directory")
    q.add_argument("dir")


def _scope_arguments(q: argparse.ArgumentParser) -> None:
    add_list_argument(q, "--modality", default=[], metavar="M",
                      help=f"sensor keys: the modalities it may send, of {', '.join(schema.MODALITIES)} or all "
                           "(required for a sensor key, or --ground-truth)")
    q.add_argument("--ground-truth", action="store_true",
                   help=f"sensor keys: may also send {schema.GT_TOPIC} (the ground-truth role: a replay of a labelled "
                        "dataset, never a live sensor)")
    add_list_argument(q, "--src", default=None, metavar="SRC",
                      help="sensor keys: the only src names it may use (default: any)")


def _scope_of(args: argparse.Namespace) -> KeyScope | None:
    """The scope the command line gives (None for a viewer key)."""
    given = bool(args.modality or args.ground_truth or args.src)
    if getattr(args, "role", "sensor") != "sensor":
        if given:
            raise KeyFileError("--modality, --ground-truth and --src scope sensor keys; a viewer key has no scope")
        return None
    if not (args.modality or args.ground_truth):
        raise KeyFileError(f"a sensor key needs its scope: --modality M (repeatable; of {', '.join(schema.MODALITIES)}"
                           f" or all) and/or --ground-truth, optionally --src SRC (docs/security.md, \"Key scope\")")
    unknown = set(args.modality) - {*schema.MODALITIES, "all"}
    if unknown:
        raise KeyFileError(f"--modality: expected {', '.join(schema.MODALITIES)} or all, got {sorted(unknown)}")
    return make_scope(args.name, args.modality, args.ground_truth, args.src)


def run(args: argparse.Namespace) -> int:
    try:
        if args.keys_cmd == "init":
            pub, sec = init(args.dir)
            print(f"server public key: {pub}\nserver secret key: {sec} (0600, keep it on this host)")
        elif args.keys_cmd == "add":
            scope = _scope_of(args)
            allowed, sec = add(args.dir, args.name, args.role, scope)
            print(f"allowed {args.role} {args.name}{' (' + scope.describe() + ')' if scope else ''}: {allowed}\n"
                  f"client secret key: {sec} (0600): move it to the client with "
                  f"{Path(args.dir) / (SERVER_NAME + '.key')}")
        elif args.keys_cmd == "scope":
            scope = _scope_of(args)
            print(f"{set_scope(args.dir, args.name, scope)}: {scope.describe()}; restart the runtime to apply")
        elif args.keys_cmd == "revoke":
            print(f"revoked: removed {revoke(args.dir, args.name, args.role)}; restart the runtime to apply")
        else:
            for r in listing(args.dir):
                print(f"{r['role']:<15} {r['name']:<20} {r['public']}  {r['mode']}"
                      f"{'  +secret' if r['secret'] else ''}{'  ' + r['scope'] if r['scope'] else ''}")
    except (KeyFileError, OSError) as err:
        log.error("%s", err)
        return 2
    return 0
