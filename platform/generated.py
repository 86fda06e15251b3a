"""The embedded default as an index: generate stand-in releases and ingest each one.

`build_index` is what `lightman demo` does before it trains; `small_index` is the same at
the sizes tests and benchmarks use (a CASME II stand-in under the 5-class scheme, CK+ and
any other generated dataset under its own labels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from lightman.platform.config import load_config
from lightman.platform.ingest import IngestConfig, IngestSummary, ingest
from lightman.tasks.synth import SynthConfig, SynthReport, synthesize


def build_index(
    root: str | Path,
    synth: SynthConfig,
    primary: Sequence[str],
    ingest_primary: IngestConfig,
    ingest_other: IngestConfig,
    on_ingest: Callable[[IngestSummary], None] | None = None,
) -> tuple[str, SynthReport]:
    """Generate `synth`'s datasets under root/synth and ingest every one into root/index,
    the `primary` datasets with `ingest_primary`, the others with `ingest_other`."""
    root = Path(root)
    report = synthesize(root / "synth", synth)
    roots = dict(report.roots)
    index = str(root / "index")
    for dataset in synth.datasets:  # every generated layout goes through its adapter
        cfg = ingest_primary if dataset in primary else ingest_other
        summary = ingest(dataset, roots[dataset], index, cfg)
        if on_ingest is not None:
            on_ingest(summary)
    return index, report


def small_index(
    root: str | Path, synth: Sequence[str], size: int = 32, frames: int | None = None
) -> str:
    """A generated index from SynthConfig overrides (e.g. "casme2.subjects=10"): casme2
    under the 5-class scheme, the rest native, every clip cropped to `size` px."""
    sizes = [f"preprocess.size={size}"] + ([f"preprocess.frames={frames}"] if frames else [])
    other = load_config(IngestConfig, None, sizes)
    index, _ = build_index(
        root,
        load_config(SynthConfig, None, list(synth)),
        ("casme2",),
        replace(other, label_scheme="five"),
        other,
    )
    return index
