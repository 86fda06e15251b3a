"""A run's model, its pre-trained encoder (`model.init`) read from a URI.

`lightman pretrain` writes RUN/encoder.pt, local or s3://; a training run, a MEGC LOSO fold
or any other place that builds a run's model reads it through the storage layer, on
whichever node builds the model, so the encoder never has to lie on that node's disk.
"""

from __future__ import annotations

import dataclasses
import io

from lightman.models.ma2mi import init_backbone
from lightman.models.net import LightmanNet, ModelConfig, build_model
from lightman.platform.config import ConfigError
from lightman.tasks import storage


def build_run_model(cfg: ModelConfig) -> LightmanNet:
    """The run's model; a pre-trained encoder (`model.init`) is read from its URI (local or
    s3://) through the storage layer, on whichever node builds the model."""
    if not cfg.init:
        return build_model(cfg)
    model = build_model(dataclasses.replace(cfg, init=""))
    try:
        raw = storage.read_bytes(cfg.init)
    except OSError as e:
        raise ConfigError(f"model.init={cfg.init}: cannot be read ({e})") from e
    init_backbone(model, io.BytesIO(raw), name=cfg.init)
    return model
