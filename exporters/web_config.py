"""TLS and basic auth of the station's HTTP servers (metrics endpoint and viewer), read from a web
config file in the format of Prometheus' own exporters (exporter-toolkit)::

    tls_server_config:
      cert_file: metrics.crt        # relative to this file
      key_file: metrics.key
    basic_auth_users:
      prometheus: $2b$12$...        # bcrypt hash: htpasswd -nBC 12 "" | tr -d ':\\n'

Basic auth that cannot be turned against the station (docs/security.md, "Password guessing"):

* **cached verification**: the outcome of a bcrypt check is kept for its (user, password hash,
  password) triple, as the exporter toolkit does: Prometheus' scrapes with the right password cost
  one bcrypt check after start, then a SHA-256; a repeated wrong password costs nothing either.
  Successes and failures are cached apart (256 each), so a flood of wrong passwords cannot evict
  the right one;
* **one bcrypt check at a time** (a single worker thread, off the event loop and without the GIL):
  password guessing can never use more than one core;
* **a budget of uncached checks** per client address (``ADDRESS_BURST`` at once, then one every
  ``ADDRESS_REFILL_S``) and for the whole server (``SERVER_BURST``, then one every
  ``SERVER_REFILL_S``): beyond it the answer is 429 with ``Retry-After`` and no check runs. A
  successful check gives its token back, so a right password never uses the budget up;
* **the same cost for an unknown user**: a name that is not configured is checked against a hash
  of the configured users' bcrypt cost, so the refusal takes as long as a known user's wrong
  password and does not say which names exist.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import ssl
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import yaml

log = logging.getLogger(__name__)

CACHE_SIZE = 256            # cached outcomes, successes and failures apart
ADDRESS_BURST = 5           # uncached checks a client address may make at once ...
ADDRESS_REFILL_S = 10.0     # ... then one every this many seconds
SERVER_BURST = 10           # uncached checks the whole server makes at once ...
SERVER_REFILL_S = 2.0       # ... then one every this many seconds
MAX_ADDRESSES = 4096        # client addresses tracked (least recently seen forgotten first)
REALM = 'Basic realm="awc-pose", charset="UTF-8"'
AUTH_OUTCOMES = ("unauthorized", "rate_limited")   # why a request was refused (metric label)


@dataclass(frozen=True)
class WebConfig:
    """TLS and basic auth of an HTTP endpoint (Prometheus web config file format)."""

    cert_file: str = ""
    key_file: str = ""
    users: dict[str, str] = field(default_factory=dict)   # name -> bcrypt hash

    @classmethod
    def load(cls, path: str | Path) -> WebConfig:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"web config {p}: cannot read it: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"web config {p}: expected a mapping with tls_server_config and/or basic_auth_users")
        unknown = set(data) - {"tls_server_config", "basic_auth_users"}
        if unknown:
            raise ValueError(f"web config {p}: unknown keys {sorted(unknown)}; expected tls_server_config, "
                             f"basic_auth_users")
        tls = data.get("tls_server_config") or {}
        users = data.get("basic_auth_users") or {}
        if not isinstance(tls, dict) or not isinstance(users, dict):
            raise ValueError(f"web config {p}: tls_server_config and basic_auth_users must be mappings")
        if bool(tls.get("cert_file")) != bool(tls.get("key_file")):
            raise ValueError(f"web config {p}: tls_server_config needs both cert_file and key_file")
        for name, h in users.items():
            if not (isinstance(h, str) and h.startswith(("$2a$", "$2b$", "$2y$"))):
                raise ValueError(f"web config {p}: user {name!r} needs a bcrypt hash ($2b$...), not a password")
        base = p.parent
        cert, key = (str(base / tls["cert_file"]), str(base / tls["key_file"])) if tls else ("", "")
        return cls(cert, key, {str(k): str(v) for k, v in users.items()})

    @property
    def secured(self) -> bool:
        """TLS and basic auth both configured (what a server off loopback needs)."""
        return bool(self.cert_file and self.users)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.cert_file:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as err:
            raise ValueError(f"web config: cannot load the TLS certificate {self.cert_file} and key "
                             f"{self.key_file}: {err}") from err
        return ctx

    def basic_auth(self) -> BasicAuth | None:
        return BasicAuth(self.users) if self.users else None


@dataclass(frozen=True)
class Verdict:
    """The outcome of one request's credentials: ``status`` 200 (allowed), 401 or 429."""

    status: int
    retry_after_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200


class _Budget:
    """A token bucket per key (a client address, or one key for the whole server)."""

    def __init__(self, burst: int, refill_s: float, max_keys: int = MAX_ADDRESSES):
        self.burst, self.refill_s, self.max_keys = float(burst), float(refill_s), max_keys
        self._tokens: OrderedDict[str, tuple[float, float]] = OrderedDict()   # key -> (tokens, at)

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._tokens.pop(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) / self.refill_s)

    def take(self, key: str, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one is back."""
        level = self._level(key, now)
        taken = level >= 1.0
        self._tokens[key] = (level - 1.0 if taken else level, now)
        if len(self._tokens) > self.max_keys:
            self._tokens.popitem(last=False)
        return 0.0 if taken else (1.0 - level) * self.refill_s

    def give_back(self, key: str, now: float) -> None:
        self._tokens[key] = (min(self.burst, self._level(key, now) + 1.0), now)


def _credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        name, sep, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (name, password) if sep else None


class BasicAuth:
    """Verifies ``Authorization: Basic`` headers against bcrypt hashes (see the module doc)."""

    def __init__(self, users: dict[str, str]):
        if not users:
            raise ValueError("basic auth needs at least one user")
        self.users = {name: h.encode() for name, h in users.items()}
        cost = max(int(h.split("$")[2]) for h in users.values())
        # An unknown name is checked against this: the same cost as a configured user's hash.
        self._unknown = bcrypt.hashpw(os.urandom(18), bcrypt.gensalt(cost))
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._failed: OrderedDict[bytes, None] = OrderedDict()
        self._per_address = _Budget(ADDRESS_BURST, ADDRESS_REFILL_S)
        self._server = _Budget(SERVER_BURST, SERVER_REFILL_S, max_keys=1)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="awc-http-bcrypt")
        self.checks = 0   # bcrypt checks run (the CPU that authentication cost)

    def _key(self, name: str, password: str) -> tuple[bytes, bytes]:
        hashed = self.users.get(name, self._unknown)
        digest = hashlib.sha256(b"\0".join((name.encode(), hashed, password.encode()))).digest()
        return digest, hashed

    def cached(self, header: str | None, address: str) -> tuple[Verdict | None, tuple | None]:
        """The verdict that needs no bcrypt check (no credentials, a cached outcome, no budget
        left), or (None, work) where ``work`` goes to ``check``."""
        creds = _credentials(header)
        if creds is None:
            return Verdict(401), None
        digest, hashed = self._key(*creds)
        with self._lock:
            if digest in self._ok:
                self._ok.move_to_end(digest)
                return Verdict(200), None
            if digest in self._failed:
                return Verdict(401), None
            now = time.monotonic()
            wait = self._per_address.take(address, now)
            if wait:
                return Verdict(429, wait), None
            wait = self._server.take("", now)
            if wait:
                self._per_address.give_back(address, now)
                return Verdict(429, wait), None
        return None, (creds, digest, hashed, address)

    def check(self, work: tuple) -> Verdict:
        """One bcrypt check (``work`` from ``cached``), its outcome cached; called on the worker thread."""
        (name, password), digest, hashed, address = work
        ok = bcrypt.checkpw(password.encode(), hashed) and name in self.users
        with self._lock:
            self.checks += 1
            cache = self._ok if ok else self._failed
            cache[digest] = None
            if len(cache) > CACHE_SIZE:
                cache.popitem(last=False)
            if ok:   # a right password does not use the budget up
                now = time.monotonic()
                self._per_address.give_back(address, now)
                self._server.give_back("", now)
        return Verdict(200 if ok else 401)

    def verify(self, header: str | None, address: str) -> Verdict:
        """Blocking: the verdict of one request (tests, synchronous callers)."""
        verdict, work = self.cached(header, address)
        return verdict if verdict is not None else self._pool.submit(self.check, work).result()

    async def verify_async(self, header: str | None, address: str) -> Verdict:
        """The verdict of one request; a bcrypt check runs on the single worker thread."""
        verdict, work = self.cached(header, address)
        if verdict is not None:
            return verdict
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.check, work)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
