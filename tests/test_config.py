"""Configs: frozen dataclasses from YAML with key=value overrides; every YAML in the repo loads."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from lightman.platform.config import ConfigError, load_config, parse_overrides, valid_keys

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Inner:
    inner_lr: float = 0.1
    steps: int = 1

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("steps must be >= 1")


@dataclass(frozen=True)
class Outer:
    seed: int = 0
    name: str = "lightman"
    sigma: tuple[float, ...] = (1.0,)
    inner: Inner = field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 3\ninner:\n  inner_lr: 0.5\n")
    cfg = load_config(Outer, p, ["inner.steps=2", "sigma=[0.5, 2]", "name=maml"])
    assert cfg == Outer(seed=3, name="maml", sigma=(0.5, 2.0), inner=Inner(inner_lr=0.5, steps=2))


def test_exponent_floats_without_a_dot_are_numbers_in_files_and_overrides(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-3` and `1.5e1` as strings; a person means numbers (YAML 1.2)."""
    p = tmp_path / "c.yaml"
    p.write_text("inner:\n  inner_lr: 1e-3\nsigma: [5E2, 1.5e1]\n")
    cfg = load_config(Outer, p)
    assert cfg.inner.inner_lr == 1e-3 and cfg.sigma == (500.0, 15.0)
    assert load_config(Outer, None, ["inner.inner_lr=-2e+4"]).inner.inner_lr == -2e4
    assert parse_overrides(["a=1e", "b=e5", "c=10", "d=1_000"]) == {
        "a": "1e",
        "b": "e5",
        "c": 10,
        "d": 1000,
    }
    assert yaml.safe_load("x: 1.5e1") == {"x": "1.5e1"}  # the standard loader is unchanged


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(Outer, None, ["inner.stepz=2"])
    assert (
        "inner.stepz" in str(e.value)
        and "inner.steps" in str(e.value)
        and "inner.inner_lr" in str(e.value)
    )
    with pytest.raises(ConfigError, match="valid keys.*seed"):
        load_config(Outer, None, ["sede=1"])


def test_bad_type_and_check_name_the_key():
    with pytest.raises(ConfigError, match="seed"):
        load_config(Outer, None, ["seed=abc"])
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        load_config(Outer, None, ["inner.steps=0"])


def test_parse_overrides_nested():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_valid_keys_nested():
    assert valid_keys(Outer) == ["seed", "name", "sigma", "inner.inner_lr", "inner.steps"]


def _config_class(path: Path):
    """Each experiment YAML's first line is the command that runs it; it names its config class."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# lightman "), f"{path}: first line must be the command that runs it"
    command = first.split()[2]
    if command == "synth":
        from lightman.tasks.synth import SynthConfig

        return SynthConfig
    if command in ("train", "tune"):  # tune: the experiment's TrainConfig
        from lightman.platform.train import TrainConfig

        return TrainConfig
    if command == "demo":
        from lightman.platform.demo import DemoConfig

        return DemoConfig
    if command == "pretrain":
        from lightman.platform.pretrain import PretrainConfig

        return PretrainConfig
    if command == "ingest":
        from lightman.platform.ingest import IngestConfig

        return IngestConfig
    raise AssertionError(f"{path}: unknown command {command!r}")


REPO_CONFIGS = sorted((REPO / "configs").glob("**/*.yaml"))
# configs/<kind>/: the folder says what runs a config; study/ holds a benchmark's fixed
# setting, run with `lightman demo` (one run) and by its benchmark script (the table).
FOLDER_COMMANDS = {
    "demo": "demo",
    "study": "demo",
    "train": "train",
    "tune": "tune",
    "pretrain": "pretrain",
    "synth": "synth",
}


def _config_id(path: Path) -> str:
    return str(path.relative_to(REPO / "configs"))


def test_the_repo_has_configs_and_each_lies_in_its_kinds_folder():
    assert len(REPO_CONFIGS) >= 8  # a changed glob that found nothing would pass the rest
    for path in REPO_CONFIGS:
        kind = path.relative_to(REPO / "configs").parts[0]
        assert kind in FOLDER_COMMANDS, f"{path}: configs/ holds one folder per kind"
        first = path.read_text().splitlines()[0].split()
        assert first[:3] == ["#", "lightman", FOLDER_COMMANDS[kind]], path
        # the first line runs this very file, from the repo root
        assert first[first.index("--config") + 1] == f"configs/{_config_id(path)}", path


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=_config_id)
def test_every_repo_config_loads(path):
    load_config(_config_class(path), path)


@pytest.mark.parametrize(
    "path",
    sorted((REPO / "tune_spaces").glob("*.yaml")) + sorted((REPO / "deploy").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_every_repo_yaml_parses(path):
    assert yaml.safe_load(path.read_text()) is not None


def test_the_training_config_is_the_demos_training():
    """`lightman train --config configs/train/demo.yaml` trains what `make demo` trains."""
    from lightman.platform.demo import DemoConfig
    from lightman.platform.train import TrainConfig

    train = load_config(TrainConfig, REPO / "configs" / "train" / "demo.yaml")
    demo = load_config(DemoConfig, REPO / "configs" / "demo" / "demo.yaml").train
    assert train == dataclasses.replace(
        demo, data=dataclasses.replace(demo.data, index="runs/demo/index")
    )
