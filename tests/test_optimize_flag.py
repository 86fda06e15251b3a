"""The dataset adapters work under `python -OO`, which strips docstrings.

Nothing may read a layout (or anything else) back from a docstring: the layouts are
module constants, so listing them and the LayoutError that shows one work the same
with and without -OO.
"""

from __future__ import annotations

import json
import subprocess
import sys

from lightman.tasks.datasets import ADAPTERS, LAYOUTS

LIST_LAYOUTS = """
import json, sys
import lightman.tasks.datasets as d
from lightman.tasks.datasets import LayoutError, scan
assert d.__doc__ is None  # -OO did strip the docstrings
errors = {}
for name in d.ADAPTERS:
    try:
        scan(name, sys.argv[1])
    except LayoutError as e:
        errors[name] = str(e)
json.dump({"layouts": d.LAYOUTS, "errors": errors}, sys.stdout)
"""


def test_adapters_list_their_layouts_and_show_them_under_python_OO(tmp_path):
    (tmp_path / "readme.txt").write_text("not a release")
    run = subprocess.run(
        [sys.executable, "-OO", "-c", LIST_LAYOUTS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["layouts"] == LAYOUTS  # the same constants as without -OO
    assert sorted(out["layouts"]) == sorted(ADAPTERS)
    for name, layout in LAYOUTS.items():
        assert layout.startswith("  <root>/"), name  # the layout's lines, not an empty text
        assert f"layout:\n{layout}\n" in out["errors"][name], name
