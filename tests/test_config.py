"""The one config layer (sensors.core.settings) as training and the runtime use it."""

from __future__ import annotations

import pytest
import yaml

from runtime.config import DEFAULT_CONFIG, RuntimeConfig
from runtime.sync import SyncConfig
from sensors.core import settings
from training import config as training_config

DERIVED = {"health.tolerance_s", "health.max_age_s",   # follow sync.* unless set
           "health.value_ranges", "health.point_ranges"}   # the modality table's unless set


def _flat(d: dict, where: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        key = f"{where}.{k}" if where else k
        out |= _flat(v, key) if isinstance(v, dict) and key.count(".") == 0 and k != "station" else {key}
    return out


def test_default_yaml_states_exactly_the_typed_defaults():
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert RuntimeConfig.from_dict(data) == RuntimeConfig()
    typed = {row[0] for row in settings.describe(RuntimeConfig)}
    assert _flat(data) == typed - DERIVED


def test_training_presets_only_name_keys_that_exist():
    for preset in ("tiny", "small", "paper"):
        assert training_config.resolve(preset).model.modalities


def test_an_explicit_health_key_is_kept_and_staleness_follows_the_sync_otherwise():
    cfg = RuntimeConfig.load(None, ["health.tolerance_s=0.2", "sync.max_age_s=0.5"])
    assert cfg.health.tolerance_s == 0.2 and cfg.health.max_age_s == 0.5 and cfg.sync.tolerance_s == 0.05
    assert RuntimeConfig.from_dict(cfg.to_dict()) == cfg           # the saved config reads back the same
    assert RuntimeConfig.load(None, ["sync.max_age_s=0.5"]).health.max_age_s == 0.5


def test_the_sync_section_is_the_synchronizer_config_with_the_clock():
    cfg = RuntimeConfig.load(None, ["sync.clock=data"])
    assert type(cfg.sync) is SyncConfig and cfg.sync.clock == "data"
    with pytest.raises(ValueError, match="buffer_len"):
        RuntimeConfig.load(None, ["sync.buffer_len=1"])


@pytest.mark.parametrize("override,message", [
    ("sync.rate=20", "unknown key.*sync.rate.*rate_hz"),
    ("sync.rate_hz=fast", "sync.rate_hz: expected a number, got 'fast'"),
    ("inputs.endpoints=tcp://10.0.0.2:5555", r"expected a list like \[tcp://10.0.0.2:5555\]"),
    ("metrics.enabled=maybe", "expected true or false"),
    ("sync.clock=sometimes", "clock must be one of"),
])
def test_runtime_refuses_unknown_keys_and_bad_values_naming_the_key(override, message):
    with pytest.raises(settings.ConfigError, match=message):
        RuntimeConfig.load(None, [override])


def test_training_takes_the_same_override_syntax_lists_included():
    cfg = training_config.resolve("tiny", overrides=["model.modalities=[wifi,rgb]", "train.lr=3e-4",
                                                     "train.plots=false"])
    assert cfg.model.modalities == ("rgb", "wifi") and cfg.train.lr == 3e-4 and cfg.train.plots is False
    with pytest.raises(settings.ConfigError, match=r"model.modalities: expected a list like \[rgb,lidar\]"):
        training_config.resolve("tiny", overrides=["model.modalities=rgb,lidar"])
    with pytest.raises(settings.ConfigError, match="train.epochs: expected an integer"):
        training_config.resolve("tiny", overrides=["train.epochs=2.5"])
    with pytest.raises(settings.ConfigError, match="unknown key.*train.lrate"):
        training_config.resolve("tiny", overrides=["train.lrate=1"])
    assert training_config.from_dict(cfg.to_dict()) == cfg


def test_environment_variables_sit_between_files_and_overrides(tmp_path):
    f = tmp_path / "station.yaml"
    f.write_text("sync:\n  rate_hz: 20\n")
    env = {"AWC_RUNTIME_SYNC__RATE_HZ": "25", "AWC_RUNTIME_STATION": "ward-3"}
    assert RuntimeConfig.load(f, [], env).sync.rate_hz == 25
    cfg = RuntimeConfig.load(f, ["sync.rate_hz=30"], env)
    assert cfg.sync.rate_hz == 30 and cfg.station == "ward-3"
    with pytest.raises(settings.ConfigError, match="unknown key.*sync.rat.*AWC_RUNTIME_"):
        RuntimeConfig.load(None, [], {"AWC_RUNTIME_SYNC__RAT": "1"})
    assert training_config.resolve("tiny", environ={"AWC_TRAINING_TRAIN__EPOCHS": "3"}).train.epochs == 3


def test_config_show_lists_every_key_with_its_default(capsys):
    from runtime import cli as runtime_cli
    from training import cli as training_cli

    assert runtime_cli.main(["config", "show", "--set", "sync.rate_hz=20"]) == 0
    out = capsys.readouterr().out
    for key, *_ in settings.describe(RuntimeConfig):
        assert key in out
    assert "sync.rate_hz" in out and "* default 10.0" in out
    assert training_cli.main(["config", "show", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert all(key in out for key, *_ in settings.describe(training_config.Config))
    assert runtime_cli.main(["config", "show", "--set", "sync.nope=1"]) == 2
