"""Checkpoints: weights plus the config and versions that made them.

A checkpoint is a plain dict saved with `torch.save`, so it loads with
`torch.load(..., weights_only=True)` (no pickled code runs on load):
``{"format": 1, "state_dict": ..., "config": asdict(ModelConfig), "versions": {...},
"extra": {...}}``. `extra` holds the caller's plain data (step, metrics, label names).
Paths are local; the platform layer reads/writes s3:// objects through file objects.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, BinaryIO

import torch

from lightman.models.net import LightmanNet, ModelConfig, build_model
from lightman.models.provenance import versions

FORMAT = 1
_KEYS = ("format", "state_dict", "config", "versions", "extra")
_PLAIN = (str, int, float, bool, type(None))


def check_plain(value: Any, where: str = "extra") -> None:
    """Raise unless `value` is plain data (str/int/float/bool/None, lists, tuples,
    str-keyed dicts), which `weights_only=True` can load; the error names the key path."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: checkpoint dict keys must be str, got {k!r}")
            check_plain(v, f"{where}.{k}")
        return
    raise TypeError(
        f"{where}: checkpoints hold plain types only (str, int, float, bool, None, list, dict), "
        f"got {type(value).__name__}"
    )


def save_checkpoint(
    path_or_fileobj: str | Path | BinaryIO, model: LightmanNet, cfg: ModelConfig, extra: dict
) -> None:
    """Save `model`'s state_dict with `cfg`, the versions and `extra` (plain types only).

    A local path is written atomically (temporary file, then rename).
    """
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    if cfg != getattr(model, "cfg", None):
        raise ValueError(
            f"cfg {cfg} is not the config the model was built with ({getattr(model, 'cfg', None)})"
        )
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    check_plain(extra)
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": dataclasses.asdict(cfg),
        "versions": versions(),
        "extra": extra,
    }
    if not isinstance(path_or_fileobj, (str, Path)):
        torch.save(payload, path_or_fileobj)
        return
    path = Path(path_or_fileobj)
    if "://" in str(path_or_fileobj):
        raise ValueError(
            f"{path_or_fileobj}: save_checkpoint writes local paths or file objects; "
            "use the platform storage for URIs"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path_or_fileobj: str | Path | BinaryIO, name: str | None = None
) -> tuple[LightmanNet, ModelConfig, dict]:
    """Load a checkpoint with `weights_only=True` -> (model in eval mode, cfg, meta).

    meta = {"format", "versions", "extra"}. Errors name the source (`name`: where a file
    object was read from) and what is wrong.
    """
    source = name or (
        str(path_or_fileobj)
        if isinstance(path_or_fileobj, (str, Path))
        else "checkpoint file object"
    )
    try:
        payload = torch.load(path_or_fileobj, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:
        # torch's unpickling errors run to a dozen lines of advice; the first names the cause
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(
            f"{source}: not a loadable Lightman checkpoint ({type(e).__name__}: {first})"
        ) from e
    if not isinstance(payload, dict) or any(k not in payload for k in _KEYS):
        have = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{source}: a Lightman checkpoint has keys {list(_KEYS)}, found {have}")
    if payload["format"] != FORMAT:
        raise ValueError(
            f"{source}: checkpoint format {payload['format']!r}, "
            f"this Lightman reads format {FORMAT}"
        )
    try:
        # the weights below replace any pre-trained init: the run's config keeps its path
        cfg = dataclasses.replace(ModelConfig(**payload["config"]), init="")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: invalid model config in checkpoint: {e}") from e
    model = build_model(cfg)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{source}: weights do not fit the stored config: {e}") from e
    meta = {"format": payload["format"], "versions": payload["versions"], "extra": payload["extra"]}
    return model.eval(), cfg, meta
