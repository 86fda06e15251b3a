import json

import pytest

from lightman.platform.kept import (
    KeptRowError,
    measure_once,
    read_grid,
    read_row,
    read_rows,
    write_row,
)

HASH = "sha256:" + "a" * 64


def test_a_kept_row_reads_back_with_its_provenance(tmp_path):
    path = tmp_path / "5shot" / "maml" / "seed0.json"
    assert read_row(path, HASH) is None  # nothing kept yet: the caller trains
    written = write_row(path, {"acc": [0.5, 0.7]}, {"seed": 0}, HASH)
    row = read_row(path, HASH)
    assert row == written and row["acc"] == [0.5, 0.7] and row["index"] == HASH
    assert row["config"] == {"seed": 0} and "torch" in row["versions"] and row["cpus"] >= 1
    assert [p.name for p in path.parent.iterdir()] == ["seed0.json"]  # no temporary left


def test_a_row_from_another_index_or_unreadable_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "seed0.json"
    write_row(path, {"acc": [0.5]}, {}, HASH)
    other = "sha256:" + "b" * 64
    with pytest.raises(
        KeptRowError, match=rf"seed0.json was measured on index {HASH}, not {other}"
    ):
        read_row(path, other)
    path.write_text(json.dumps({"acc": [0.5]})[:-3])
    with pytest.raises(KeptRowError, match="seed0.json: not a kept row"):
        read_row(path, HASH)


def test_figures_may_not_shadow_the_provenance(tmp_path):
    with pytest.raises(KeptRowError, match=r"provenance keys \['index'\]"):
        write_row(tmp_path / "r.json", {"acc": [1.0], "index": "mine"}, {}, HASH)
    assert not (tmp_path / "r.json").exists()


def test_measure_runs_once_and_keeps_what_a_finished_run_left(tmp_path):
    calls = []

    def run():
        calls.append(1)
        return {"acc": [0.25 * len(calls)]}

    kept, done = tmp_path / "kept" / "seed0.json", tmp_path / "run" / "row.json"
    first = measure_once(kept, done, HASH, {"seed": 0}, run)
    assert calls == [1] and first["acc"] == [0.25] and first["config"] == {"seed": 0}
    assert measure_once(kept, done, HASH, {"seed": 0}, run) == first and calls == [1]
    kept.unlink()  # a run whose row.json exists but whose kept row does not: kept, not re-run
    again = measure_once(kept, done, HASH, {"seed": 0}, run)
    assert calls == [1] and again["acc"] == [0.25] and read_row(kept, HASH) == again
    assert measure_once(None, done, HASH, {}, run) == {"acc": [0.25]} and calls == [1]
    with pytest.raises(KeptRowError, match="was measured on index"):
        measure_once(kept, done, "sha256:" + "c" * 64, {}, run)


def test_a_table_reads_without_its_index_only_whole_and_from_one_index(tmp_path):
    paths = [tmp_path / f"seed{k}.json" for k in range(3)]
    for k, path in enumerate(paths[:2]):
        write_row(path, {"acc": [k / 10]}, {}, HASH)
    with pytest.raises(KeptRowError, match=r"seed2.json is not kept \(1 of 3 rows missing\)"):
        read_rows(paths)
    write_row(paths[2], {"acc": [0.2]}, {}, "sha256:" + "d" * 64)
    with pytest.raises(KeptRowError, match="seed2.json was measured on index sha256:d"):
        read_rows(paths)
    write_row(paths[2], {"acc": [0.2]}, {}, HASH)
    assert [r["acc"] for r in read_rows(paths)] == [[0.0], [0.1], [0.2]]


def test_a_grid_is_the_table_of_a_folder_of_names_by_seeds(tmp_path):
    for name in ("a", "b"):
        for seed in (0, 3):
            write_row(tmp_path / name / f"seed{seed}.json", {"acc": [seed], "n": name}, {}, HASH)
    grid = read_grid(tmp_path, ["b", "a"], [3, 0])
    assert {n: {s: (r["n"], r["acc"]) for s, r in g.items()} for n, g in grid.items()} == {
        "b": {3: ("b", [3]), 0: ("b", [0])},
        "a": {3: ("a", [3]), 0: ("a", [0])},
    }
    with pytest.raises(KeptRowError, match=r"c.seed0.json is not kept \(2 of 6 rows missing\)"):
        read_grid(tmp_path, ["a", "b", "c"], [0, 3])
