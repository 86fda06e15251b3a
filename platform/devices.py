"""Where a command's model runs: `cpu`, `cuda` or `cuda:N`, checked before any work.

Every command that runs a model takes a device (`device` of train, eval and pretrain,
`predictor.device` of score and serve, which `serve --gpus N` sets). A CUDA device that
this process cannot see is a one-line `ConfigError` naming the field, raised before data
is read, an output folder is made or Ray starts, never a silent run on the CPU.

The check runs in the process that starts the command: on a Ray cluster whose head node
has no GPU, start the command on a GPU node (or through `ray job submit` onto one).
Inside a Ray worker or actor given GPUs, Ray sets CUDA_VISIBLE_DEVICES to them, so the
worker sees its own GPUs as cuda:0, cuda:1, ...: Ray-side code asks for `cuda`.
"""

from __future__ import annotations

import os
import re

import torch

from lightman.platform.config import ConfigError

_NAME = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def check_device_name(name: str, field: str) -> str:
    """`name` if it is cpu, cuda or cuda:N (syntax only: no CUDA is needed to hold the
    name, e.g. in a config written for a GPU cluster); a ConfigError naming `field` else."""
    match = _NAME.match(name) if isinstance(name, str) else None
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise ConfigError(f"{field} must be cpu, cuda or cuda:N, got {name!r}")
    return name


def cuda_missing() -> str | None:
    """Why this process cannot use CUDA, in a clause; None when it can."""
    if torch.cuda.is_available():
        return None
    built = f"with CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return (
        f"no CUDA device is visible (torch.cuda.is_available() is False; this torch is "
        f"{torch.__version__} built {built}{hidden})"
    )


def resolve_device(name: str, field: str) -> torch.device:
    """The torch.device `name` names, usable in this process; otherwise a one-line
    ConfigError `<field>=<name>: ...` (a bad name, no CUDA, or cuda:N past the count)."""
    check_device_name(name, field)
    device = torch.device(name)
    if device.type == "cpu":
        return device
    missing = cuda_missing()
    if missing is not None:
        raise ConfigError(f"{field}={name}: {missing}")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"{field}={name}: {count} CUDA device(s) are visible, cuda:0 to cuda:{count - 1}"
        )
    return device


def is_cuda(name: str) -> bool:
    """Whether a device name (cpu, cuda, cuda:N) names a GPU."""
    return name.startswith("cuda")
