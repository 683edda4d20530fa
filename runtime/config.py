"""Typed runtime configuration: YAML file + ``section.key=value`` overrides, validated on build.

``RuntimeConfig.load(path, overrides)`` reads ``runtime/configs/default.yaml``, merges ``path``
over it (a file only needs the keys it changes),
applies overrides such as ``sync.rate_hz=20`` or ``inputs.endpoints=[tcp://10.0.0.2:5555]``
(values parsed as YAML), and builds the nested dataclasses, each of which validates itself.
``to_dict()`` gives the resolved config to log and to save next to a recording.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from runtime.contributions import ContributionConfig
from runtime.degradation import DegradationConfig
from runtime.health import HealthConfig
from runtime.rehab import RehabConfig

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "default.yaml"
CLOCK_MODES = ("wall", "data")
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

    def __post_init__(self):
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

    def __post_init__(self):
        _check_endpoint("output.endpoint", self.endpoint)
        if self.send_hwm < 1:
            raise ValueError(f"output.send_hwm must be >= 1, got {self.send_hwm}")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus /metrics, /healthz, /readyz. Loopback unless told otherwise (health data)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108          # 0 = any free port
    ready_max_tick_age_s: float = 2.0   # /readyz fails when no tick ran for this long

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError(f"metrics.port must be in 0..65535, got {self.port}")
        if self.ready_max_tick_age_s <= 0:
            raise ValueError(f"metrics.ready_max_tick_age_s must be > 0, got {self.ready_max_tick_age_s}")


@dataclass(frozen=True)
class SyncSettings:
    """Passed to ``runtime.sync.SyncConfig``; see docs/runtime.md."""

    rate_hz: float = 10.0
    tolerance_s: float = 0.05
    max_age_s: float = 0.3
    wifi_window_s: float = 0.1
    buffer_len: int = 64
    clock: str = "wall"        # wall: real time; data: ticks follow capture times (fast replay)
    delay_s: float = 0.01      # a tick runs this long after its time (late messages); data clock: >= tolerance
    phase_lock: bool = True    # wall clock: tick grid on the capture phase of the first camera/LiDAR/radar message
    data_flush_s: float = 0.5  # data clock: with no message for this long, run the last due tick

    def __post_init__(self):
        if not 0 < self.rate_hz <= 1000:
            raise ValueError(f"sync.rate_hz must be in (0, 1000], got {self.rate_hz}")
        if not 0 <= self.tolerance_s < self.max_age_s:
            raise ValueError(f"sync needs 0 <= tolerance_s < max_age_s, got {self.tolerance_s}, {self.max_age_s}")
        if self.wifi_window_s <= 0 or self.buffer_len < 2:
            raise ValueError(f"sync.wifi_window_s must be > 0 and buffer_len >= 2, got {self.wifi_window_s}, "
                             f"{self.buffer_len}")
        if not 0 <= self.delay_s < 1 / self.rate_hz or self.data_flush_s <= 0:
            raise ValueError(f"sync.delay_s must be in [0, 1/rate_hz) and data_flush_s > 0, got {self.delay_s}, "
                             f"{self.data_flush_s}")
        if self.clock not in CLOCK_MODES:
            raise ValueError(f"sync.clock must be one of {CLOCK_MODES}, got {self.clock!r}")


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

    def __post_init__(self):
        if self.path and Path(self.path).suffix not in (".jsonl", ".npz"):
            raise ValueError(f"recorder.path must end in .jsonl or .npz, got {self.path!r}")
        if self.record_inputs and self.path and not self.path.endswith(".npz"):
            raise ValueError("recorder.record_inputs needs an .npz recorder.path (arrays), got "
                             f"{self.path!r}")
        if self.npz_max_ticks < 1 or self.npz_max_mb <= 0:
            raise ValueError(f"recorder.npz_max_ticks must be >= 1 and npz_max_mb > 0, got {self.npz_max_ticks}, "
                             f"{self.npz_max_mb}")


@dataclass(frozen=True)
class RuntimeConfig:
    inputs: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sync: SyncSettings = field(default_factory=SyncSettings)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    contributions: ContributionConfig = field(default_factory=ContributionConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    rehab: RehabConfig = field(default_factory=RehabConfig)
    station: str = "station0"

    def __post_init__(self):
        # Staleness is judged against the sync's own tolerance and maximum age.
        health = dataclasses.replace(self.health, tolerance_s=self.sync.tolerance_s, max_age_s=self.sync.max_age_s)
        object.__setattr__(self, "health", health)
        if not isinstance(self.station, str) or not self.station:
            raise ValueError(f"station must be a non-empty name, got {self.station!r}")

    @classmethod
    def from_dict(cls, data: dict) -> RuntimeConfig:
        kwargs = {}
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in (data or {}).items():
            if key not in known:
                raise ValueError(f"unknown config section {key!r}: expected one of {sorted(known)}")
            kwargs[key] = _build(known[key], key, value)
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> RuntimeConfig:
        """The packaged default.yaml, deep-merged with ``path`` (a file of overrides), then the
        ``section.key=value`` overrides."""
        data = _read_yaml(DEFAULT_CONFIG)
        if path:
            _deep_merge(data, _read_yaml(Path(path)))
        for item in overrides or []:
            apply_override(data, item)
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


def _build(f: dataclasses.Field, key: str, value):
    sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
    if sub is None or not dataclasses.is_dataclass(sub):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"config section {key!r} must be a mapping, got {value!r}")
    names = {g.name for g in dataclasses.fields(sub)}
    unknown = set(value) - names
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in config section {key!r}: expected {sorted(names)}")
    try:
        return sub(**value)
    except TypeError as e:
        raise ValueError(f"config section {key!r}: {e}") from e


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"runtime config {path} not found: pass --config with a YAML file "
                                f"(see runtime/configs/default.yaml)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of sections, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, top: dict) -> None:
    """Merge ``top`` into ``base`` in place (mappings recursively, anything else replaced)."""
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = v


def apply_override(data: dict, item: str) -> None:
    """Apply ``section.key=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in item:
        raise ValueError(f"override {item!r}: expected section.key=value, e.g. sync.rate_hz=20")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {k!r} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
