"""``runtime serve``: ingest the sensor streams, serve fused poses, contributions and degradation.

    runtime serve --model awc.onnx [--config F] [--set section.key=value ...] [--console] [--duration S]

Starts, in order: the model (the provider really used is logged), the outputs (pose PUB,
recorder), the HTTP exporter (/metrics /healthz /readyz; its URL is logged), the ZeroMQ ingest,
then the tick loop. SIGINT/SIGTERM stop the loop; the recorder is flushed and closed, the pose
socket closed and the metrics left at their last values before the process exits.

Ready (``/readyz`` 200, ``awc_ready`` 1) means poses are flowing: the ingest and the loop run and a
tick produced a pose within ``metrics.ready_max_tick_age_s``. With every sensor stopped, silent or
sending only empty frames, the runtime is alive (``/healthz``) but not ready. Under systemd
(``Type=notify``) it sends READY=1 once the loop starts and WATCHDOG=1 from the loop
(``runtime.sdnotify``), so a hung loop is restarted.

Security (docs/security.md): ``--keys DIR`` (``security.keys_dir``) puts CurveZMQ on the sensor
ingest (allow-list DIR/sensors) and the pose stream (allow-list DIR/viewers); without keys,
``--plaintext`` must be given, and plaintext is then refused on non-loopback endpoints unless
``security.force_plaintext``. The HTTP endpoint takes TLS and basic auth from ``metrics.web_config``.

Exit codes: 0 after a stop by signal or ``--duration``; 2 when the configuration, model or ports
are unusable; 3 when a worker thread (the ingest) died: the process is no longer ready and exits so
that its supervisor (systemd ``Restart=on-failure``) restarts it.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from pathlib import Path

import zmq

from exporters.http import HttpExporter, ServerLimits, WebConfig
from exporters.metrics import RuntimeMetrics
from exporters.pose_publisher import PosePublisher
from exporters.recorder import keep_previous, open_recorder
from runtime.config import RuntimeConfig
from runtime.console import ConsoleView
from runtime.inference import ModelError, OnnxPoseModel
from runtime.ingest import Ingest
from runtime.loop import Loop, RunStats
from runtime.outputs import EventLog, MetricsOutput, Outputs, PublisherOutput, RecorderOutput
from runtime.pipeline import Pipeline
from runtime.sdnotify import Notifier
from sensors.core import keys
from sensors.core.cli_util import add_list_argument, add_set_argument, require_packages

log = logging.getLogger(__name__)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Config file, generic overrides and the common shortcuts (shared with ``runtime replay``)."""
    p.add_argument("--config", default=None, help="YAML file of the config keys to change (`runtime config show`)")
    add_set_argument(p, "sync.rate_hz=20")
    p.add_argument("--provider", choices=("auto", "cpu", "cuda"), default=None, help="inference.provider")
    p.add_argument("--require-gpu", action="store_true", help="refuse to run without the CUDA provider")
    p.add_argument("--threads", type=int, default=None, help="inference.intra_op_threads")
    p.add_argument("--clock", choices=("wall", "data"), default=None, help="sync.clock")
    p.add_argument("--metrics-port", type=int, default=None, help="metrics.port (0 = any free port)")
    p.add_argument("--record", default=None, metavar="PATH", help="recorder.path (.jsonl or .npz)")
    p.add_argument("--record-inputs", action="store_true", help="also record model inputs (.npz only)")
    p.add_argument("--exercise", default=None, metavar="CODE",
                   help="rehab.exercise: the current exercise (A01 ... A26 of protocol P2) until a client "
                        "sends another in a header field `exercise` (docs/rehab.md)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="exported ONNX model (training export)")
    add_config_arguments(p)
    add_list_argument(p, "--input", metavar="ENDPOINT[,ENDPOINT]",
                      help="bind the sensor socket here, sensors connect to it (inputs.endpoints with "
                           "inputs.bind=true; default tcp://127.0.0.1:5555)")
    add_list_argument(p, "--connect", metavar="ENDPOINT[,ENDPOINT]",
                      help="instead, connect the sensor socket to these sensor publishers (inputs.endpoints "
                           "with inputs.bind=false)")
    p.add_argument("--output", default=None, metavar="ENDPOINT", help="output.endpoint (pose PUB)")
    p.add_argument("--metrics-host", default=None, help="metrics.host (default loopback)")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="security.keys_dir: CurveZMQ key directory (runtime keys init DIR)")
    p.add_argument("--plaintext", action="store_true",
                   help="security.plaintext: no CurveZMQ (loopback endpoints only unless forced)")
    p.add_argument("--console", action="store_true", help="print a live view every second")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--view", type=int, nargs="?", const=8080, default=None, metavar="PORT",
                   help="also start the station viewer (`runtime view`) in its own process on "
                        "http://127.0.0.1:PORT/ (default 8080); with --keys it uses the client key "
                        "DIR/clients/viewer.key_secret")


def config_from_args(args: argparse.Namespace) -> RuntimeConfig:
    overrides = list(args.set)
    bind, connect = getattr(args, "input", None), getattr(args, "connect", None)
    if bind and connect:
        raise ValueError("--input (bind) and --connect (connect to publishers) exclude each other; choose one")
    if bind or connect:
        overrides += [f"inputs.endpoints={json.dumps(bind or connect)}", f"inputs.bind={'true' if bind else 'false'}"]
    shortcuts = {
        "inference.provider": args.provider, "inference.intra_op_threads": args.threads,
        "sync.clock": args.clock, "metrics.port": args.metrics_port, "recorder.path": args.record,
        "output.endpoint": getattr(args, "output", None),
        "metrics.host": getattr(args, "metrics_host", None), "security.keys_dir": getattr(args, "keys", None),
        "rehab.exercise": getattr(args, "exercise", None),
    }
    for key, value in shortcuts.items():
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if args.require_gpu:
        overrides.append("inference.require_gpu=true")
    if args.record_inputs:
        overrides.append("recorder.record_inputs=true")
    if getattr(args, "plaintext", False):
        overrides.append("security.plaintext=true")
    return RuntimeConfig.load(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    # Checked before anything starts, in the order a newcomer meets them: what to install (the
    # viewer's packages, a raised ModuleNotFoundError: one line from the dispatcher), the config,
    # the model, then the keys of the sockets.
    if args.view is not None:
        require_packages(*VIEW_PACKAGES)
    try:
        cfg = config_from_args(args)
        if args.view is not None:
            check_port_free("127.0.0.1", args.view, "--view")
        model = load_model(cfg, args.model)
        curve_servers(cfg)   # keys readable, or plaintext chosen explicitly
    except (ValueError, FileNotFoundError, ModelError) as err:
        log.error("%s", err)
        return 2
    try:
        stats = serve(cfg, model, console=args.console, duration_s=args.duration, view_port=args.view)
    except (keys.KeyFileError, keys.PlaintextRefused) as err:   # not a port clash: say only what is wrong
        log.error("cannot serve: %s", err)
        return 2
    except (OSError, zmq.ZMQError, ValueError) as err:   # ports in use, endpoints that do not parse
        log.error("cannot serve: %s. Is another runtime using these ports? Choose others with "
                  "--input, --output and --metrics-port (or --set metrics.enabled=false)", err)
        return 2
    except WorkerDied as err:
        log.critical("%s", err)
        return 3
    log.info("stopped: %d ticks, %d dropped, %d failed, %d messages", stats.ticks, stats.dropped, stats.errors,
             stats.messages)
    return 0


VIEW_PACKAGES = ("starlette", "uvicorn", "sse_starlette")   # the `view` extra, imported by the viewer process


def check_port_free(host: str, port: int, option: str) -> None:
    """Raise ValueError when ``host:port`` cannot be bound (in use), naming ``option`` to change it."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds: TIME_WAIT is no user
        try:
            s.bind((host, port))
        except OSError as err:
            raise ValueError(f"cannot serve the viewer on {host}:{port} ({err.strerror}): another process uses "
                             f"it; choose another port with {option} PORT") from err


class WorkerDied(RuntimeError):
    """A worker thread of the runtime ended on its own: the process must exit non-zero."""


def curve_servers(cfg: RuntimeConfig) -> tuple[keys.CurveServer | None, keys.CurveServer | None]:
    """(ingest, pose stream) CurveZMQ servers from ``security.keys_dir``, or (None, None) when
    plaintext was chosen explicitly; raises ValueError when neither was chosen."""
    sec = cfg.security
    if sec.keys_dir:
        return keys.CurveServer.from_dir(sec.keys_dir, "sensor"), keys.CurveServer.from_dir(sec.keys_dir, "viewer")
    if not sec.plaintext:
        raise ValueError("the sensor and pose sockets need CurveZMQ keys: `runtime keys init DIR` then "
                         "`--keys DIR` (docs/security.md); or, for local tests, `--plaintext` (loopback only)")
    return None, None


def load_model(cfg: RuntimeConfig, path: str | Path) -> OnnxPoseModel:
    inf = cfg.inference
    model = OnnxPoseModel.load(path, provider=inf.provider, require_gpu=inf.require_gpu,
                           intra_op_threads=inf.intra_op_threads)
    log.info("inference provider: %s (requested %s)", model.provider, inf.provider)
    return model


def build_outputs(cfg: RuntimeConfig, model: OnnxPoseModel, metrics: RuntimeMetrics, console: bool = False,
                  stats: RunStats | None = None) -> Outputs:
    """Pose PUB, recorder (saving the resolved config beside it), degradation log lines, the optional
    console, and the Prometheus metrics. The one place that decides what the runtime outputs."""
    _, pose_curve = curve_servers(cfg)
    publisher = PosePublisher(cfg.output.endpoint, cfg.output.bind, cfg.output.send_hwm, curve=pose_curve,
                              force_plaintext=cfg.security.force_plaintext, metrics=metrics)
    outputs: list = [PublisherOutput(publisher, cfg.station), EventLog()]
    if cfg.recorder.path:
        path = Path(cfg.recorder.path)
        r = cfg.recorder
        outputs.append(RecorderOutput(open_recorder(path, r.npz_max_ticks, r.npz_max_mb, r.flush_s, r.rotate_mb),
                                      cfg.station))
        config_path = path.with_name(path.name + ".config.yaml")
        kept = keep_previous(config_path)   # a restart keeps the previous run's config
        saved = cfg.save(config_path)
        log.info("recording ticks to %s (resolved config in %s%s)", path, saved,
                 f"; the previous run's kept as {kept.name}" if kept else "")
    if console:
        outputs.append(ConsoleView(stats=stats))
    return Outputs(outputs, MetricsOutput(metrics, cfg, model))


class Runtime:
    """The assembled runtime: pipeline, outputs, clock loop, HTTP exporter and ingest. ``start``
    brings up everything but the loop; ``run`` ticks until ``stop`` is set; ``close`` tears it down
    in order (ingest, outputs flushed, HTTP)."""

    def __init__(self, cfg: RuntimeConfig, model: OnnxPoseModel, console: bool = False):
        self.cfg = cfg
        self.metrics = RuntimeMetrics()
        self.stop_event = threading.Event()
        self.stats = RunStats()
        self.outputs = build_outputs(cfg, model, self.metrics, console, self.stats)
        self.loop = Loop(cfg, Pipeline(cfg, model), self.outputs, self.stats)
        self.http: HttpExporter | None = None
        self.ingest: Ingest | None = None
        self.worker_died: str | None = None
        self.notifier = Notifier()
        self.loop.on_iteration = self.notifier.watchdog
        # Scraped values, computed when Prometheus asks (not left at whatever the loop last set).
        self.metrics.ready.set_function(lambda: 1.0 if self.readiness()[0] else 0.0)
        self.metrics.ingest_queue_depth.set_function(
            lambda: 0.0 if self.ingest is None else float(self.ingest.queue.qsize()))

    def start(self) -> Runtime:
        log.info("resolved config: %s", json.dumps(self.cfg.to_dict(), sort_keys=True))
        if self.cfg.metrics.enabled:
            m = self.cfg.metrics
            web = WebConfig.load(m.web_config) if m.web_config else None
            self.http = HttpExporter(
                self.metrics.registry, self.readiness, m.host, m.port, workers=m.workers, web=web,
                limits=ServerLimits(max_connections=m.max_connections, header_timeout_s=m.header_timeout_s),
                on_closed=lambda r: self.metrics.http_closed.labels(reason=r).inc(),
                on_refused=lambda r: self.metrics.http_auth_refused.labels(reason=r).inc()).start()
            log.info("metrics at %s (also /healthz, /readyz)", self.http.url)
        i = self.cfg.inputs
        ingest_curve, _ = curve_servers(self.cfg)
        self.ingest = Ingest(list(i.endpoints), bind=i.bind, metrics=self.metrics, queue_size=i.queue_size,
                             curve=ingest_curve, force_plaintext=self.cfg.security.force_plaintext,
                             max_clock_offset_s=i.max_clock_offset_s if self.cfg.sync.clock == "wall" else None)
        self.ingest.on_exit = self._worker_exited
        self.ingest.start()
        log.info("ingest on %s (%s), pose stream on %s, %s clock at %.1f Hz", ", ".join(self.ingest.endpoints),
                 "bind" if i.bind else "connect", self.pose_endpoint, self.cfg.sync.clock, self.cfg.sync.rate_hz)
        return self

    @property
    def pose_endpoint(self) -> str:
        """The endpoint of the pose stream really bound (port 0 resolved)."""
        return next((o.endpoint for o in self.outputs.items if isinstance(o, PublisherOutput)),
                    self.cfg.output.endpoint)

    def _worker_exited(self, ingest: Ingest) -> None:
        """The ingest thread ended without being stopped: not ready any more, stop the loop."""
        self.worker_died = f"ingest thread died: {ingest.failure!r}"
        self.metrics.ready.set(0.0)
        self.stop_event.set()

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /readyz: poses are flowing (model loaded, ingest and loop running,
        a pose within ``metrics.ready_max_tick_age_s``)."""
        if self.ingest is None or not self.ingest.running:
            return False, "ingest not running"
        if not self.loop.running:
            return False, "tick loop not running"
        limit = self.cfg.metrics.ready_max_tick_age_s
        if self.loop.last_pose_wall is None:
            return False, "no pose yet: no sensor has sent data the model can use"
        age = time.monotonic() - self.loop.last_pose_wall
        if age > limit:
            return False, (f"no pose for {age:.1f} s (> {limit} s): every sensor is silent or sends "
                           "only empty frames")
        return True, "ready"

    def run(self, duration_s: float | None = None) -> RunStats:
        self.notifier.ready(f"serving station {self.cfg.station}")
        stats = self.loop.run(self.ingest, self.stop_event, duration_s)
        if self.worker_died:
            raise WorkerDied(f"{self.worker_died}; exiting non-zero so the supervisor restarts the runtime")
        return stats

    def close(self) -> None:
        self.notifier.stopping()
        if self.ingest is not None:
            self.ingest.stop()
        self.loop.close()
        if self.http is not None:
            self.http.stop()


def serve(cfg: RuntimeConfig, model: OnnxPoseModel, console: bool = False, duration_s: float | None = None,
          view_port: int | None = None) -> RunStats:
    """Serve until SIGINT/SIGTERM or ``duration_s``; outputs are flushed on the way out. With
    ``view_port``, the station viewer runs beside it in its own process (stopped on the way out)."""
    rt = Runtime(cfg, model, console)
    viewer = None
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, _frame: _on_signal(rt, signum))
    try:
        rt.start()
        if view_port is not None:
            from runtime.view.launch import start_viewer_process
            viewer = start_viewer_process(rt.pose_endpoint, view_port, extra_args=viewer_key_args(cfg),
                                          web_config=cfg.metrics.web_config)
        return rt.run(duration_s)
    finally:
        if viewer is not None:
            viewer.terminate()
            viewer.wait(timeout=10)
        rt.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def viewer_key_args(cfg: RuntimeConfig) -> list[str]:
    """CurveZMQ arguments of the local viewer: the key pair named ``viewer`` of the key directory
    (``runtime keys add DIR viewer --role viewer``), when the runtime is secured."""
    if not cfg.security.keys_dir:
        return []
    root = Path(cfg.security.keys_dir)
    secret = root / keys.CLIENTS_DIR / "viewer.key_secret"
    if not secret.exists():
        log.warning("no %s: the viewer cannot read the secured pose stream (runtime keys add %s viewer --role "
                    "viewer)", secret, root)
    return ["--client-key", str(secret), "--server-key", str(root / f"{keys.SERVER_NAME}.key")]


def _on_signal(rt: Runtime, signum: int) -> None:
    log.info("received %s: stopping and flushing outputs", signal.Signals(signum).name)
    rt.stop_event.set()
