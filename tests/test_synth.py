"""The seeded generator: determinism, the real releases' layouts and quirks, the motion
model (Eq. 1 of synth_face), amplitudes, timings, class shapes, face detectability."""

import csv
import hashlib
import json
import re
from pathlib import Path

import cv2
import decord
import numpy as np
import openpyxl
import pytest

from lightman.platform.config import ConfigError, load_config
from lightman.tasks.frames import sort_frame_files
from lightman.tasks.synth import (
    CLASS_COUNTS,
    MANIFEST,
    SynthConfig,
    allocate,
    plan_dataset,
    synthesize,
    tree_hash,
)
from lightman.tasks.synth_face import (
    AU_TABLE,
    PROTOTYPES,
    SIGMA_REF,
    Event,
    Motion,
    Nuisance,
    RenderSpec,
    draw_face,
    draw_identity,
    expression_field,
    landmarks,
    max_displacement,
    min_jacobian,
    neutral_face,
    render_clip,
    sample_grid,
    temporal_profile,
    unit_field,
)

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "casme2.subjects=3",
    "casme2.clips=8",
    "samm.subjects=2",
    "samm.clips=6",
    "smic.subjects=2",
    "smic.clips=4",
    "casme.subjects=2",
    "casme.clips=4",
    "casme_sq.subjects=2",
    "casme_sq.clips=3",
    "casme_sq.macro_clips=3",
    "ckplus.subjects=2",
    "ckplus.clips=6",
]
DEFAULT = SynthConfig()
SPEC = RenderSpec(112, 96, 64)


def files_of(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    cfg = load_config(SynthConfig, None, TINY)
    report = synthesize(out, cfg)
    return out, cfg, report, json.loads((out / MANIFEST).read_text())


@pytest.fixture(scope="module")
def plans():  # the default data set, planned (truth, rows, quirks) but not rendered
    return {
        d: plan_dataset(DEFAULT, d)
        for d in ("casme2", "samm", "smic", "casme", "casme_sq", "ckplus")
    }


def clips_of(manifest: dict, dataset: str) -> list[dict]:
    return [c for c in manifest["clips"] if c["dataset"] == dataset]


def frame(out: Path, clip: dict, n: int, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imread(str(out / clip["path"] / clip["frame_pattern"].format(n=n)), flags)
    assert img is not None, f"missing frame {n} of {clip['path']}"
    return img


def sheet_rows(path: Path, sheet: str | None = None) -> list[tuple]:
    wb = openpyxl.load_workbook(path)
    return list((wb[sheet] if sheet else wb.worksheets[0]).iter_rows(values_only=True))


# --- determinism and writing --------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    out, cfg, report, _ = tiny
    again = synthesize(tmp_path / "b", cfg)
    # every frame, sheet, csv, mp4 and the manifest
    assert files_of(out) == files_of(tmp_path / "b")
    assert again.content_hash == report.content_hash
    other_cfg = load_config(SynthConfig, None, TINY + ["seed=1", "datasets=[samm,casme_sq]"])
    other = dict(synthesize(tmp_path / "c", other_cfg).hashes)
    assert other["samm"] != dict(report.hashes)["samm"]
    assert other["casme_sq"] != dict(report.hashes)["casme_sq"]


def test_one_dataset_alone_is_the_same_as_within_all(tiny, tmp_path):
    out, _, report, _ = tiny
    alone = synthesize(tmp_path, load_config(SynthConfig, None, TINY + ["datasets=[smic]"]))
    assert dict(alone.hashes)["smic"] == dict(report.hashes)["smic"] == tree_hash(out / "SMIC")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SMIC", MANIFEST]


def test_rerun_replaces_whole_folders_and_leaves_no_temporaries(tmp_path):
    cfg = load_config(SynthConfig, None, TINY + ["datasets=[smic,ckplus]"])
    synthesize(tmp_path, cfg)
    (tmp_path / "SMIC" / "stale.txt").write_text("from an older run")
    report = synthesize(tmp_path, cfg)
    assert not (tmp_path / "SMIC" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CK+", "SMIC", MANIFEST]
    assert dict(report.hashes)["smic"] == tree_hash(tmp_path / "SMIC")


def test_manifest_holds_config_versions_counts_and_truth(tiny):
    _, cfg, report, m = tiny
    assert m["seed"] == cfg.seed and m["config"]["casme2"]["clips"] == 8
    assert m["versions"] == {"numpy": np.__version__, "opencv": cv2.__version__}
    assert dict(report.counts) == {d: v["clips"] for d, v in m["datasets"].items()}
    assert dict(report.counts) == {
        "casme2": 8,
        "samm": 6,
        "smic": 4,
        "casme": 4,
        "casme_sq": 6,
        "ckplus": 6,
        "video": 8,
    }
    for c in m["clips"]:
        assert c["onset"] <= c["apex"] <= c["offset"] and c["aus"]
        assert c["first_frame"] <= c["onset"] and c["offset"] <= c["last_frame"]
        assert c["prototype"] in PROTOTYPES


# --- layouts ------------------------------------------------------------------------------
def test_casme2_layout(tiny):
    out, _, _, m = tiny
    rows = sheet_rows(out / "CASME2" / "CASME2-coding-20140508.xlsx")
    assert rows[0] == (
        "Subject",
        "Filename",
        None,
        "OnsetFrame",
        "ApexFrame",
        "OffsetFrame",
        None,
        "Action Units",
        "Estimated Emotion",
    )
    assert all(r[2] is None and r[6] is None for r in rows)  # the two unnamed blank columns
    truth = {(c["subject"], c["clip"]): c for c in clips_of(m, "casme2")}
    assert len(rows) - 1 == len(truth) == 8
    for r in rows[1:]:
        assert isinstance(r[0], int)  # 1, not '01'
        c = truth[(f"sub{r[0]:02d}", r[1])]
        names = [p.name for p in (out / c["path"]).iterdir()]
        assert all(re.fullmatch(r"img[1-9]\d*\.jpg", n) for n in names)  # absolute, unpadded
        numbers = [int(n[3:-4]) for n in sort_frame_files(names)]
        assert numbers == list(range(c["first_frame"], c["last_frame"] + 1)) and numbers[0] > 1
        assert r[3] == c["onset"] and r[4] in (c["apex"], "/", None)
        assert frame(out, c, c["onset"]).shape == (112, 96, 3)
    assert any(r[4] in ("/", None) for r in rows[1:])  # missing apex
    late = [r for r in rows[1:] if r[5] > truth[(f"sub{r[0]:02d}", r[1])]["last_frame"]]
    assert len(late) == 1  # one offset past the frames on disk


def test_samm_layout(tiny):
    out, _, _, m = tiny
    rows = sheet_rows(out / "SAMM" / "SAMM_Micro_FACS_Codes_v2.xlsx")
    assert rows[0][0] and all(all(v is None for v in r[1:]) for r in rows[:12])  # 12 text rows
    assert rows[12] == (
        "Subject",
        "Filename",
        "Inducement Code",
        "Onset Frame",
        "Apex Frame",
        "Offset Frame",
        "Duration",
        "Micro",
        "Action Units",
        "Notes",
        "Estimated Emotion",
        "Objective Classes",
    )
    truth = {c["clip"]: c for c in clips_of(m, "samm")}
    for r in rows[13:]:
        c = truth[r[1]]
        assert re.fullmatch(r"\d{3}", r[0]) and re.fullmatch(rf"{r[0]}_{r[2]}_\d+", r[1])
        assert c["path"] == f"SAMM/{r[0]}/{r[1]}" and r[6] == c["offset"] - c["onset"] + 1
        assert (out / c["path"] / f"{r[0]}_{c['onset']:05d}.jpg").exists()
        assert frame(out, c, c["onset"]).ndim == 2  # greyscale
        assert r[4] in (c["apex"], -1, None)
    assert any(r[4] in (-1, None) for r in rows[13:])
    assert any(r[5] > truth[r[1]]["last_frame"] for r in rows[13:])


def test_smic_layout(tiny):
    out, _, _, m = tiny
    assert not list((out / "SMIC").rglob("*.xlsx"))  # no sheet, no apex
    for c in clips_of(m, "smic"):
        short = {"negative": "ne", "positive": "po", "surprise": "sur"}[c["emotion"]]
        assert re.fullmatch(rf"SMIC/HS/s(\d+)/micro/{c['emotion']}/s\1_{short}_\d\d", c["path"])
        names = sort_frame_files([p.name for p in (out / c["path"]).iterdir()])
        assert all(re.fullmatch(r"image\d{6}\.bmp", n) for n in names)
        first, last = int(names[0][5:-4]), int(names[-1][5:-4])
        assert (first, last) == (c["onset"], c["offset"])  # the folder is onset..offset
        assert frame(out, c, c["onset"]).shape == (112, 96, 3)


def test_casme_layout(tiny):
    out, _, _, m = tiny
    rows = sheet_rows(out / "CASME" / "CASME.xlsx")
    assert rows[0] == (
        "Subject",
        "Filename",
        None,
        "OnsetF",
        "ApexF1",
        "ApexF2",
        "OffsetF",
        None,
        "Action Units",
        "Emotion",
    )
    assert all(r[2] is None and r[7] is None for r in rows)
    truth = {(c["subject"], c["clip"]): c for c in clips_of(m, "casme")}
    early = late = 0
    for r in rows[1:]:
        c = truth[(f"sub{r[0]:02d}", r[1])]
        assert re.fullmatch(r"EP\d\d_\d", r[1]) and r[4] == c["apex"]
        assert (out / c["path"] / f"{r[1]}-1-{c['onset']}.jpg").exists()
        early += r[3] < c["first_frame"]
        late += r[6] > c["last_frame"]
    assert (early, late) == (1, 1)  # onset/offset disagreeing with the frames on disk


def test_casme_sq_layout(tiny):
    out, _, _, m = tiny
    path = out / "CASME_sq" / "CAS(ME)^2code_final.xlsx"
    assert openpyxl.load_workbook(path).sheetnames == [
        "CASFEcode_final",
        "naming rule1",
        "naming rule2",
    ]
    code = sheet_rows(path, "CASFEcode_final")
    rule1 = {r[2]: r for r in sheet_rows(path, "naming rule1")}  # 1 -> (15, 's15', 1)
    rule2 = {r[1]: r[0] for r in sheet_rows(path, "naming rule2")}  # 'disgust1' -> 101
    assert isinstance(code[0][0], int)  # no header row
    truth = {(c["subject"], c["clip"]): c for c in clips_of(m, "casme_sq")}
    kinds = set()
    for r in code:
        number, folder, _ = rule1[r[0]]
        prefix = f"{number}_{rule2[r[1].rsplit('_', 1)[0]]:04d}"
        rawpic = out / "CASME_sq" / "rawpic" / folder
        (video,) = [p for p in rawpic.iterdir() if p.name.startswith(prefix)]
        c = truth[(folder, r[1])]
        assert c["path"] == f"CASME_sq/rawpic/{folder}/{video.name}" and c["first_frame"] == 1
        assert all((video / f"img{c[k]}.jpg").exists() for k in ("onset", "apex", "offset"))
        assert r[4] in (c["offset"], 0) and r[6] in ("negative", "positive", "surprise", "others")
        assert r[7] == f"{c['expression']}-expression"
        kinds.add((folder, c["expression"]))
    assert any(r[4] == 0 for r in code)  # 0 = unknown offset
    assert {k for _, k in kinds} == {"micro", "macro"}


def test_ckplus_layout(tiny):
    out, _, _, m = tiny
    codes = ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
    for c in clips_of(m, "ckplus"):
        sid, seq = c["subject"], c["clip"]
        assert re.fullmatch(r"S\d{3}", sid) and re.fullmatch(r"\d{3}", seq)
        assert c["path"] == f"CK+/cohn-kanade-images/{sid}/{seq}"
        assert c["first_frame"] == c["onset"] == 1 and c["apex"] == c["offset"] == c["last_frame"]
        assert (out / c["path"] / f"{sid}_{seq}_00000001.png").exists()
        assert frame(out, c, 1).ndim == 2
        name = f"{sid}_{seq}_{c['last_frame']:08d}_emotion.txt"
        label = out / "CK+" / "Emotion" / sid / seq / name
        assert label.exists() == bool(c["emotion"])  # unlabelled sequences have no file
        if c["emotion"]:
            text = label.read_text()
            assert re.fullmatch(r" {3}[1-7]\.0000000e\+00\n", text)
            assert codes[int(float(text))] == c["emotion"]


def test_video_layout_decodes_with_decord(tiny):
    out, _, _, m = tiny
    with open(out / "video" / "annotations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["clip", "subject", "emotion", "onset", "apex", "offset", "fps"]
    truth = {f"clips/{c['subject']}_{c['clip']}.mp4": c for c in clips_of(m, "casme2")}
    assert len(rows) == len(truth) == 8
    for r in rows[:3]:
        c = truth[r["clip"]]
        assert (r["subject"], r["emotion"], float(r["fps"])) == (c["subject"], c["emotion"], 200)
        vr = decord.VideoReader(str(out / "video" / r["clip"]))
        assert len(vr) == c["last_frame"] - c["first_frame"] + 1 and vr[0].shape == (112, 96, 3)
        assert [int(r[k]) for k in ("onset", "apex", "offset")] == [
            c[k] - c["first_frame"] for k in ("onset", "apex", "offset")
        ]
        # the same frames as the CASME II JPEGs (both lossy: close, not equal)
        jpg = cv2.cvtColor(frame(out, c, c["apex"]), cv2.COLOR_BGR2RGB).astype(float)
        assert np.abs(vr[int(r["apex"])].asnumpy() - jpg).mean() < 6


# --- the face and motion model ---------------------------------------------------------
def test_unit_field_is_the_gaussian_window_of_eq1():
    ident = draw_identity(np.random.default_rng(0))
    ((name, (vx, vy), sigma),) = AU_TABLE[12]
    ax, ay = landmarks(ident)[f"{name}_R"]  # the subject's right = the image's left
    cx = SPEC.width / 2 + (ident.centre[0] + ax) * SPEC.face_width
    cy = SPEC.height / 2 + (ident.centre[1] + ay) * SPEC.face_width
    field, s = unit_field(ident, SPEC, "R12"), sigma * SPEC.face_width
    for y, x in [(int(cy), int(cx)), (int(cy) + 3, int(cx) - 2), (10, 10)]:
        w = (sigma / SIGMA_REF) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
        np.testing.assert_allclose(field[y, x], [-vx * w, vy * w], atol=1e-5)  # outward = -x
    assert np.abs(field[:, int(SPEC.width / 2 + 12) :]).max() < 1e-3  # the other side stays


def test_warp_moves_content_by_the_field():
    img = cv2.GaussianBlur(
        (np.random.default_rng(1).random((40, 50)) * 255).astype(np.float32), (0, 0), 2
    )
    field = np.zeros((40, 50, 2), np.float32)
    field[..., 0], field[..., 1] = 0.6, -0.3  # everything moves right 0.6 px and up 0.3 px
    px, py = sample_grid(field)
    moved = cv2.remap(img, px, py, cv2.INTER_LINEAR)
    shift = np.float32([[1, 0, 0.6], [0, 1, -0.3]])
    expected = cv2.warpAffine(img, shift, (50, 40), flags=cv2.INTER_LINEAR)
    np.testing.assert_allclose(moved[5:-5, 5:-5], expected[5:-5, 5:-5], atol=1e-3)


def test_temporal_profile_rises_and_falls_smoothly():
    n = np.arange(100, 141)
    p = temporal_profile(n, 105, 115, 135)
    up, down = np.clip((n - 105) / 10, 0, 1), np.clip((n - 115) / 20, 0, 1)
    expected = np.where(n <= 115, np.sin(np.pi / 2 * up) ** 2, np.cos(np.pi / 2 * down) ** 2)
    np.testing.assert_allclose(p, expected, atol=1e-12)
    assert p[15] == 1.0 and p[:6].max() == 0 and p[-6:].max() == 0
    assert temporal_profile(np.array([30]), 1, 20, 20)[0] == 1.0  # CK+: held at the peak


def test_subjects_differ_in_face_and_in_how_they_express():
    a, b = (draw_identity(np.random.default_rng(s)) for s in (0, 1))
    assert np.abs(neutral_face(a, SPEC) - neutral_face(b, SPEC)).mean() > 10
    assert any(a.style(e) != b.style(e) for e in PROTOTYPES if e != "others")
    for e in ("happiness", "surprise", "disgust", "fear", "anger"):
        assert {au for au, _ in a.style(e)} & set(PROTOTYPES[e])  # built on the prototype


def test_blink_closes_the_eyes_only():
    ident = draw_identity(np.random.default_rng(2))
    closed, open_ = draw_face(ident, SPEC, {"45": 1.0}), draw_face(ident, SPEC, {})
    ys, _ = np.nonzero(np.abs(closed.astype(int) - open_.astype(int)).sum(-1) > 20)
    eye_y = SPEC.height / 2 + (ident.centre[1] + ident.eye[0]) * SPEC.face_width
    assert len(ys) > 20 and np.abs(ys - eye_y).max() < 6


def test_micro_amplitude_is_1_to_2_px_and_macro_several_times_larger(plans):
    amps = {"micro": [], "macro": []}
    for plan in plans.values():
        for rec in plan.recordings:
            for c in rec.clips:
                field = expression_field(rec.identity, SPEC, dict(c.aus))  # measured
                assert max_displacement(field) == pytest.approx(c.amplitude, rel=1e-4)
                assert min_jacobian(field) >= DEFAULT.min_jacobian - 1e-6  # never folds
                amps[c.expression].append(c.amplitude)
    micro, macro = np.array(amps["micro"]), np.array(amps["macro"])
    assert micro.min() >= 1.0 - 1e-6 and micro.max() <= 2.0 + 1e-6
    assert np.median(macro) > 3 * np.median(micro) and macro.min() > 1.5 * micro.max()
    assert macro.max() <= 7.0 + 1e-6


def test_macro_frames_change_more_than_micro_frames():
    ident = draw_identity(np.random.default_rng(3))
    style = ident.style("surprise")
    peak = max_displacement(expression_field(ident, SPEC, dict(style)))
    diffs = {}
    for kind, amplitude in (("micro", 1.5), ("macro", 5.5)):
        acts = tuple((a, w * amplitude / peak) for a, w in style)
        motion = Motion(10, 21, 200.0, (Event(12, 20, 28, acts),), (), 0)
        frames = list(render_clip(ident, SPEC, motion, Nuisance(0, 0, 0, 0), False))
        apex, onset = frames[10].astype(float), frames[2].astype(float)
        diffs[kind] = np.abs(apex - onset).mean()
    assert diffs["micro"] > 0.05 and diffs["macro"] > 2.5 * diffs["micro"]


def test_written_apex_differs_from_onset_more_than_neutral_frames_do(tiny):
    out, _, _, m = tiny
    for c in clips_of(m, "casme2"):
        onset = frame(out, c, c["onset"]).astype(float)
        still = np.abs(frame(out, c, c["first_frame"]).astype(float) - onset).mean()
        moved = np.abs(frame(out, c, c["apex"]).astype(float) - onset).mean()
        if not c["blinks"]:
            assert moved > still, c["path"]


def test_same_aus_for_micro_and_macro_of_a_subject(plans):
    for rec in plans["casme_sq"].recordings:
        for c in rec.clips:
            if c.prototype != "others":
                assert {a for a, _ in c.aus} == {a for a, _ in rec.identity.style(c.prototype)}


def test_durations_and_padding(plans):
    for name, plan in plans.items():
        for rec in plan.recordings:
            fps, tol = rec.motion.fps, 0.5 / rec.motion.fps
            for c in rec.clips:
                dur = (c.offset - c.onset) / fps
                if name == "ckplus":
                    assert 10 <= rec.motion.count <= 30 and c.apex == c.offset == rec.motion.count
                    continue
                lo, hi = (0.04, 1 / 3) if c.expression == "micro" else (0.5, 4.0)
                assert lo - tol <= dur <= hi + tol and c.onset < c.apex < c.offset
                if name in ("casme2", "samm", "casme"):  # a few neutral frames either side
                    assert 3 <= c.onset - rec.motion.first <= 8 and 3 <= rec.last - c.offset <= 8
    assert any(rec.motion.blinks for rec in plans["casme2"].recordings)


def test_casme2_frame_names_break_string_sort(plans):
    broken = 0
    for rec in plans["casme2"].recordings:
        names = [rec.pattern.format(n=n) for n in range(rec.motion.first, rec.last + 1)]
        broken += sorted(names) != names
    assert broken > 0


def test_class_counts_keep_the_casme2_shape(plans):
    counts = {}
    for rec in plans["casme2"].recordings:
        counts[rec.clips[0].emotion] = counts.get(rec.clips[0].emotion, 0) + 1
    total = sum(CLASS_COUNTS["casme2"].values())
    for emotion, real in CLASS_COUNTS["casme2"].items():
        assert abs(counts.get(emotion, 0) - DEFAULT.casme2.clips * real / total) < 1
    assert (
        counts["others"]
        > counts["disgust"]
        > counts["happiness"]
        > counts["repression"]
        > counts["surprise"]
    )
    assert allocate(10, {"a": 1, "b": 1, "c": 2}) == {"a": 3, "b": 2, "c": 5}


def test_quirks_of_the_default_sheets(plans):
    samm = [rec.clips[0].row for rec in plans["samm"].recordings]
    assert {"Other", "Others", "others"} <= {r[10] for r in samm}
    assert any(" or " in str(r[8]) for r in samm)
    casme2 = [rec.clips[0].row for rec in plans["casme2"].recordings]
    assert 5 <= sum(r[4] in ("/", None) for r in casme2) <= 15
    labelled = [rec for rec in plans["ckplus"].recordings if rec.clips[0].emotion]
    assert 0.45 < len(labelled) / len(plans["ckplus"].recordings) < 0.65


def test_haar_cascade_finds_the_face_on_onset_frames(tiny):
    out, _, _, m = tiny
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = [
        len(
            cascade.detectMultiScale(
                frame(out, c, c["onset"], cv2.IMREAD_GRAYSCALE), 1.1, 3, minSize=(24, 24)
            )
        )
        > 0
        for c in m["clips"]
        if c["dataset"] != "video"
    ]
    assert np.mean(found) >= 0.8, f"face found on {np.mean(found):.0%} of {len(found)} onsets"


# --- config -------------------------------------------------------------------------------
def test_yaml_is_the_default_and_overrides_are_partial():
    path = REPO / "configs" / "synth" / "default.yaml"
    first = path.read_text().splitlines()[0]
    assert first == "# lightman synth --config configs/synth/default.yaml --out data/synth"
    assert load_config(SynthConfig, path) == DEFAULT
    cfg = load_config(SynthConfig, path, ["casme2.clips=20"])
    assert (cfg.casme2.clips, cfg.casme2.subjects, cfg.casme2.fps) == (20, 14, 200.0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("datasets=[casme3]", "unknown"),
        ("micro_amplitude_px=[2, 1]", "micro_amplitude_px"),
        ("samm.macro_clips=3", "only casme_sq"),
        ("casme2.subjects=200", "casme2.*cannot cover"),
        ("min_jacobian=1.5", "min_jacobian"),
        ("face_width=90", "fit the canvas"),
    ],
)
def test_bad_config_names_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SynthConfig, None, [override])
