"""Typed training configuration: dataclasses that validate themselves (their defaults are THE
defaults), loaded by the shared config layer ``sensors.core.settings`` (the runtime's too).

A run's configuration is resolved in this order, later wins:

1. the dataclass defaults below,
2. a preset (``training/configs/<name>.yaml``: ``small``, ``paper``, ``tiny``),
3. a YAML file (``--config FILE``),
4. command-line flags (``--fusion``, ``--balance``, ``--epochs`` ...),
5. ``AWC_TRAINING_SECTION__KEY=value`` environment variables,
6. ``--set section.key=value`` overrides (``train.lr=3e-4``, ``model.modalities=[rgb,lidar]``).

Unknown keys and values of the wrong type are refused with the key named; ``training config
show`` lists every key with its type and default.

The resolved config is saved as ``config.yaml`` next to the run's outputs; ``config_hash`` is a
stable digest of it (ignoring where the outputs go).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sensors.core import contract, schema, settings
from sensors.core.settings import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
FUSIONS = ("concat", "mlp", "attention")
# The balancing methods, in the study's order, and the config section each one reads (None: only
# the shared keys). training.balance_methods.METHODS maps the same names to their training hooks.
METHOD_SECTIONS = {"none": None, "awc": "awc", "ogm-ge": "ogm_ge", "g-blending": "g_blending", "agm": "agm",
                   "modality-level": "modality_level", "uniform": "awc"}
BALANCES = tuple(METHOD_SECTIONS)
GROUPINGS = ("step", "theta0", "first_epoch")
OPTIMIZERS = ("adam", "sgd")
FRAME_SELECTIONS = ("all", "complete")
FISHER_MODES = ("per_sample", "per_batch")
VALIDATION_SETS = ("sequences", "test")

# balance keys of the flat layout before the per-method sections -> where they live now (configs
# and checkpoints written then, and YAML files or --set items that still use them, read as moved)
MOVED = {"alpha_s": ("awc.alpha_s",), "alpha_i": ("awc.alpha_i",), "group_by": ("awc.group_by",),
         "fisher_samples": ("awc.fisher_samples", "modality_level.samples"),
         "fisher_mode": ("awc.fisher_mode",), "fisher_chunk": ("awc.fisher_chunk",),
         "ogm_alpha": ("ogm_ge.alpha",), "ogm_noise": ("ogm_ge.noise",), "ogm_window": ("ogm_ge.window",),
         "agm_alpha": ("agm.alpha",), "agm_momentum": ("agm.momentum",), "gb_holdout": ("g_blending.holdout",),
         "gb_super_epoch": ("g_blending.super_epoch",), "rs_gamma": ("modality_level.gamma",)}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class ModelConfig:
    """Architecture. Point caps and the RGB window are also what the data is preprocessed to."""

    modalities: tuple[str, ...] = schema.MODALITIES  # enabled encoders; others are always absent
    dim: int = 64  # feature width of every encoder output [B, dim]
    rgb_window: int = schema.DEFAULT_RGB_WINDOW  # causal keypoint window R = the TCN's receptive field
    lidar_cap: int = schema.DEFAULT_LIDAR_CAP
    # LiDAR cropped to the body before the cap (sensors.core.preprocess.crop_lidar); false = the raw
    # scan (floor, walls) sampled to the cap, as the official MM-Fi toolbox feeds it (an ablation
    # of the pipeline; the exported model records it and the runtime applies it)
    lidar_crop: bool = True
    mmwave_cap: int = schema.DEFAULT_MMWAVE_CAP
    knn: int = 16  # neighbours per point in the point-transformer layer
    point_layers: int = 1
    wifi_channels: int = 32
    fusion: str = "concat"
    hidden: int = 256  # fusion / head width
    heads: int = 4  # attention fusion heads
    fusion_layers: int = 1  # attention fusion layers

    def validate(self) -> None:
        unknown = [m for m in self.modalities if m not in schema.MODALITIES]
        _check(not unknown and len(self.modalities) > 0,
               f"model.modalities must be a non-empty subset of {list(schema.MODALITIES)}, got "
               f"{list(self.modalities)}")
        self.modalities = tuple(m for m in schema.MODALITIES if m in self.modalities)
        _check(self.fusion in FUSIONS, f"model.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        for name in ("dim", "rgb_window", "lidar_cap", "mmwave_cap", "knn", "hidden", "heads", "wifi_channels"):
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.point_layers >= 0 and self.fusion_layers >= 1,
               "model.point_layers must be >= 0, model.fusion_layers >= 1")
        _check(self.dim % self.heads == 0, f"model.dim ({self.dim}) must be divisible by model.heads ({self.heads})")


# Keys added after runs had been recorded, with the values that reproduce the behaviour from
# before they existed: a saved config (a checkpoint's, a run's config.yaml) that lacks one of
# them was trained with this value, not with today's default. The model's preprocessing settings
# take theirs from the model contract, which old ONNX files read with too (one place).
LEGACY = {"data": {"validation": "test"},
          "model": {k: v for k, v in contract.LEGACY.items() if k in {f.name for f in dataclasses.fields(ModelConfig)}}}


@dataclass
class DataConfig:
    """Where the MM-Fi-format data is and which protocol/split to use."""

    root: str = "data/mmfi-bench"
    protocol: str = "P1"
    split: str = "S1"
    split_seed: int = 0  # seed of the S1 random split (MM-Fi's np.random.seed(seed + k))
    max_train: int = 0  # 0 = all training frames; else an evenly spaced subset
    max_val: int = 0  # validation frames evaluated per epoch, evenly spaced (0 = all of them)
    # the frames that choose best.pt: sequences = whole (env, subject, action) training recordings
    # held out (never trained on); test = the protocol's test subset, which then also chooses the
    # model it reports on (the behaviour before held-out validation; the study pins it)
    validation: str = "sequences"
    val_fraction: float = 0.1  # share of the training sequences held out when validation=sequences
    cache_dir: str = ""  # "" = read into memory; else memory-mapped arrays kept here (bounded memory)
    # all = every frame (absent modalities are presence 0); complete = drop frames where any enabled
    # modality is absent, as the MM-Fi toolbox drops frames with an empty modality
    frames: str = "all"

    def validate(self) -> None:
        _check(self.protocol in schema.PROTOCOLS, f"data.protocol must be one of {list(schema.PROTOCOLS)}, "
               f"got {self.protocol!r}")
        _check(self.split in schema.SPLITS, f"data.split must be one of {list(schema.SPLITS)}, got {self.split!r}")
        _check(self.max_train >= 0 and self.max_val >= 0, "data.max_train and data.max_val must be >= 0")
        _check(self.frames in FRAME_SELECTIONS, f"data.frames must be one of {FRAME_SELECTIONS}, got {self.frames!r}")
        _check(self.validation in VALIDATION_SETS,
               f"data.validation must be one of {VALIDATION_SETS}, got {self.validation!r}: sequences holds out "
               f"whole training recordings to choose best.pt, test chooses it on the test subset")
        _check(0.0 < self.val_fraction <= 0.5,
               f"data.val_fraction is the share of the training sequences held out for validation and must be "
               f"in (0, 0.5], got {self.val_fraction}")


@dataclass
class AwcConfig:
    """``awc`` and its ``uniform`` ablation: the Fisher-weighted (or uniform) proximal term."""

    # alpha multiplies sum_i F_ii (theta_i - theta0_i)^2 / 2 with F the Fisher of L_MPJPE in metres:
    # the penalty is in metres, like the task loss (docs/training.md: what 20k means here)
    alpha_s: float = 20000.0  # weight of the superior group's constraint
    alpha_i: float = 10000.0  # weight of the inferior group's constraint
    group_by: str = "step"  # step: K-Means on the running mean of the mini-batch Shapley scores,
    #                         refreshed every step (Algorithm 1); theta0: once per epoch at theta0;
    #                         first_epoch: the first window epoch trains unconstrained and measures,
    #                         then its mean scores' groups stay frozen for the rest of the window
    fisher_samples: int = 256  # fixed training subset for the Fisher (evenly spaced indices)
    fisher_mode: str = "per_sample"  # per_sample (torch.func) or per_batch (mini-batch squared grads)
    fisher_chunk: int = 32  # samples per vmap chunk / per mini-batch

    def validate(self) -> None:
        _check(self.fisher_mode in FISHER_MODES,
               f"balance.awc.fisher_mode must be one of {FISHER_MODES}, got {self.fisher_mode!r}")
        _check(self.group_by in GROUPINGS, f"balance.awc.group_by must be one of {GROUPINGS}, got {self.group_by!r}")
        _check(self.alpha_s >= 0 and self.alpha_i >= 0, "balance.awc.alpha_s and alpha_i must be >= 0")
        _check(self.fisher_samples >= 1 and self.fisher_chunk >= 1,
               "balance.awc.fisher_samples and fisher_chunk must be >= 1")


@dataclass
class OgmGeConfig:
    """OGM-GE (Peng et al., CVPR 2022) adapted to regression."""

    alpha: float = 0.5  # modulation strength
    noise: bool = True  # the Gaussian gradient noise (the GE part)
    window: int = -1  # modulates in epochs 0..window-1 (-1 = every epoch)

    def validate(self) -> None:
        _check(self.alpha >= 0 and self.window >= -1, "balance.ogm_ge.alpha must be >= 0 and window >= -1")


@dataclass
class AgmConfig:
    """AGM (Li et al., ICCV 2023)."""

    alpha: float = 1.0  # strength per relative deviation of a modality's Shapley score
    momentum: float = 0.9  # running average of the step scores

    def validate(self) -> None:
        _check(self.alpha >= 0 and 0.0 <= self.momentum < 1.0,
               "balance.agm.alpha must be >= 0 and momentum in [0, 1)")


@dataclass
class GBlendingConfig:
    """G-Blending (Wang et al., CVPR 2020), online."""

    holdout: int = 256  # training frames held out to measure generalisation / overfitting
    super_epoch: int = 3  # epochs between weight re-estimations

    def validate(self) -> None:
        _check(self.holdout >= 2 and self.super_epoch >= 1,
               f"balance.g_blending.holdout must be >= 2 and super_epoch >= 1, got {self.holdout}, {self.super_epoch}")


@dataclass
class ModalityLevelConfig:
    """Modality-level resampling (Wei et al., CVPR 2024)."""

    gamma: float = 1.0  # fraction re-fed = gamma * relative contribution gap
    samples: int = 256  # training frames whose modality-level Shapley scores pick the modality

    def validate(self) -> None:
        _check(self.gamma >= 0 and self.samples >= 1, "balance.modality_level.gamma must be >= 0 and samples >= 1")


@dataclass
class BalanceConfig:
    """Modality balancing: ``method`` and the settings every method shares, then one section per
    method (``METHOD_SECTIONS``): AWC (docs/training.md), its baselines and ablations."""

    method: str = "none"
    window: int = 20  # learning window K: AWC / uniform / modality-level act in epochs 0..K-1
    shapley_every: int = 1  # compute the training Shapley scores every N steps
    awc: AwcConfig = field(default_factory=AwcConfig)
    ogm_ge: OgmGeConfig = field(default_factory=OgmGeConfig)
    agm: AgmConfig = field(default_factory=AgmConfig)
    g_blending: GBlendingConfig = field(default_factory=GBlendingConfig)
    modality_level: ModalityLevelConfig = field(default_factory=ModalityLevelConfig)

    def validate(self) -> None:
        _check(self.method in BALANCES, f"balance.method must be one of {BALANCES}, got {self.method!r}")
        _check(self.window >= 0, f"balance.window must be >= 0, got {self.window}")
        _check(self.shapley_every >= 1, f"balance.shapley_every must be >= 1, got {self.shapley_every}")
        for section in (self.awc, self.ogm_ge, self.agm, self.g_blending, self.modality_level):
            section.validate()


@dataclass
class TrainConfig:
    """Optimisation (paper: Adam 1e-3, wd 1e-4, batch 192, 50 epochs, x0.1 at 30)."""

    epochs: int = 50
    batch_size: int = 192
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_step: int = 30
    lr_gamma: float = 0.1
    optimizer: str = "adam"  # adam (the paper) or sgd (with momentum, as OGM-GE's paper trains)
    momentum: float = 0.9  # sgd only
    seed: int = 0
    threads: int = 1  # torch intra-op threads per process
    device: str = "auto"  # auto | cpu | cuda | cuda:N (training.device; under torchrun: each rank's GPU)
    tensorboard: bool = False  # also write TensorBoard event files into <out>/tensorboard
    plots: bool = True
    plot_frames: int = 3  # test frames drawn as 3D skeletons

    def validate(self) -> None:
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 2, f"train.batch_size must be >= 2 (Pearson needs 2), got {self.batch_size}")
        _check(self.lr > 0 and self.weight_decay >= 0, "train.lr must be > 0 and train.weight_decay >= 0")
        _check(self.lr_step >= 1 and 0 < self.lr_gamma <= 1, "train.lr_step >= 1 and 0 < train.lr_gamma <= 1")
        _check(self.threads >= 1, f"train.threads must be >= 1, got {self.threads}")
        _check(self.optimizer in OPTIMIZERS, f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(0.0 <= self.momentum < 1.0, f"train.momentum must be in [0, 1), got {self.momentum}")
        from training.device import DeviceError, parse

        try:
            parse(self.device)
        except DeviceError as err:
            raise ConfigError(f"train.device: {err}") from None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/default"

    def validate(self) -> Config:
        for section in (self.model, self.data, self.balance, self.train):
            section.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"]["modalities"] = list(self.model.modalities)
        return d


ENV_PREFIX = "AWC_TRAINING_"


def preset_path(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset {name!r}; known presets: {known} (or --config FILE.yaml)")
    return path


def resolve(preset: str | None = None, config_file: str | None = None, flags: dict[str, Any] | None = None,
            overrides: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Defaults <- preset <- YAML file <- flags (nested dict) <- environment <- ``section.key=value``."""
    data: dict[str, Any] = {}
    if preset:
        settings.deep_merge(data, move_balance_keys(settings.read_yaml(preset_path(preset), "preset")))
    if config_file:
        settings.deep_merge(data, move_balance_keys(settings.read_yaml(config_file, "training config")))
    settings.deep_merge(data, move_balance_keys(flags or {}))
    move_balance_keys(settings.apply_env(data, ENV_PREFIX, environ))   # each layer moved before the next
    move_balance_keys(settings.apply_overrides(data, overrides))
    where = ", ".join(x for x in (f"preset {preset}" if preset else "", config_file or "") if x) or "defaults"
    return settings.build(Config, data, source=f"{where}, flags, {ENV_PREFIX}* environment or --set")


def move_balance_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Balance keys of the flat layout (``MOVED``) moved into their method's section, in place."""
    bal = data.get("balance")
    if isinstance(bal, dict):
        for old, targets in MOVED.items():
            if old in bal:
                value = bal.pop(old)
                for target in targets:
                    section, key = target.split(".")
                    bal.setdefault(section, {})[key] = value
    return data


def upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the ``LEGACY`` value of every key it predates and its balance keys in
    today's sections (a copy)."""
    out = {k: {**v, **({s: dict(x) for s, x in v.items() if isinstance(x, dict)})} if isinstance(v, dict) else v
           for k, v in values.items()}
    for section, keys in LEGACY.items():
        if isinstance(out.get(section), dict):
            for key, value in keys.items():
                out[section].setdefault(key, value)
    return move_balance_keys(out)


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config from ``Config.to_dict()`` (e.g. out of a checkpoint); keys it predates
    take their ``LEGACY`` values, so an older run reads back as what it was trained with."""
    return settings.build(Config, upgrade(values), source="saved config")


def config_hash(cfg: Config) -> str:
    """Stable 12-hex digest of everything but the output directory and where the run executes
    (device, TensorBoard logging): the same training on CPU or GPU has the same hash."""
    d = cfg.to_dict()
    d.pop("out", None)
    for key in ("device", "tensorboard"):
        d.get("train", {}).pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def model_contract(cfg: Config, **facts: Any) -> contract.ModelContract:
    """What a model of ``cfg`` expects (``sensors.core.contract``): its preprocessing settings,
    modalities and fusion, with the config and its hash; ``facts`` add the rest (validation
    metrics, producer) at export."""
    return contract.ModelContract.of(cfg.model, config_hash=config_hash(cfg), config=cfg.to_dict(), **facts)


def save(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------- `training config show`
def add_arguments(p: argparse.ArgumentParser) -> None:
    from sensors.core.cli_util import add_set_argument

    p.add_argument("action", choices=("show",), help="show: every key, its type, default and resolved value")
    p.add_argument("--preset", help="base preset from training/configs: small, paper, tiny")
    p.add_argument("--config", help="YAML config file (sections model, data, balance, train)")
    add_set_argument(p, "train.lr=3e-4")
    p.add_argument("--yaml", action="store_true", help="print the resolved config as YAML instead")


def run(args: argparse.Namespace) -> int:
    return settings.show(lambda: resolve(args.preset, args.config, overrides=args.set), Config, args.yaml)
