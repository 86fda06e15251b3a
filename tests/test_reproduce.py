"""`lightman reproduce` (platform/reproduce.py): a study end to end on a tiny generated
index as a Ray Tune grid, its output on the test S3 endpoint; a cell's figures equal its
config trained alone; a second call runs only the cells not kept; another index's cells
are refused by name; `full` prints its measured cost; the HTML report opens in headless
Chromium with its figures loaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightman.platform import generated, kept, reproduce
from lightman.platform.train import run_training
from lightman.tasks import storage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = {
    "episode": {"ways": 3, "shots": 1, "query": 2, "aux_shots": 1},
    "model": {"ways": 3, "image_size": 16, "frames": 6, "hidden": 8, "aux_dim": 8},
    "data": {
        "primary": ["casme2"],
        "auxiliary": ["ckplus"],
        "val_fraction": 0.2,
        "test_fraction": 0.3,
    },
    "meta_batch": 2,
    "threads": 1,
    "workers": 1,
    "iterations": 2,
    "eval_every": 2,
    "checkpoint_every": 2,
    "val_episodes": 2,
    "test_episodes": 4,
}
STUDY = {
    "name": "tiny",
    "title": "the machinery on a tiny index",
    "train": TINY,
    "learners": ["lightman", "maml"],
    "primary": "lightman",
    "contrast_metrics": ["acc", "macro_f1"],
    "primary_contrast": "lightman-maml:acc",
    "claims": [{"contrast": "lightman-maml:acc", "size": 30.48, "text": "Table 2 ACC"}],
    "paper": {"lightman": {"acc": 93.48}, "maml": {"acc": 63.0}},
    "quick": {"seeds": 2},
    "full": {"seeds": 3, "train": {"test_episodes": 6}},
}


def _index(root: Path, seed: int) -> str:
    return generated.small_index(
        root,
        [
            "datasets=[casme2,ckplus]",
            f"seed={seed}",
            "casme2.subjects=10",
            "casme2.clips=90",
            "ckplus.subjects=4",
            "ckplus.clips=20",
        ],
        size=16,
        frames=6,
    )


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> str:
    return _index(tmp_path_factory.mktemp("repro-data"), seed=5)


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("repro-study") / "tiny.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return str(path)


@pytest.fixture(scope="module")
def first(ray_local, s3_endpoint, index, study_file):
    _, bucket = s3_endpoint
    out = f"s3://{bucket}/reproduce/tiny"
    return out, reproduce.reproduce(study_file, index, out, budget="quick")


def _cells(out: str) -> dict[str, dict]:
    return {r["cell"]: r for r in kept.kept_cells(storage.resolve(out).join("cells").uri)}


def test_shipped_studies_load_and_their_cells_build(index):
    for name in ("table2", "aux_branch", "table3_macro", "table2_tuned"):
        study = reproduce.load_study(name)
        assert study.primary_contrast and study.claims
        for budget in ("quick", "full"):
            cells = reproduce.build_cells(study, budget, index)
            assert len(cells) == len(study.learners) * study.budget(budget).seeds
    for name, protocol in (("table1", "megc-loso"), ("cross_dataset", "lodo")):
        study = reproduce.load_study(name, ["train.data.primary=[casme2]"])
        assert study.protocol == protocol and study.primary_contrast and study.claims
        assert set(t2_learners := study.learners) == {
            "lightman",
            "maml",
            "anil",
            "reptile",
            "protonet",
            "supervised",
        }, t2_learners
        if protocol == "megc-loso":  # the tiny index's 10 CASME II subjects
            full = reproduce.build_cells(study, "full", index)
            assert len(full) == len(study.learners) * study.full.seeds * 10
            assert {c.config["model"]["ways"] for c in full} == {3}  # composite3 classes
            quick = reproduce.build_cells(study, "quick", index)
            assert len(quick) == len(study.learners) * study.quick.seeds * study.quick.folds
    macro = reproduce.load_study("table3_macro_megc")  # its pretrain stages: one per seed
    cells = reproduce.build_cells(macro, "quick", index)
    assert len(cells) == len(macro.learners) * macro.quick.seeds * macro.quick.folds
    assert len(reproduce.pretrain_stages(macro, "quick", cells)) == 2 * macro.quick.seeds
    assert reproduce.load_study("table1").reference["MEGC 2019 LBP-TOP baseline"] == {
        "uf1": 58.82,
        "uar": 57.85,
    }
    t2 = reproduce.load_study("table2")
    full = reproduce.build_cells(t2, "full", index)
    assert t2.full.seeds >= 5 and min(c.config["test_episodes"] for c in full) >= 600
    assert {"lightman", "maml", "anil", "reptile", "protonet", "supervised"} == set(t2.learners)
    sup = next(c for c in full if c.arm == "supervised")
    assert sup.config["model"]["ways"] == 5  # model.ways=classes: the 5-class CASME II pool


def test_the_study_runs_end_to_end_and_writes_its_report(first):
    out, result = first
    assert sorted(result.ran) == ["lightman-s0", "lightman-s1", "maml-s0", "maml-s1"]
    assert result.kept == []
    root = storage.resolve(out)
    md = storage.read_bytes(root.join("report.md")).decode()
    for needed in (
        "lightman-maml:acc **(primary)**",
        "p (Holm)",
        "93.48",
        "not testable",
        "decides nothing",
        "Index content hash",
        "### maml",
    ):
        assert needed in md, needed
    assert storage.exists(root.join("figures", "acc_per_arm.png"))
    assert [c["verdict"] for c in result.claims] == ["not testable on this data"]  # quick
    record = json.loads(storage.read_bytes(root.join("study.json")))
    assert len(record["contrasts"]) == 2 and record["budget"] == "quick"


def test_a_cell_equals_its_config_run_alone(first, index, tmp_path):
    out, _ = first
    row = _cells(out)["maml-s1"]
    cfg = reproduce._with_index(row["config"], index)
    alone = run_training(cfg, tmp_path / "alone").metrics  # `lightman train`'s code, no Ray
    assert {k: 100 * alone["test"][k][0] for k in row["figures"]} == row["figures"]
    assert alone["test_subjects"] == row["test_subjects"]


def test_resume_runs_only_the_cells_not_kept(first, index, study_file):
    out, _ = first
    before = _cells(out)
    storage.resolve(before["lightman-s1"]["_uri"]).fs.delete_file(
        storage.resolve(before["lightman-s1"]["_uri"]).path
    )
    again = reproduce.reproduce(study_file, index, out, budget="quick")
    assert again.ran == ["lightman-s1"]
    assert sorted(again.kept) == ["lightman-s0", "maml-s0", "maml-s1"]
    after = _cells(out)
    for cell in ("lightman-s0", "maml-s0", "maml-s1"):
        assert after[cell] == before[cell]  # read back, not rerun
    assert after["lightman-s1"]["figures"] == before["lightman-s1"]["figures"]  # deterministic
    nothing = reproduce.reproduce(study_file, index, out, budget="quick")
    assert nothing.ran == [] and len(nothing.kept) == 4


def test_another_index_is_refused_by_name(first, study_file, tmp_path):
    out, _ = first
    other = _index(tmp_path, seed=6)
    mine = next(iter(_cells(out).values()))["index"]
    with pytest.raises(kept.KeptRowError) as e:
        reproduce.reproduce(study_file, other, out, budget="quick")
    assert mine in str(e.value) and "cell " in str(e.value) and "use another --out" in str(e.value)


def test_full_prints_its_measured_cost_before_it_starts(index, study_file, tmp_path):
    said = []
    plan = reproduce.reproduce(
        study_file, index, str(tmp_path / "full"), budget="full", plan_only=True, echo=said.append
    )
    assert plan.ran == [] and plan.estimate["cpu_hours"] > 0
    assert len(plan.estimate["cells"]) == 6 and set(plan.estimate["arms"]) == {"lightman", "maml"}
    assert any("expected" in line and "CPU hours" in line for line in said)
    assert not (tmp_path / "full" / "cells").exists()  # nothing ran


CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('img.figure')];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-figures', ok + '/' + imgs.length);
});
</script></body>"""


def test_the_html_report_opens_in_headless_chromium_with_its_figures(first, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; see the Makefile)")
    out, _ = first
    html = storage.read_bytes(storage.resolve(out).join("report.html")).decode()
    assert "data:image/png;base64," in html and "src='figures/" not in html  # self-contained
    page = tmp_path / "report.html"  # alone in its folder: nothing else to load
    page.write_text(html.replace("</body>", CHECK))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=5000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert 'data-figures="2/2"' in dom, dom[-500:]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


# --- held-out protocols: Table 1 (megc-loso) and the cross-dataset study (lodo) ----------

SMALL = [
    "learners=[lightman,supervised]",
    "primary_contrast=lightman-supervised:uf1",
    "claims=[]",
    "train.model.image_size=16",
    "train.model.frames=6",
    "train.model.hidden=8",
    "train.model.aux_dim=8",
    "train.meta_batch=2",
    "train.episode.query=1",
    "quick.train.iterations=2",
]


def _folds_never_train_on_what_they_hold_out(out: str, column) -> list[dict]:
    """Every kept fold row: its held-out clips are exactly those of its fold (a subject or
    a dataset), and none of them is among the clips it trained or validated on."""
    rows = [r for r in _cells(out).values() if r.get("fold")]
    for r in rows:
        assert r["clip_ids"] and {column(c) for c in r["clip_ids"]} == {r["fold"]}
        assert not set(r["clip_ids"]) & set(r["train_clips"])
        assert all(column(c) != r["fold"] for c in r["train_clips"])
        assert not {column(c) for c in r["support"]} & {r["fold"]}
    return rows


def test_table1_megc_loso_runs_end_to_end_and_no_fold_trains_on_its_subject(
    ray_local, index, tmp_path
):
    out = str(tmp_path / "table1")
    over = [*SMALL, "train.data.primary=[casme2]", "quick.seeds=1", "quick.folds=2"]
    result = reproduce.reproduce("table1", index, out, budget="quick", overrides=over)
    assert len(result.ran) == 2 * 2  # arms x folds, one seed
    rows = _folds_never_train_on_what_they_hold_out(out, lambda c: c.rsplit("/", 1)[0])
    assert {r["fold"] for r in rows} == {"casme2/sub01", "casme2/sub02"}
    md = (Path(out) / "report.md").read_text()
    for needed in ("Per dataset", "MEGC 2019 LBP-TOP baseline", "58.82", "joined by clip id"):
        assert needed in md, needed


def test_cross_dataset_holds_each_dataset_out_of_training(tmp_path):
    """In process (no Tune: the grid is the Table 1 test's): each fold cell of the shipped
    study on a toy CASME II + SAMM index, pooled by `pool_folds`."""
    sys.path.insert(0, str(Path(__file__).parent))
    from toy_clips import toy_index

    uri = str(tmp_path / "index")
    for k, d in enumerate(("casme2", "samm")):
        toy_index(uri, d, "micro", subjects=4, per_class=2, classes=3, seed=k)
    over = [
        *SMALL[3:],
        "learners=[maml,supervised]",
        "primary=maml",
        "primary_contrast=maml-supervised:uf1",
        "claims=[]",
        "train.data.primary=[casme2,samm]",
        "train.data.labels=index",
        "train.data.auxiliary=[]",
        "train.episode.aux_shots=0",
        "quick.seeds=1",
    ]
    study = reproduce.load_study("cross_dataset", over)
    cells = reproduce.build_cells(study, "quick", uri)
    assert sorted(c.id for c in cells) == [
        "maml-s0-casme2",
        "maml-s0-samm",
        "supervised-s0-casme2",
        "supervised-s0-samm",
    ]
    out = str(tmp_path / "lodo")
    megc = reproduce._megc(study, "quick")
    rows = {c.id: reproduce.run_cell(c, uri, "h", out, megc) for c in cells}
    kept_rows = _folds_never_train_on_what_they_hold_out(out, lambda c: c.split("/", 1)[0])
    assert sorted(r["fold"] for r in kept_rows) == ["casme2", "casme2", "samm", "samm"]
    shown, pooled = reproduce.pool_folds(cells, rows)
    assert [c.id for c in shown] == ["maml-s0", "supervised-s0"]
    assert pooled["maml-s0"]["clips"] == {"all": 48, "casme2": 24, "samm": 24}


# --- stages: pre-training (the macro-data table) and tuning (Table 2, tuned) --------------

TINY_MIA = {**TINY["model"], "backbone": "miacnet", "input_mode": "frames", "bn_mode": "task"}
PRE_STUDY = {
    **STUDY,
    "name": "tiny-pretrain",
    "train": {**TINY, "model": TINY_MIA},
    "pretrain": {
        "enc": {
            "base": "configs/pretrain/ma2mi.yaml",
            "model": TINY_MIA,
            "datasets": ["ckplus"],
            "holdout_fraction": 0.5,
            "batch_size": 4,
            "steps": 2,
            "log_every": 1,
        }
    },
    "learners": ["pre_lightman", "pre_maml"],
    "primary": "pre_lightman",
    "overrides": {
        "pre_lightman": ["learner.name=lightman", "model.init=pretrain:enc"],
        "pre_maml": ["learner.name=maml", "model.init=pretrain:enc"],
    },
    "contrast_metrics": ["acc"],
    "primary_contrast": "pre_lightman-pre_maml:acc",
    "claims": [],
    "paper": {},
    "quick": {"seeds": 1},
}


def test_a_pretrain_stage_runs_once_feeds_its_cells_and_is_kept(index, tmp_path):
    """In process (no Tune: the grid is the tests' above): the stage both arms name is one
    stage, run once by `lightman pretrain`'s code, kept, read back instead of rerun, and its
    encoder is what a cell's model.init loads."""
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(PRE_STUDY))
    study = reproduce.load_study(str(path))
    cells = reproduce.build_cells(study, "quick", index)
    (stage,) = reproduce.pretrain_stages(study, "quick", cells)  # shared by both arms
    assert {c.config["model"]["init"] for c in cells} == {f"pretrain:{stage.hash}"}
    out = str(tmp_path / "out")
    assert reproduce.kept_stages([stage], out, "h") == {}
    rows: dict = {}
    assert reproduce._run_stages([stage], rows, index, "h", out, print) == [stage.id]
    encoder = Path(rows[stage.id]["encoder"])
    mtime = encoder.stat().st_mtime_ns
    again = reproduce.kept_stages([stage], out, "h")  # a resumed study reads it back
    assert again == {stage.id: rows[stage.id]}
    assert reproduce._run_stages([stage], again, index, "h", out, print) == []
    assert encoder.stat().st_mtime_ns == mtime  # not rerun
    cell = next(c for c in cells if c.arm == "pre_maml")
    cfg = reproduce._with_index(cell.config, index, out)
    assert cfg.model.init == str(encoder)  # what the cell's training loads
    row = reproduce.run_cell(cell, index, "h", out)
    assert row["figures"]["acc"] >= 0
    with pytest.raises(kept.KeptRowError):  # another index's stage is refused
        reproduce.kept_stages([stage], out, "other")


TUNE_STUDY = {
    **STUDY,
    "name": "tiny-tuned",
    "tune": {"spaces": {"lightman": "tune_spaces/tiny.yaml"}, "trials": 1, "concurrent": 1},
    "grad_ratio": True,
    "contrast_metrics": ["acc"],
    "claims": [],
    "paper": {},
    "quick": {"seeds": 1},
}


def test_the_tune_stage_searches_validation_subjects_and_feeds_the_cells(
    ray_local, index, tmp_path
):
    """The search (`lightman tune`'s code, one trial) runs before the cells, on validation
    subjects only; its best values are the tuned arm's cells' config, every arm on the
    search's split; the report states each arm's searched dimensions and budget."""
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(TUNE_STUDY))
    study = reproduce.load_study(str(path))
    (stage,) = reproduce.tune_stages(study, "quick", index)
    out = str(tmp_path / "out")
    rows: dict = {}
    assert reproduce._run_stages([stage], rows, index, "h", out, print) == [stage.id]
    search = rows[stage.id]
    assert search["dimensions"] == ["learner.lambda_pri", "learner.inner_lr", "learner.aux_norm"]
    cells = reproduce.build_cells(study, "quick", index, tuned={"lightman": search["best_params"]})
    tuned = next(c for c in cells if c.arm == "lightman")
    for key, value in search["best_params"].items():  # the best config is the cell's
        got = tuned.config["learner"][key.split(".")[-1]]
        assert got == value or got == [value], (key, got, value)
    assert {c.config["data"]["split_seed"] for c in cells} == {0}  # the search's split
    row = reproduce.run_cell(tuned, index, "h", out, grad_ratios=True)
    tested = set(row["test_subjects"])
    assert search["val_subjects"] and not search["test_pool_seen"]
    assert not tested & set(search["val_subjects"]) and not tested & set(search["train_subjects"])
    assert set(row["grad_ratio"]) == {"init", "trained"}
    meta = {"stages": {stage.id: {"hash": stage.hash, **search}}, "seeds": [0]}
    text = str(reproduce._stage_sections(study, cells, {tuned.id: row}, meta))
    for needed in ("Tuning", "3: learner.lambda_pri", "not tuned", "Gradient ratio"):
        assert needed in text, needed
