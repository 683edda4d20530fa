"""The viewer's side of the pose stream: a SUB socket read on the server's event loop, the newest
frame per station, and one latest-wins queue per open page.

The viewer never slows the runtime: it runs in its own process and its SUB socket has a small
receive high-water mark, so when it falls behind ZeroMQ drops messages for this subscriber only
(the runtime's PUB never blocks). What is lost is counted: ``lost`` per station, the pose
messages the viewer never saw (gaps in the messages' ``seq``, which the runtime's publisher
advances once per pose sent: a runtime idle without sensor data sends nothing and loses nothing),
unreadable messages, and frames a slow page skipped because a newer one of the same station
arrived first (``coalesced``). A ``seq`` that goes back is a restarted runtime: nothing is counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from runtime.view.frames import frame_from_message
from sensors.core import keys, schema, wire

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubscriberConfig:
    """Where the pose stream comes from and how much the viewer may buffer."""

    endpoint: str
    rcv_hwm: int = 20                  # messages ZeroMQ holds for the viewer before dropping
    curve: keys.CurveClient | None = None   # CurveZMQ: this viewer's key pair and the runtime's public key

    def __post_init__(self):
        if "://" not in self.endpoint:
            raise ValueError(f"--connect: expected a ZeroMQ endpoint like tcp://127.0.0.1:5556, got "
                             f"{self.endpoint!r}")
        if self.rcv_hwm < 1:
            raise ValueError(f"receive high-water mark must be >= 1, got {self.rcv_hwm}")
        if self.curve is None:
            keys.check_plaintext([self.endpoint], False, "viewer subscription to the pose stream")


@dataclass(eq=False)
class Client:
    """One open page: the frames it has not been sent yet (newest per station)."""

    pending: dict[str, dict] = field(default_factory=dict)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    coalesced: int = 0


@dataclass
class StreamStats:
    received: int = 0
    unreadable: int = 0
    not_pose: int = 0
    lost: int = 0
    coalesced: int = 0
    last_recv_ns: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Hub:
    """Newest frame per station and the open pages. Single event loop: no locks."""

    def __init__(self):
        self.latest: dict[str, dict] = {}
        self.clients: set[Client] = set()
        self.stats = StreamStats()
        self._last_seq: dict[str, int] = {}
        self.tick_span: dict[str, list[int]] = {}     # station -> [first, last] tick received

    def add_client(self) -> Client:
        client = Client(pending=dict(self.latest))
        if client.pending:
            client.event.set()
        self.clients.add(client)
        return client

    def remove_client(self, client: Client) -> None:
        self.clients.discard(client)

    def publish(self, frame: dict) -> None:
        station = frame["station"]
        seq = int(frame.get("seq", frame["tick"]))
        last = self._last_seq.get(station)
        if last is not None and seq > last + 1:
            self.stats.lost += seq - last - 1
        self._last_seq[station] = seq
        self.tick_span.setdefault(station, [frame["tick"], frame["tick"]])[1] = frame["tick"]
        self.latest[station] = frame
        for client in self.clients:
            if station in client.pending:
                client.coalesced += 1
                self.stats.coalesced += 1
            client.pending[station] = frame
            client.event.set()

    def receive(self, frames: list) -> dict | None:
        """One multipart message from the socket -> the frame published, or None (counted)."""
        recv_ns = time.time_ns()
        try:
            msg = wire.decode(frames)
        except wire.WireError as err:
            self.stats.unreadable += 1
            log.debug("unreadable pose message: %s", err)
            return None
        if msg.topic != schema.POSE_TOPIC:
            self.stats.not_pose += 1
            return None
        frame = frame_from_message(msg)
        frame["recv_ns"] = recv_ns
        self.stats.received += 1
        self.stats.last_recv_ns = recv_ns
        self.publish(frame)
        return frame


def open_subscriber(cfg: SubscriberConfig, ctx: zmq.asyncio.Context) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, cfg.rcv_hwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 4 * 1024 * 1024)
    if cfg.curve is not None:
        cfg.curve.apply(sock)
    sock.setsockopt(zmq.SUBSCRIBE, schema.POSE_TOPIC.encode())
    sock.connect(cfg.endpoint)
    return sock


async def subscribe(cfg: SubscriberConfig, hub: Hub, stop: asyncio.Event) -> None:
    """Read the pose stream into ``hub`` until ``stop`` is set."""
    ctx = zmq.asyncio.Context()
    sock = open_subscriber(cfg, ctx)
    log.info("viewer subscribed to the pose stream at %s (receive HWM %d)", cfg.endpoint, cfg.rcv_hwm)
    try:
        while not stop.is_set():
            if await sock.poll(timeout=200) & zmq.POLLIN:
                hub.receive(await sock.recv_multipart(copy=False))
    finally:
        sock.close(linger=0)
        ctx.term()
