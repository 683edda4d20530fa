"""Typed runtime configuration: the dataclasses below (their defaults are THE defaults), loaded by
the shared config layer ``sensors.core.settings``: YAML file + ``AWC_RUNTIME_SECTION__KEY`` environment
variables + ``--set section.key=value`` overrides, each key and value checked.

``RuntimeConfig.load(path, overrides)`` builds the config; ``runtime config show`` lists every key
with its type and default. ``runtime/configs/default.yaml`` is the annotated reference file (a
test keeps it equal to the defaults). ``to_dict()`` gives the resolved config to log and to save
next to a recording.
"""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from runtime.contributions import ContributionConfig
from runtime.degradation import DegradationConfig
from runtime.health import HealthConfig
from runtime.rehab.monitor import RehabConfig
from runtime.sync import SyncConfig
from sensors.core import schema, settings

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "default.yaml"
ENV_PREFIX = "AWC_RUNTIME_"
PROVIDERS = ("auto", "cpu", "cuda")


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for in-process runtimes of replay, bench, tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_endpoint(name: str, endpoint: str) -> None:
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise ValueError(f"{name}: expected a ZeroMQ endpoint like tcp://127.0.0.1:5555, got {endpoint!r}")


@dataclass(frozen=True)
class InputConfig:
    """Sensor streams: one SUB socket on these endpoints (bind, or connect to publishers)."""

    endpoints: tuple[str, ...] = ("tcp://127.0.0.1:5555",)
    bind: bool = True
    queue_size: int = 1024   # decoded messages waiting for the tick loop
    max_clock_offset_s: float = 2.0   # wall clock: capture times further off are dropped (reason clock)

    def __post_init__(self):
        if not self.max_clock_offset_s > 0:
            raise ValueError(f"inputs.max_clock_offset_s must be > 0 s, got {self.max_clock_offset_s}")
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        if not self.endpoints:
            raise ValueError("inputs.endpoints: need at least one endpoint")
        for e in self.endpoints:
            _check_endpoint("inputs.endpoints", e)
        if self.queue_size < 1:
            raise ValueError(f"inputs.queue_size must be >= 1, got {self.queue_size}")


@dataclass(frozen=True)
class OutputConfig:
    """Pose stream: PUB socket."""

    endpoint: str = "tcp://127.0.0.1:5556"
    bind: bool = True
    send_hwm: int = 1000
    forward_points: int = 0    # forward up to N LiDAR/mmWave points per tick on the pose stream (viewers); 0 = off

    def __post_init__(self):
        _check_endpoint("output.endpoint", self.endpoint)
        if self.send_hwm < 1:
            raise ValueError(f"output.send_hwm must be >= 1, got {self.send_hwm}")
        if not 0 <= self.forward_points <= schema.MAX_MMWAVE_POINTS:
            raise ValueError(f"output.forward_points must be in 0..{schema.MAX_MMWAVE_POINTS} (points per modality "
                             f"and tick; 0 = off), got {self.forward_points}")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus /metrics, /healthz, /readyz. Loopback unless told otherwise (health data)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108          # 0 = any free port
    ready_max_tick_age_s: float = 2.0   # /readyz fails when no pose came out for this long
    workers: int = 4          # /metrics renderings at once (threads); a scrape beyond them gets 503
    max_connections: int = 256    # open HTTP connections; beyond, the oldest idle one is closed
    header_timeout_s: float = 5.0  # accept (TLS included) -> end of request headers, however they trickle
    web_config: str = ""      # Prometheus-style web config: TLS and basic auth (docs/security.md)

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"metrics.workers must be >= 1, got {self.workers}")
        if self.max_connections < 1 or not self.header_timeout_s > 0:
            raise ValueError(f"metrics.max_connections must be >= 1 and metrics.header_timeout_s > 0 s, got "
                             f"{self.max_connections}, {self.header_timeout_s}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"metrics.port must be in 0..65535, got {self.port}")
        if self.ready_max_tick_age_s <= 0:
            raise ValueError(f"metrics.ready_max_tick_age_s must be > 0, got {self.ready_max_tick_age_s}")


@dataclass(frozen=True)
class InferenceConfig:
    provider: str = "auto"
    require_gpu: bool = False
    intra_op_threads: int = 2

    def __post_init__(self):
        if self.provider not in PROVIDERS:
            raise ValueError(f"inference.provider must be one of {PROVIDERS}, got {self.provider!r}")
        if self.intra_op_threads < 1:
            raise ValueError(f"inference.intra_op_threads must be >= 1, got {self.intra_op_threads}")


@dataclass(frozen=True)
class RecorderConfig:
    """path: ``.jsonl`` or ``.npz`` (chosen by suffix), or empty for no recording.
    record_inputs: also record the model inputs of every tick (NPZ only; for offline checks)."""

    path: str = ""
    record_inputs: bool = False
    npz_max_ticks: int = 100_000   # NPZ keeps ticks in memory until close: bounded in ticks ...
    npz_max_mb: float = 512.0      # ... and in memory (record_inputs costs ~35 kB per tick)
    flush_s: float = 1.0           # a crash loses at most this much (JSONL fsync, NPZ part files)
    rotate_mb: float = 0.0         # JSONL: start a new file beyond this size (0 = never)

    def __post_init__(self):
        if not (self.flush_s >= 0 and self.rotate_mb >= 0):
            raise ValueError(f"recorder.flush_s and rotate_mb must be >= 0, got {self.flush_s}, {self.rotate_mb}")
        if self.path and Path(self.path).suffix not in (".jsonl", ".npz"):
            raise ValueError(f"recorder.path must end in .jsonl or .npz, got {self.path!r}")
        if self.record_inputs and self.path and not self.path.endswith(".npz"):
            raise ValueError("recorder.record_inputs needs an .npz recorder.path (arrays), got "
                             f"{self.path!r}")
        if self.npz_max_ticks < 1 or self.npz_max_mb <= 0:
            raise ValueError(f"recorder.npz_max_ticks must be >= 1 and npz_max_mb > 0, got {self.npz_max_ticks}, "
                             f"{self.npz_max_mb}")


@dataclass(frozen=True)
class SecurityConfig:
    """CurveZMQ on the sensor ingest and the pose stream (docs/security.md). One of the two must be
    chosen: ``keys_dir`` (``runtime keys init DIR``), or ``plaintext`` explicitly, which is then
    refused on non-loopback endpoints unless ``force_plaintext``."""

    keys_dir: str = ""
    plaintext: bool = False
    force_plaintext: bool = False

    def __post_init__(self):
        if self.keys_dir and self.plaintext:
            raise ValueError("security: keys_dir and plaintext exclude each other; choose one")


@dataclass(frozen=True)
class RuntimeConfig:
    inputs: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    contributions: ContributionConfig = field(default_factory=ContributionConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    rehab: RehabConfig = field(default_factory=RehabConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    station: str = "station0"

    def __post_init__(self):
        if not isinstance(self.station, str) or not self.station:
            raise ValueError(f"station must be a non-empty name, got {self.station!r}")

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "config") -> RuntimeConfig:
        """Build from nested plain data. Staleness (``health.tolerance_s``, ``health.max_age_s``)
        follows the sync's tolerance and maximum age unless set explicitly."""
        data = settings.deep_merge({}, data or {})
        sync, health = data.get("sync") or {}, data.setdefault("health", {})
        if isinstance(sync, dict) and isinstance(health, dict):
            defaults = SyncConfig()
            health.setdefault("tolerance_s", sync.get("tolerance_s", defaults.tolerance_s))
            max_age = sync.get("max_age_s", defaults.max_age_s)
            health.setdefault("max_age_s", max_age if not isinstance(max_age, dict)
                              else max(max_age.values(), default=defaults.max_age_s))
        return settings.build(cls, data, source=source)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None,
             environ: dict[str, str] | None = None) -> RuntimeConfig:
        """Defaults <- YAML ``path`` (only the keys it changes) <- ``AWC_RUNTIME_SECTION__KEY``
        environment variables <- ``section.key=value`` overrides."""
        data: dict = {}
        if path:
            settings.deep_merge(data, settings.read_yaml(path, "runtime config"))
        settings.apply_env(data, ENV_PREFIX, environ)
        settings.apply_overrides(data, overrides)
        return cls.from_dict(data, source=f"{path or 'defaults'}, {ENV_PREFIX}* environment or --set")

    def to_dict(self) -> dict:
        return settings.to_plain(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


# ---------------------------------------------------------------------- `runtime config show`
def add_arguments(p: argparse.ArgumentParser) -> None:
    from sensors.core.cli_util import add_set_argument

    p.add_argument("action", choices=("show",), help="show: every key, its type, default and resolved value")
    p.add_argument("--config", default=None, help="YAML file of the keys to change")
    add_set_argument(p, "sync.rate_hz=20")
    p.add_argument("--yaml", action="store_true", help="print the resolved config as YAML instead")


def run(args: argparse.Namespace) -> int:
    return settings.show(lambda: RuntimeConfig.load(args.config, args.set), RuntimeConfig, args.yaml)
