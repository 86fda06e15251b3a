"""Search spaces for `lightman tune`: data-only YAML files of dotted TrainConfig keys.

A space file maps each key to one distribution (tune_spaces/*.yaml):

    learner.lambda_pri: {uniform: [0.3, 0.7]}      # λ1 (λ2 = 1 − λ1)
    learner.inner_lr: {loguniform: [0.02, 0.5]}    # α
    learner.inner_steps: {int: [1, 3]}
    learner.aux_align: {choice: [marginal, class]}

Keys are checked against TrainConfig with config.py's own machinery (an unknown key fails
with the list of valid ones) and every bound or choice must build a valid config field.
Only the learner's and the model's fields and meta_batch may be searched: the experiment
config fixes the data, the subject split, the episodes (ways, shots), the seed and the
training budget, so every trial is scored on the same validation subjects. A key whose
field is a tuple (`learner.sigma`) takes the sampled value as a one-element tuple.
Pure functions, no Ray or Optuna import: `optuna_space` imports Optuna when called.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from lightman.platform.config import (
    ConfigError,
    _merge,
    from_dict,
    key_type,
    load_yaml,
    valid_keys,
)
from lightman.platform.train import TrainConfig

Kind = Literal["uniform", "loguniform", "int", "choice"]
KINDS: tuple[str, ...] = typing.get_args(Kind)
# What a space may search; the experiment config fixes everything else.
TUNABLE_PREFIXES = ("learner.", "model.")
TUNABLE_KEYS = ("meta_batch",)
FIXED_KEYS = ("model.ways",)  # = episode.ways, fixed by the experiment


@dataclass(frozen=True)
class Param:
    """One searched key: a range (uniform, loguniform, int) or a list of choices."""

    key: str
    kind: Kind
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def values(self) -> tuple:
        """The values that bound the parameter (checked against the config)."""
        return self.choices if self.kind == "choice" else (self.low, self.high)


@dataclass(frozen=True)
class Space:
    name: str
    params: tuple[Param, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.params)


def _field_type(key: str) -> Any:
    """The annotated type of a dotted TrainConfig key (the key is known to be valid)."""
    return key_type(TrainConfig, key)


def nested(flat: dict[str, Any]) -> dict:
    """`{"learner.sigma": 0.5}` → `{"learner": {"sigma": [0.5]}}`: a TrainConfig mapping,
    a scalar for a tuple field wrapped in a list."""
    out: dict = {}
    for key, value in flat.items():
        if typing.get_origin(_field_type(key)) is tuple and not isinstance(value, (list, tuple)):
            value = [value]
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def apply_params(base: dict, params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of one trial: the experiment's config (as a mapping) with `params`."""
    return from_dict(TrainConfig, _merge(base, nested(params)))


def _param(key: str, spec: Any, where: str) -> Param:
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS):
        raise ConfigError(
            f"{where}: {key}: expected one of {{kind: values}} with kind in {list(KINDS)}, "
            f"e.g. {{loguniform: [0.001, 0.1]}} or {{choice: [a, b]}}; got {spec!r}"
        )
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {key}: {kind} needs a list of values, got {values!r}")
    if kind == "choice":
        return Param(key, kind, choices=tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values):
        raise ConfigError(f"{where}: {key}: {kind} needs [low, high], got {values!r}")
    low, high = values
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ConfigError(
            f"{where}: {key}: {kind} needs low < high" + (" and low > 0" if kind != "int" else "")
        )
    if kind == "int" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{where}: {key}: int needs integer bounds, got {values!r}")
    return Param(key, kind, low=low, high=high)


def parse_space(data: Any, where: str = "space") -> Space:
    """A validated Space from the mapping of a space file (see the module docstring)."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: a space is a non-empty mapping of TrainConfig keys")
    keys = valid_keys(TrainConfig)
    unknown = sorted(k for k in data if k not in keys)
    if unknown:
        raise ConfigError(f"{where}: unknown TrainConfig key(s) {unknown}; valid keys: {keys}")
    fixed = sorted(
        k
        for k in data
        if k in FIXED_KEYS or not (k.startswith(TUNABLE_PREFIXES) or k in TUNABLE_KEYS)
    )
    if fixed:
        tunable = [
            k
            for k in keys
            if k not in FIXED_KEYS and (k.startswith(TUNABLE_PREFIXES) or k in TUNABLE_KEYS)
        ]
        raise ConfigError(
            f"{where}: {fixed} are fixed by the experiment config (data, subjects, episodes, "
            f"seed and budget are the same for every trial); a space may search: {tunable}"
        )
    params = tuple(_param(k, v, where) for k, v in data.items())
    check_values(Space(where, params), {}, where)
    return Space(name=where, params=params)


def check_values(space: Space, base: dict, where: str) -> None:
    """Every bound and choice must build a valid TrainConfig on `base` (a config mapping;
    {} = the defaults), with each learner the space names (`learner.name`), so a bad value,
    or a key a learner of the space does not read, fails before any trial starts, naming
    the key."""
    names = next((p.values() for p in space.params if p.key == "learner.name"), (None,))
    for name in names:
        learner = {} if name is None else {"learner.name": name}
        for p in space.params:
            for value in p.values():
                try:
                    apply_params(base, {**learner, p.key: value})
                except ConfigError as e:
                    raise ConfigError(
                        f"{where}: {p.key}={value!r} is not a valid value: {e}"
                    ) from e


def load_space(path: str | Path) -> Space:
    """Read and validate a space file (tune_spaces/*.yaml)."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_space(data, where=str(path))


def optuna_space(space: Space) -> dict:
    """Optuna distributions for OptunaSearch, keyed by the dotted TrainConfig keys."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out = {}
    for p in space.params:
        if p.kind == "choice":
            out[p.key] = CategoricalDistribution(p.choices)
        elif p.kind == "int":
            out[p.key] = IntDistribution(int(p.low), int(p.high))
        else:
            out[p.key] = FloatDistribution(p.low, p.high, log=p.kind == "loguniform")
    return out
