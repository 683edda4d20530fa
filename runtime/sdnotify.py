"""systemd's service notification protocol (sd_notify(3)), without libsystemd.

A unit with ``Type=notify`` waits for ``READY=1`` before it counts the service as started, and with
``WatchdogSec=`` restarts it when ``WATCHDOG=1`` stops arriving. Each message is one datagram of
``KEY=value`` lines to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means
Linux's abstract namespace). Without ``$NOTIFY_SOCKET`` (not under systemd) every call does
nothing, so the runtime behaves the same everywhere.

The watchdog interval comes from ``$WATCHDOG_USEC`` (for this process only when ``$WATCHDOG_PID``
is unset or names it); ``watchdog()`` sends at most one ping per half interval, as systemd advises.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = ("\0" + raw[1:]) if raw.startswith("@") else (raw or None)
        self.watchdog_s: float | None = None
        pid = env.get("WATCHDOG_PID")
        usec = env.get("WATCHDOG_USEC", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._last_ping = float("-inf")

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (keys upper-cased); False when not under systemd or on error."""
        if self.address is None:
            return False
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(payload, self.address)
        except OSError as err:   # systemd gone or socket unwritable: log, never take the runtime down
            log.warning("sd_notify to %r failed: %s", self.address, err)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify(ready=1, **({"status": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(status=text)

    def stopping(self) -> bool:
        return self.notify(stopping=1)

    def watchdog(self, now: float | None = None) -> bool:
        """Ping the watchdog if one is set and half its interval passed since the last ping."""
        if self.watchdog_s is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.watchdog_s / 2:
            return False
        self._last_ping = now
        return self.notify(watchdog=1)
