"""``runtime view``: the live station viewer (a web page) of a pose stream or a recording.

    runtime view --connect tcp://127.0.0.1:5556 [--port 8080] [--host 127.0.0.1]
    runtime view --recording runs/demo/poses.jsonl [--port 8080]
    runtime view --connect ... --host 0.0.0.0 --web-config web.yml [--allow-host station-3.ward]

Open http://127.0.0.1:8080/ in a browser. The page is served on loopback unless --host says
otherwise, and off loopback only with TLS and basic auth (--web-config, docs/security.md) unless
--force-plaintext. The viewer runs in its own process and never slows the runtime (see
runtime.view.hub).
"""

from __future__ import annotations

import argparse
import logging

from exporters.web_config import WebConfig
from runtime.view.frames import STALE_AFTER_S
from runtime.view.hub import SubscriberConfig
from runtime.view.server import ViewConfig, serve_view
from sensors.core.cli_util import add_client_key_arguments, add_list_argument
from sensors.replay import client_keys

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--connect", metavar="ENDPOINT", help="pose stream to subscribe to, e.g. tcp://127.0.0.1:5556")
    src.add_argument("--recording", metavar="FILE", help="play back a pose recording (.jsonl or .npz)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port of the page (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (default loopback)")
    p.add_argument("--rcv-hwm", type=int, default=20, help="pose messages ZeroMQ may queue for the viewer")
    p.add_argument("--stale-after", type=float, default=STALE_AFTER_S, metavar="SECONDS",
                   help=f"live: show a station stale (greyed skeleton, lights off, age of its last pose) after this "
                        f"long without a pose (default {STALE_AFTER_S:g})")
    p.add_argument("--max-frames", type=int, default=36_000,
                   help="recording: frames sent to the page (longer recordings are thinned evenly)")
    p.add_argument("--web-config", default=None, metavar="FILE",
                   help="TLS and basic auth of the page (the format of metrics.web_config); needed off loopback")
    add_list_argument(p, "--allow-host", default=[], metavar="NAME",
                      help="host names the page may be reached by, besides IP addresses, localhost and this "
                           "machine's name (DNS-rebinding guard)")
    p.add_argument("--force-plaintext", action="store_true",
                   help="serve off loopback without TLS and authentication (an isolated network only)")
    add_client_key_arguments(p, "viewer", "CurveZMQ: key directory (runtime keys init/add ... --role viewer): "
                                                   "DIR/clients/NAME.key_secret and DIR/server.key")


def config_from_args(args: argparse.Namespace) -> ViewConfig:
    sub = None
    if args.connect:
        sub = SubscriberConfig(args.connect, rcv_hwm=args.rcv_hwm, curve=client_keys(args))
    web = WebConfig.load(args.web_config) if args.web_config else None
    return ViewConfig(subscriber=sub, recording=args.recording, host=args.host, port=args.port,
                      max_frames=args.max_frames, web=web, allowed_hosts=tuple(args.allow_host),
                      force_plaintext=args.force_plaintext, stale_after_s=args.stale_after)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
        serve_view(cfg)
    except (ValueError, FileNotFoundError, OSError) as err:
        log.error("%s", err)
        return 2
    return 0
