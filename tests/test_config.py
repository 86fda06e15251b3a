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
    if command == "reproduce":
        from lightman.platform.reproduce import StudyConfig

        return StudyConfig
    raise AssertionError(f"{path}: unknown command {command!r}")


REPO_CONFIGS = sorted((REPO / "configs").glob("**/*.yaml"))
# configs/<kind>/: the folder says what runs a config (demo/ also holds the fixed setting
# of a benchmark's table, run with `lightman demo` for one run)
FOLDER_COMMANDS = {
    "demo": "demo",
    "train": "train",
    "tune": "tune",
    "pretrain": "pretrain",
    "synth": "synth",
    "studies": "reproduce",  # a study of `lightman reproduce` (--study, not --config)
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
        flag = "--study" if kind == "studies" else "--config"
        assert first[first.index(flag) + 1] == f"configs/{_config_id(path)}", path


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=_config_id)
def test_every_repo_config_loads(path):
    load_config(_config_class(path), path)


STUDIES = sorted((REPO / "configs" / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=_config_id)
def test_every_study_arm_is_a_training_config(path):
    """Each arm's config (the study's base and train sections with the arm's overrides)
    loads: no arm sets a learner key its learner does not read (platform/reproduce.py
    builds cells the same way; model.ways=classes stands for the pool's class count)."""
    from lightman.platform.config import _merge, from_dict
    from lightman.platform.reproduce import _arm, _base, load_study
    from lightman.platform.train import TrainConfig

    study = load_study(str(path))
    for budget in ("quick", "full"):
        common = _merge(_merge(_base(study), study.train), study.budget(budget).train)
        for arm in study.learners:
            data = _merge(common, _arm(study, arm))
            for section in ("model", "episode"):  # ways=classes: the pool's class count
                if data.get(section, {}).get("ways") == "classes":
                    data = _merge(data, {section: {"ways": 12}})
            cfg = from_dict(TrainConfig, data)
            assert cfg.learner.name == data.get("learner", {}).get("name", "lightman"), arm


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


@dataclass(frozen=True)
class Documented:
    """A config whose fields say what they mean in each of the three ways the repo's do.

    (This paragraph is not the summary.)"""

    # the comment lines right above a field,
    # over two lines
    seed: int = 0  # and the comment at the end of its line
    name: str = "1e-3"
    """a string right below a field (its attribute docstring)"""
    inner: Inner = field(default_factory=Inner)
    sigma: tuple[float, ...] = (1.0, 2.0)  # noqa: E501 - a tool's comment is not a meaning
    bare: bool = False


def test_field_meanings_read_comments_above_and_after_and_the_string_below_a_field():
    from lightman.platform.config import class_meaning, field_meanings

    assert field_meanings(Documented) == {
        "seed": "the comment lines right above a field, over two lines and the comment at the "
        "end of its line",
        "name": "a string right below a field (its attribute docstring)",
        "inner": "",
        "sigma": "",
        "bare": "",
    }
    assert class_meaning(Documented) == (
        "A config whose fields say what they mean in each of the three ways the repo's do."
    )


def test_describe_config_is_yaml_that_loads_back_with_every_key_and_its_meaning(tmp_path):
    from lightman.platform.config import describe_config

    cfg = load_config(Documented, None, ["inner.steps=3", "sigma=[0.5]"])
    text = describe_config(cfg)
    lines = text.splitlines()
    assert "seed: 0  # the comment lines right above a field, over two lines and the" in lines[0]
    assert "name: '1e-3'  # a string right below a field" in text  # quoted: not the number
    assert "inner:\n  inner_lr: 0.1\n  steps: 3\n" in text and "sigma: [0.5]" in text
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(Documented, tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=_config_id)
def test_every_repo_config_described_loads_back_to_itself(path, tmp_path):
    """`--cfg` of each repo config is a config file for the same run."""
    from lightman.platform.config import describe_config

    cfg = load_config(_config_class(path), path)
    (tmp_path / "c.yaml").write_text(describe_config(cfg))
    assert load_config(_config_class(path), tmp_path / "c.yaml") == cfg


def test_meanings_come_from_the_source_so_python_OO_prints_them_too(tmp_path):
    """-OO drops every docstring from memory; `--cfg` reads the source, so it says the same."""
    import subprocess
    import sys

    argv = ["-m", "lightman.platform.cli", "synth", "--out", str(tmp_path / "s"), "--cfg"]
    plain = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True)
    oo = subprocess.run([sys.executable, "-OO", *argv], capture_output=True, text=True, check=True)
    assert oo.stdout == plain.stdout
    assert "# lightman synth: SynthConfig: The seeded generator's settings" in oo.stdout
    assert "seed: 0  # every pixel and sheet cell follows from it" in oo.stdout
    assert not (tmp_path / "s").exists()  # --cfg does no work


def test_a_checkpoint_record_from_before_the_split_loads_as_its_learner_reads_it():
    """Checkpoints written while one flat config held every algorithm's keys record all of
    them; a maml run's record loads with the keys maml reads, and a key maml reads keeps
    its recorded value."""
    from lightman.models.learners import LearnerConfig
    from lightman.models.learners.config import record_keys
    from lightman.platform.config import from_dict

    flat = {  # the flat record's keys, as the old checkpoints hold them
        "name": "maml",
        "inner_lr": 0.05,
        "outer_lr": 0.002,
        "weight_decay": 1e-4,
        "optimizer": "auto",
        "inner_steps": 2,
        "test_inner_steps": 3,
        "lambda_pri": 0.55,
        "sigma": [1.0],
        "bandwidth": "fixed",
        "aux_loss": "mmd",
        "aux_norm": "separate",
        "aux_align": "marginal",
        "first_order": False,
        "reptile_steps": 5,
        "memory": "fast",
        "log_support_after": False,
        "log_grad_ratio": False,
    }
    with pytest.raises(ValueError, match="lambda_pri"):
        from_dict(LearnerConfig, flat)  # a user's config with these keys is refused
    cfg = from_dict(LearnerConfig, record_keys(flat))
    assert (cfg.name, cfg.inner_lr, cfg.outer_lr, cfg.inner_steps, cfg.test_inner_steps) == (
        "maml",
        0.05,
        0.002,
        2,
        3,
    )
    assert not hasattr(cfg, "lambda_pri") and not hasattr(cfg, "reptile_steps")
