"""`lightman inspect`: what an index holds, and a contact sheet to eyeball the crops.

The text report comes from the manifest alone (counts per dataset, class, subject and
expression; skipped clips with reasons; repairs). The contact sheet reads a small,
class-stratified sample of clips and shows, for each, the onset, apex and offset
frames of its sampled frames and |apex − onset| magnified ×10: a micro-expression is
a few grey levels of change, invisible side by side but plain in the difference.

The manifest is not taken on trust: every data file it lists must exist and open as
Parquet with the rows the manifest records, and `verify=True` also re-hashes every row
against the datasets' content hashes. A damaged index raises `DamagedIndex`, which
carries the report with the problems listed.

Two hashes are printed, named apart: each dataset's hash (the one `lightman ingest`
prints for the dataset it wrote) and the index hash over all datasets.
"""

from __future__ import annotations

import io
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lightman.platform.index import (
    BadIndexError,
    combine_digests,
    file_problems,
    read_manifest,
    read_table,
    table_digests,
)
from lightman.tasks import storage

MAGNIFY = 10.0  # gain on |apex − onset| in the contact sheet
_SHEET_COLUMNS = (
    "clip_id",
    "dataset",
    "subject",
    "emotion",
    "label",
    "onset",
    "apex",
    "offset",
    "apex_source",
    "sampled_frames",
    "frames",
    "frames_shape",
)


class DamagedIndex(BadIndexError):
    """Data files of the index are missing, unreadable, or differ from the manifest."""

    def __init__(self, message: str, report: str):
        super().__init__(message)
        self.report = report  # the full report, problems included


def _counts_line(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def format_report(uri: str, manifest: dict) -> str:
    """The manifest as a human-readable report (one section a dataset)."""
    lines = [
        f"index {uri}: {manifest['num_rows']} clips in {len(manifest['datasets'])} dataset(s), "
        f"schema v{manifest['schema_version']}",
        f"index hash (all datasets): {manifest['content_hash']}",
    ]
    for name, e in manifest["datasets"].items():
        c = e["counts"]
        scheme = e["label_scheme"]
        lines += [
            "",
            f"{name}: {c['clips']} clips from {e.get('source_uri', '?')}, "
            f"written {e['written_at']}",
            f"  label scheme {scheme['name']} ({len(scheme['class_names'])} classes)",
            # in class-index order (the manifest's JSON keys are sorted)
            f"  per class: {_counts_line({k: c['per_class'][k] for k in scheme['class_names']})}",
            f"  per expression: {_counts_line(c['per_expression'])}",
            f"  per subject ({len(c['per_subject'])}): {_counts_line(c['per_subject'])}",
            f"  {name} dataset hash: {e['content_hash']}",
        ]
        skipped = e.get("skipped", [])
        lines.append(f"  skipped: {len(skipped)}")
        lines += [f"    {s['clip']}: {s['reason']}" for s in skipped]
        lines.append(
            f"  repaired clips: {len(e['repairs'])} ({_counts_line(c['repairs_by_kind'])})"
        )
        lines += [f"    {clip}: {'; '.join(notes)}" for clip, notes in e["repairs"].items()]
    return "\n".join(lines)


def sample_clips(clip_ids: list[str], groups: list[str], k: int, seed: int = 0) -> list[str]:
    """Up to k clip ids, taken round-robin over the groups (shuffled within each, seeded)."""
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[str]] = defaultdict(list)
    for cid, g in sorted(zip(clip_ids, groups)):
        by_group[g].append(cid)
    queues = [list(rng.permutation(by_group[g])) for g in sorted(by_group)]
    picked: list[str] = []
    while len(picked) < k and any(queues):
        for q in queues:
            if q and len(picked) < k:
                picked.append(str(q.pop(0)))
    return picked


def key_frames(row: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(onset, apex, offset) frames (H, W, C) of a row's sampled frames and the apex frame number.

    Sampling runs from onset to offset, so the first and last sampled frames are those;
    the apex shown is the sampled frame nearest the apex.
    """
    frames = np.frombuffer(row["frames"], dtype=np.uint8).reshape(
        row["frames_shape"]
    )  # (M, H, W, C)
    sampled = np.asarray(row["sampled_frames"])
    i = int(np.argmin(np.abs(sampled - row["apex"])))
    return frames[0], frames[i], frames[-1], int(sampled[i])


def magnified_difference(onset: np.ndarray, apex: np.ndarray, gain: float = MAGNIFY) -> np.ndarray:
    """(H, W) float in [0, 1]: channel-mean |apex − onset| × gain / 255, clipped."""
    diff = np.abs(apex.astype(np.float32) - onset.astype(np.float32)).mean(axis=-1)
    return np.clip(diff * gain / 255.0, 0.0, 1.0)


def contact_sheet(rows: list[dict]) -> bytes:
    """PNG bytes: a row per clip with onset, apex, offset and the magnified difference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 2.2 * max(len(rows), 1)), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(rows), 1), 4, squeeze=False)
    for ax_row, row in zip(axes, rows):
        onset, apex, offset, apex_n = key_frames(row)
        grey = onset.shape[-1] == 1
        panels = [
            (onset, f"onset {row['onset']}"),
            (apex, f"apex {apex_n} ({row['apex_source']})"),
            (offset, f"offset {row['offset']}"),
        ]
        for ax, (img, title) in zip(ax_row, panels):
            ax.imshow(img[..., 0] if grey else img, cmap="gray" if grey else None, vmin=0, vmax=255)
            ax.set_title(title, fontsize=7)
        ax_row[3].imshow(magnified_difference(onset, apex), cmap="inferno", vmin=0.0, vmax=1.0)
        ax_row[3].set_title(f"|apex - onset| x{MAGNIFY:g}", fontsize=7)
        ax_row[0].set_ylabel(f"{row['clip_id']}\n{row['emotion']}", fontsize=7)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    if not rows:
        axes[0][0].set_title("no clips in the index", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def check_files(uri: str, manifest: dict, *, verify: bool = False) -> list[tuple[str, str]]:
    """(dataset, problem) for every listed data file that is missing, does not open as
    Parquet, or holds another number of rows than the manifest says; with `verify`, also
    for every dataset whose rows no longer hash to its content hash. Empty when healthy."""
    root = storage.resolve(uri)
    problems = []
    for name, e in manifest["datasets"].items():
        found = file_problems(root, e["files"])
        problems += [(name, p) for p in found]
        if verify and not found:
            paths = [root.join(f["path"]).path for f in e["files"]]
            try:
                digests = [
                    d for p in paths for d in table_digests(pq.read_table(p, filesystem=root.fs))
                ]
            except (OSError, pa.ArrowException) as err:  # a damaged page inside the file
                problems.append((name, f"{name}: rows unreadable ({err})"))
                continue
            if combine_digests(digests) != e["content_hash"]:
                problems.append(
                    (
                        name,
                        f"{name}: rows hash to {combine_digests(digests)}, the "
                        f"manifest records {e['content_hash']}",
                    )
                )
    return problems


def inspect_index(
    uri: str,
    out_png: str | None = None,
    *,
    verify: bool = False,
    clips: int = 6,
    seed: int = 0,
) -> str:
    """Report on the index at `uri` after checking its files (`check_files`); with `out_png`
    (local or s3://) also write a contact sheet of up to `clips` clips stratified by
    (dataset, class). Raises DamagedIndex, before any contact sheet, if a check fails."""
    loc = storage.resolve(uri)
    manifest = read_manifest(loc.uri)
    report = format_report(loc.uri, manifest)
    problems = check_files(loc.uri, manifest, verify=verify)
    checked = f"{len(manifest['files'])} data file(s)"
    if problems:
        report += f"\n\nproblems ({len(problems)}):\n" + "\n".join(f"  {p}" for _, p in problems)
        damaged = sorted({d for d, _ in problems})
        raise DamagedIndex(
            f"index at {loc.uri} is damaged: {len(problems)} problem(s) in {checked} (listed "
            f"above); re-run `lightman ingest` for {', '.join(damaged)}",
            report,
        )
    report += f"\n\nchecked {checked}: all present and readable" + (
        "; every dataset's rows match its hash" if verify else ""
    )
    if out_png is None:
        return report
    meta = read_table(loc.uri, columns=["clip_id", "dataset", "label", "subject"]).to_pydict()
    groups = [f"{d}/{lab}" for d, lab in zip(meta["dataset"], meta["label"])]
    picked = sample_clips(meta["clip_id"], groups, clips, seed)
    rows: list[dict] = []
    if picked:
        subject_of = dict(zip(meta["clip_id"], meta["subject"]))
        table = read_table(
            loc.uri, subjects=sorted({subject_of[c] for c in picked}), columns=_SHEET_COLUMNS
        )
        table = table.filter(pc.is_in(table.column("clip_id"), value_set=pa.array(picked)))
        by_id = {r["clip_id"]: r for r in table.to_pylist()}
        rows = [by_id[c] for c in picked]
    storage.write_bytes(storage.resolve(out_png), contact_sheet(rows))
    return report + f"\n\ncontact sheet ({len(rows)} clips): {out_png}"
