import json

import pytest

from lightman.platform.kept import (
    KeptRowError,
    cell_location,
    config_hash,
    kept_cells,
    read_cell,
    write_cell,
)

HASH = "sha256:" + "a" * 64


def test_a_kept_cell_reads_back_with_its_provenance(tmp_path):
    loc = cell_location(str(tmp_path / "cells"), config_hash({"seed": 0}))
    assert read_cell(loc, HASH) is None  # nothing kept yet: the caller trains
    written = write_cell(loc, {"cell": "maml-s0", "acc": [0.5, 0.7]}, {"seed": 0}, HASH)
    row = read_cell(loc, HASH)
    assert row == written and row["acc"] == [0.5, 0.7] and row["index"] == HASH
    assert row["config"] == {"seed": 0} and "torch" in row["versions"] and row["cpus"] >= 1
    assert [r["cell"] for r in kept_cells(str(tmp_path / "cells"))] == ["maml-s0"]
    assert kept_cells(str(tmp_path / "none")) == []


def test_a_cell_from_another_index_or_unreadable_is_refused_naming_it(tmp_path):
    loc = cell_location(str(tmp_path), "h")
    write_cell(loc, {"cell": "maml-s0"}, {}, HASH)
    other = "sha256:" + "b" * 64
    with pytest.raises(KeptRowError, match=rf"cell maml-s0 .* measured on index {HASH}"):
        read_cell(loc, other)
    (tmp_path / "h.json").write_text(json.dumps({"acc": [0.5]})[:-3])
    with pytest.raises(KeptRowError, match="h.json: not a kept cell"):
        read_cell(loc, HASH)


def test_figures_may_not_shadow_the_provenance(tmp_path):
    with pytest.raises(KeptRowError, match=r"provenance keys \['index'\]"):
        write_cell(cell_location(str(tmp_path), "r"), {"acc": [1.0], "index": "mine"}, {}, HASH)
    assert not (tmp_path / "r.json").exists()
