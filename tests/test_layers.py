"""The layering rule (models <- tasks <- platform) and the Ray-free single-process path.

See docs/architecture.md, "Layers": a lower layer never imports an upper one, and
`lightman train` / `lightman eval` in one process never import Ray (starting it costs
seconds and memory that a laptop run does not need).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from lightman.platform import index

REPO = Path(__file__).resolve().parents[1]
UPPER = {"models": ("lightman.tasks", "lightman.platform"), "tasks": ("lightman.platform",)}


def _imported_modules(path: Path) -> list[str]:
    """Every module an `import` or `from ... import` statement of the file names."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_lower_layers_never_import_upper_ones():
    wrong = [
        f"{path.relative_to(REPO)} imports {name}"
        for layer, upper in UPPER.items()
        for path in sorted((REPO / layer).rglob("*.py"))
        for name in _imported_modules(path)
        if name.startswith(upper)
    ]
    assert not wrong, "\n".join(wrong)


SINGLE_PROCESS = """
import sys
from lightman.platform import cli, evaluate, protocols, selection, train

idx, out = sys.argv[1:]
tiny = ["episode.ways=3", "episode.shots=1", "episode.query=1", "episode.aux_shots=1",
        "model.ways=3", "model.image_size=16", "model.hidden=8", "model.aux_dim=8",
        "model.input_mode=delta", "meta_batch=2", "threads=1", "data.val_fraction=0.2",
        "data.test_fraction=0.3", "val_episodes=2", "test_episodes=2"]
assert cli.main(["train", "--out", out + "/run", f"data.index={idx}", *tiny,
                 "iterations=1", "eval_every=1"]) == 0
assert cli.main(["eval", "--checkpoint", out + "/run/best.pt", "--index", idx,
                 "--protocol", "fewshot", "--out", out + "/eval", "episodes=2"]) == 0
assert "ray" not in sys.modules, sorted(m for m in sys.modules if m.startswith("ray"))
print("ray-free")
"""


def test_single_process_train_and_eval_never_import_ray(tmp_path, index_rows, dataset_entry):
    uri = str(tmp_path / "index")
    micro = index_rows("casme2", 60, subjects=10, frames=8, size=16)
    index.write_index(micro, uri, dataset_entry("casme2"))
    macro = index_rows("ckplus", 12, expression="macro", subjects=4, frames=8, size=16)
    index.write_index(macro, uri, dataset_entry("ckplus"))
    out = subprocess.run(
        [sys.executable, "-c", SINGLE_PROCESS, uri, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ray-free" in out.stdout
