"""Dataset adapters on tiny hand-written releases (tests/fixtures_layouts.py), quirks included."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lightman.tasks import storage
from lightman.tasks.datasets import (
    ADAPTERS,
    LayoutError,
    casme,
    casme2,
    casme_sq,
    ckplus,
    samm,
    scan,
    smic,
    video,
)
from lightman.tasks.datasets.base import FrameError, RowError, layout_block, list_frames, parse_int
from lightman.tasks.frames import ClipFrames

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import fixtures_layouts as fx  # noqa: E402

C2_SHEET = "CASME2-coding-20140508.xlsx"
SQ_SHEET = "CAS(ME)^2code_final.xlsx sheet CASFEcode_final"


def names(rec) -> list[str]:
    return [u.rsplit("/", 1)[-1] for u in rec.frame_uris]


def by_id(result) -> dict:
    return {r.clip_id: r for r in result.records}


def reasons(result) -> dict[str, str]:
    return {s.clip: s.reason for s in result.skipped}


# ---------------------------------------------------------------- CASME II


def test_casme2_records(tmp_path):
    root = fx.casme2_release(tmp_path)
    result = scan("casme2", str(root))
    assert [r.clip_id for r in result.records] == [
        "casme2/sub01/EP02_01f",
        "casme2/sub01/EP03_02",
        "casme2/sub02/EP01_11f",
        "casme2/sub26/EP07_28",
    ]
    assert result.skipped == ()
    rec = result.records[0]
    assert (rec.dataset, rec.subject, rec.filename) == ("casme2", "casme2/sub01", "EP02_01f")
    assert (rec.expression, rec.emotion, rec.action_units) == ("micro", "disgust", "4+7")
    assert (rec.onset, rec.apex, rec.offset, rec.fps) == (8, 10, 12, 200.0)
    assert (rec.apex_source, rec.repairs, rec.video_uri) == ("annotated", (), "")
    assert names(rec) == ["img8.jpg", "img9.jpg", "img10.jpg", "img11.jpg", "img12.jpg"]
    assert rec.frame_numbers == (8, 9, 10, 11, 12)
    folder = root / "CASME2_RAW_selected" / "sub01" / "EP02_01f"
    assert rec.source_uri == str(folder) and rec.frame_uris[1] == str(folder / "img9.jpg")
    slash, zero = result.records[1], result.records[3]
    assert slash.apex is None and slash.apex_source == "missing"
    assert slash.repairs == (f"apex missing in {C2_SHEET} row 3 (ApexFrame '/'); estimated later",)
    assert zero.apex is None
    assert zero.repairs == (
        f"apex missing in {C2_SHEET} row 5 (ApexFrame 0 means unknown); estimated later",
    )
    assert result.records[2].emotion == "surprise"  # 'Surprise' in the sheet


def test_casme2_cropped_release_and_updated_sheet(tmp_path):
    """Cropped/ with reg_imgN.jpg; CASME2-coding-updated.xlsx wins over the dated sheet."""
    rows = [[1, "EP02_01f", None, 8, 10, 12, None, "4+7", "repression"]]
    fx.casme2_release(
        tmp_path,
        rows,
        {"sub01/EP02_01f": range(8, 13)},
        frames_dir="Cropped",
        sheet="CASME2-coding-updated.xlsx",
        pattern="reg_img{}.jpg",
    )
    fx.write_xlsx(tmp_path / C2_SHEET, {"Sheet1": [fx.CASME2_HEADER, *fx.CASME2_ROWS]})
    (rec,) = scan("casme2", str(tmp_path)).records
    assert rec.emotion == "repression"
    assert names(rec)[:3] == ["reg_img8.jpg", "reg_img9.jpg", "reg_img10.jpg"]
    assert rec.source_uri == str(tmp_path / "Cropped" / "sub01" / "EP02_01f")


def test_casme2_bad_rows_are_skipped_with_reasons(tmp_path):
    rows = [
        [1, "EP02_01f", None, 8, 10, 12, None, "4", "disgust"],  # row 2: fine
        [1, "EP09_09", None, 1, 2, 3, None, "4", "disgust"],  # row 3: no frame folder
        [1, "EP09_10", None, 1, 2, 3, None, "4", "disgust"],  # row 4: empty frame folder
        [2, "EP01_11f", None, 9, 8, 5, None, "4", "disgust"],  # row 5: onset after offset
        [2, "EP01_12", None, 5, 6, 9, None, "4", "contempt"],  # row 6: not a CASME II emotion
        ["abc", "EP01_13", None, 5, 6, 9, None, "4", "disgust"],  # row 7: corrupt subject
        [2, "EP01_14", None, "five", 6, 9, None, "4", "disgust"],  # row 8: onset not an integer
        [2, None, None, 5, 6, 9, None, "4", "disgust"],  # row 9: no filename
        [1, "EP02_01f", None, 8, 9, 12, None, "4", "disgust"],  # row 10: duplicate of row 2
    ]
    fx.casme2_release(tmp_path, rows, {"sub01/EP02_01f": range(8, 13)})
    empty = tmp_path / "CASME2_RAW_selected" / "sub01" / "EP09_10"
    empty.mkdir()
    (empty / "Thumbs.db").write_bytes(b"x")
    result = scan("casme2", str(tmp_path))
    assert [r.clip_id for r in result.records] == ["casme2/sub01/EP02_01f"]
    assert result.records[0].apex == 10  # the first of the duplicate rows is kept
    why = reasons(result)
    assert len(result.skipped) == len(why) == 8
    missing = tmp_path / "CASME2_RAW_selected" / "sub01" / "EP09_09"
    assert why["casme2/sub01/EP09_09"] == f"missing frame folder {missing}"
    assert why["casme2/sub01/EP09_10"].startswith(f"empty frame folder {empty} (no .jpg/")
    assert why["casme2/sub02/EP01_11f"] == f"{C2_SHEET} row 5: OnsetFrame 9 is after OffsetFrame 5"
    assert why["casme2/sub02/EP01_12"].startswith(
        f"{C2_SHEET} row 6: unknown emotion 'contempt' for casme2; expected one of ['happiness'"
    )
    assert why[f"{C2_SHEET} row 7"] == f"{C2_SHEET} row 7: Subject 'abc' is not a subject number"
    assert why["casme2/sub02/EP01_14"] == (
        f"{C2_SHEET} row 8: OnsetFrame 'five' is not an integer frame number"
    )
    assert why[f"{C2_SHEET} row 9"] == f"{C2_SHEET} row 9: Filename '' does not name a clip folder"
    assert why["casme2/sub01/EP02_01f"] == (
        f"duplicate clip id (first at {C2_SHEET} row 2, again at {C2_SHEET} row 10)"
    )


def test_corrupt_sheet_file_is_a_layout_error(tmp_path):
    fx.casme2_release(tmp_path)
    sheet = tmp_path / C2_SHEET
    sheet.write_bytes(sheet.read_bytes()[:300])  # a truncated zip
    with pytest.raises(LayoutError, match=rf"cannot read annotation sheet .*{C2_SHEET}: BadZip"):
        scan("casme2", str(tmp_path))


def test_wrong_layout_names_the_expected_layout(tmp_path):
    fx.samm_release(tmp_path / "samm")
    with pytest.raises(LayoutError) as err:
        scan("casme2", str(tmp_path / "samm"))
    msg = str(err.value)
    assert msg.startswith("expected CASME II layout:\n" + casme2.LAYOUT + "\n")
    assert "<root>/CASME2_RAW_selected/subNN/EPxx_yy/imgN.jpg" in msg
    assert "no CASME2-coding-*.xlsx sheet" in msg
    assert msg.endswith(f"found in {tmp_path / 'samm'}: [SAMM/, SAMM_Micro_FACS_Codes_v2.xlsx]")
    fx.write_xlsx(tmp_path / "c2" / C2_SHEET, {"Sheet1": [fx.CASME2_HEADER]})
    with pytest.raises(LayoutError, match="no frames folder"):
        scan("casme2", str(tmp_path / "c2"))
    fx.write_xlsx(tmp_path / "c3" / C2_SHEET, {"Sheet1": [["Subject", "Clip"], [1, "EP1"]]})
    (tmp_path / "c3" / "CASME2_RAW").mkdir()
    with pytest.raises(LayoutError, match="has no header row with the columns Subject, Filename, "):
        scan("casme2", str(tmp_path / "c3"))
    with pytest.raises(LayoutError, match="does not exist"):
        scan("casme2", str(tmp_path / "nowhere"))


@pytest.mark.parametrize("module", [casme2, samm, smic, casme, casme_sq, ckplus, video])
def test_every_adapter_rejects_a_foreign_folder_with_its_layout(tmp_path, module):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(LayoutError) as err:
        scan(module.DATASET, str(tmp_path))
    assert f"expected {module.TITLE} layout:\n{module.LAYOUT}\n" in str(err.value)
    assert str(err.value).endswith("[readme.txt]")
    assert "Expected layout: `LAYOUT` below" in module.__doc__  # one copy: the constant


# ---------------------------------------------------------------- SAMM


def test_samm_records(tmp_path):
    result = scan("samm", str(fx.samm_release(tmp_path)))
    assert result.skipped == ()
    recs = by_id(result)
    assert list(recs) == ["samm/006/006_1_2", "samm/006/006_1_5", "samm/007/007_3_1"]
    a = recs["samm/006/006_1_2"]  # the header is on row 13, the first clip on row 14
    assert (a.subject, a.onset, a.apex, a.offset, a.fps) == ("samm/006", 5562, 5564, 5566, 200.0)
    assert a.emotion == "other" and a.action_units == "R12 or R14"  # AU alternatives kept
    assert a.repairs == ("emotion 'Others' read as 'other' (SAMM_Micro_FACS_Codes_v2.xlsx row 14)",)
    assert names(a)[0] == "006_05562.jpg" and a.frame_numbers == (5562, 5563, 5564, 5565, 5566)
    b = recs["samm/006/006_1_5"]  # Subject given as the text '006'
    assert b.apex is None and b.repairs == (
        "apex missing in SAMM_Micro_FACS_Codes_v2.xlsx row 15 (Apex Frame '-'); estimated later",
    )
    c = recs["samm/007/007_3_1"]
    assert c.offset == 110  # as annotated, past the last frame: preprocessing clamps it
    assert c.frame_numbers == (98, 99, 100, 101, 102)


# ---------------------------------------------------------------- SMIC


def test_smic_records_from_folders(tmp_path):
    result = scan("smic", str(fx.smic_release(tmp_path)))
    assert result.skipped == ()
    recs = by_id(result)
    # non_micro/ is not read
    assert list(recs) == ["smic/s1/s1_ne_01", "smic/s1/s1_po_02", "smic/s2/s2_sur_01"]
    po = recs["smic/s1/s1_po_02"]
    assert (po.subject, po.emotion, po.fps) == ("smic/s1", "positive", 100.0)
    assert (po.onset, po.apex, po.offset, po.apex_source) == (98, None, 101, "missing")
    assert names(po) == ["image98.bmp", "image99.bmp", "image100.bmp", "image101.bmp"]
    assert po.repairs == ("SMIC has no apex annotation; estimated later",)
    ne = recs["smic/s1/s1_ne_01"]
    assert (ne.emotion, ne.onset, ne.offset) == ("negative", 559740, 559743)


def test_smic_sheet_and_unknown_emotion_folder(tmp_path):
    clips = {**fx.SMIC_CLIPS, "s2/micro/anger/s2_an_01": range(1, 3)}
    rows = [[1, "s1_ne_01", 559741, 559742], ["s2", "s2_sur_09", 1, 2], ["s1", "s1_po_02", 101, 99]]
    result = scan("smic", str(fx.smic_release(tmp_path, clips, rows)))
    recs, why = by_id(result), reasons(result)
    ne = recs["smic/s1/s1_ne_01"]
    assert (ne.onset, ne.offset) == (559741, 559742)  # from the sheet, not the folder
    assert ne.frame_numbers == (559740, 559741, 559742, 559743)
    sur = recs["smic/s2/s2_sur_01"]
    assert (sur.onset, sur.offset) == (10, 12)
    assert sur.repairs[-1] == (
        "no row in smic.xlsx: onset/offset = first/last frame in the folder (10, 12)"
    )
    assert why["smic/s1/s1_po_02"] == "smic.xlsx row 4: Onset 101 is after Offset 99"
    anger = tmp_path / "HS" / "s2" / "micro" / "anger"
    assert why["smic/s2/s2_an_01"].startswith("unknown emotion 'anger' for smic")
    assert why["smic/s2/s2_an_01"].endswith(f"(folder {anger})")
    assert why["smic.xlsx row 3"] == (
        f"smic.xlsx row 3: no clip folder {tmp_path / 'HS'}/s2/micro/*/s2_sur_09"
    )
    assert len(result.skipped) == 3


# ---------------------------------------------------------------- CASME


def test_casme_records(tmp_path):
    result = scan("casme", str(fx.casme_release(tmp_path)))
    fx.write_xlsx(tmp_path / C2_SHEET, {"Sheet1": [fx.CASME2_HEADER]})  # not taken for CASME's
    assert scan("casme", str(tmp_path)) == result
    assert result.skipped == ()
    recs = by_id(result)
    assert list(recs) == ["casme/sub01/EP01_5", "casme/sub01/EP01_7", "casme/sub03/EP05_2"]
    a = recs["casme/sub01/EP01_5"]
    assert (a.onset, a.apex, a.offset) == (9, 11, 13)  # ApexF1, not ApexF2
    assert (a.fps, a.emotion, a.action_units) == (60.0, "tense", "14")
    assert names(a) == ["img9.jpg", "img10.jpg", "img11.jpg", "img12.jpg", "img13.jpg"]
    b = recs["casme/sub01/EP01_7"]
    assert b.apex is None and b.repairs == (
        "apex missing in casme.xlsx row 3 (ApexF1 ''); estimated later",
    )


# ---------------------------------------------------------------- CAS(ME)^2


def test_casme_sq_records(tmp_path):
    root = fx.casme_sq_release(tmp_path)
    result = scan("casme_sq", str(root))
    assert result.skipped == ()
    recs = by_id(result)
    assert list(recs) == [
        "casme_sq/s15/disgust1_1",
        "casme_sq/s15/disgust1_2",
        "casme_sq/s16/anger1_1",
    ]
    micro = recs["casme_sq/s15/disgust1_1"]
    assert (micro.subject, micro.expression, micro.emotion) == ("casme_sq/s15", "micro", "negative")
    assert (micro.onset, micro.apex, micro.offset, micro.fps) == (5, 7, 9, 30.0)
    assert micro.action_units == "4+7; fine emotion: disgust"
    assert micro.frame_numbers == (5, 6, 7, 8, 9)  # only onset..offset of the 30-frame video
    assert micro.source_uri == str(root / "rawpic" / "s15" / "15_0101disgustingteeth")
    macro = recs["casme_sq/s15/disgust1_2"]
    assert (macro.expression, macro.emotion, macro.apex) == ("macro", "positive", None)
    assert macro.repairs == (
        f"apex missing in {SQ_SHEET} row 2 (apex 0 means unknown); estimated later",
    )
    anger = recs["casme_sq/s16/anger1_1"]
    assert (anger.expression, anger.onset, anger.apex, anger.offset) == ("macro", 3, 4, 4)
    assert anger.repairs == (f"offset unknown (0) in {SQ_SHEET} row 3; set to the apex 4",)
    assert names(anger) == ["img3.jpg", "img4.jpg"]


def test_casme_sq_bad_rows(tmp_path):
    code = [
        *fx.CASME_SQ_CODE,
        [3, "anger1_2", 3, 4, 6, "4", "negative", "macro-expression", "anger"],  # not in rule1
        [1, "happy9_1", 3, 4, 6, "12", "positive", "micro-expression", "happy"],  # not in rule2
        [2, "anger1_3", 3, 4, 6, "4", "negative", "blink", "anger"],  # unknown type
        [2, "anger1_4", 0, 4, 6, "4", "negative", "micro-expression", "anger"],  # onset unknown
        [2, "anger1_5", 40, 42, 45, "4", "negative", "micro-expression", "anger"],  # past video
        [2, "anger1_6", 2, 3, 4, "4", "sad", "micro-expression", "anger"],  # unknown category
    ]
    result = scan("casme_sq", str(fx.casme_sq_release(tmp_path, code)))
    assert len(result.records) == 3
    why = reasons(result)
    assert len(result.skipped) == len(why) == 6
    assert why[f"{SQ_SHEET} row 4"] == (
        f"{SQ_SHEET} row 4: participant 3 is not in sheet 'naming rule1'"
    )
    assert why["casme_sq/s15/happy9_1"] == (
        f"{SQ_SHEET} row 5: video 'happy9' of clip 'happy9_1' is not in sheet 'naming rule2'"
    )
    assert why[f"{SQ_SHEET} row 6"] == (
        f"{SQ_SHEET} row 6: type 'blink' is neither macro-expression nor micro-expression"
    )
    assert why["casme_sq/s16/anger1_4"] == f"{SQ_SHEET} row 7: onset unknown (0)"
    video_dir = tmp_path / "rawpic" / "s16" / "16_0401eatingworms"
    assert why["casme_sq/s16/anger1_5"] == (
        f"no frames between onset 40 and offset 45 in {video_dir} (it holds frames 1..8)"
    )
    assert why["casme_sq/s16/anger1_6"].startswith(
        f"{SQ_SHEET} row 9: unknown emotion 'sad' for casme_sq"
    )


def test_casme_sq_lists_each_folder_once(tmp_path, monkeypatch):
    code = [
        [
            1,
            f"disgust1_{k}",
            2 * k,
            2 * k + 1,
            2 * k + 2,
            "4",
            "negative",
            "micro-expression",
            "disgust",
        ]
        for k in range(1, 8)
    ]  # 7 clips from one video folder
    root = fx.casme_sq_release(tmp_path, code)
    listed: Counter[str] = Counter()
    real_list_dir = storage.list_dir

    def counting_list_dir(loc):
        listed[loc.path] += 1
        return real_list_dir(loc)

    monkeypatch.setattr(storage, "list_dir", counting_list_dir)
    assert len(scan("casme_sq", str(root)).records) == 7
    assert listed[str(root / "rawpic" / "s15" / "15_0101disgustingteeth")] == 1
    assert max(listed.values()) == 1


def test_casme_sq_without_naming_sheets_is_a_layout_error(tmp_path):
    fx.write_xlsx(tmp_path / "CAS(ME)^2code_final.xlsx", {"CASFEcode_final": fx.CASME_SQ_CODE})
    (tmp_path / "rawpic").mkdir()
    with pytest.raises(LayoutError, match=r"has sheets \['CASFEcode_final'\], not CASFEcode_final"):
        scan("casme_sq", str(tmp_path))


# ---------------------------------------------------------------- CK+


def test_ckplus_records(tmp_path):
    sequences = {**fx.CKPLUS_SEQUENCES, "S011/001": (2, 9.0)}
    root = fx.ckplus_release(tmp_path, sequences)
    result = scan("ckplus", str(root))
    recs, why = by_id(result), reasons(result)
    assert list(recs) == ["ckplus/S005/001", "ckplus/S010/001"]
    a = recs["ckplus/S005/001"]
    assert (a.subject, a.expression, a.emotion, a.fps) == ("ckplus/S005", "macro", "disgust", 30.0)
    assert (a.onset, a.apex, a.offset, a.apex_source) == (1, 4, 4, "sequence_peak")
    assert names(a)[0] == "S005_001_00000001.png" and a.frame_numbers == (1, 2, 3, 4)
    assert recs["ckplus/S010/001"].emotion == "happy"
    assert why["ckplus/S005/002"] == (
        f"no emotion label file for {root / 'cohn-kanade-images' / 'S005' / '002'}"
    )
    label = root / "Emotion" / "S011" / "001" / "S011_001_00000002_emotion.txt"
    assert why["ckplus/S011/001"] == f"emotion file {label}: code 9.0 is not one of 0..7"


# ---------------------------------------------------------------- generic video


def test_video_records_and_broken_files(tmp_path):
    rows = [
        *fx.VIDEO_ROWS,
        ["broken/garbage.mp4", "p3", "sad", 0, 1, 2, None, None],
        ["broken/truncated.mp4", "p3", "sad", 0, 1, 2, None, None],
        ["missing.mp4", "p3", "sad", 0, 1, 2, None, None],
        ["videos/p1_a.mp4", "p4", "", 0, 1, 2, None, None],
    ]  # empty emotion
    root = fx.video_release(tmp_path, rows)
    garbage = fx.garbage_mp4(root / "broken" / "garbage.mp4")
    truncated = fx.truncated_mp4(root / "broken" / "truncated.mp4", root / "videos" / "p2_b.mp4")
    result = scan("video", str(root))
    recs, why = by_id(result), reasons(result)
    assert list(recs) == ["video/p1/p1_a", "video/p2/p2_b"]
    a = recs["video/p1/p1_a"]
    assert (a.subject, a.expression, a.emotion) == ("video/p1", "micro", "happy")
    assert (a.onset, a.apex, a.offset) == (2, 5, 9)
    assert a.fps == pytest.approx(25.0)  # from the container
    assert a.frame_numbers == tuple(range(12)) and a.frame_uris == ()
    assert a.video_uri == a.source_uri == str(root / "videos" / "p1_a.mp4")
    b = recs["video/p2/p2_b"]
    assert (b.expression, b.fps, b.apex) == ("macro", 200.0, None)
    assert b.frame_numbers == tuple(range(14))
    assert b.repairs == (
        "apex missing in labels.csv line 3 (apex -1 means unknown); estimated later",
    )
    assert why["video/p3/garbage"].startswith(f"{garbage}: not a decodable video")
    assert why["video/p3/truncated"].startswith(f"{truncated}: not a decodable video")
    assert why["video/p3/missing"] == f"cannot read {root / 'missing.mp4'}: no such file"
    assert why["video/p4/p1_a"] == "labels.csv line 7: empty emotion for video"


def test_video_adapter_on_the_real_carphone_video(tmp_path):
    root = fx.carphone_release(tmp_path)
    (rec,) = scan("video", str(root)).records
    assert (rec.clip_id, rec.onset, rec.apex, rec.offset) == ("video/foreman/carphone", 10, 40, 80)
    assert (rec.emotion, rec.expression) == ("neutral", "micro")
    assert rec.fps == pytest.approx(30000 / 1001)
    assert rec.frame_numbers == tuple(range(120))
    frames = ClipFrames(rec).read([10, 40, 80])  # readable by preprocessing's reader
    assert frames.shape == (3, 144, 176, 3) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[2])

    # through preprocessing: decord decodes, the Haar cascade finds the real face on the onset frame
    from lightman.tasks.preprocess import PreprocessConfig, preprocess_clip

    pre, _ = preprocess_clip(rec, PreprocessConfig())
    assert pre.frames.shape == (8, 64, 64, 3) and pre.apex == 40 and pre.apex_source == "annotated"
    x, y, w, h = pre.face_box
    assert 40 <= w <= 144 and 0 <= x and x + w <= 176 and 0 <= y and y + h <= 144
    assert not any("face not found" in r for r in pre.repairs), pre.repairs


def test_video_csv_errors(tmp_path):
    fx.write_csv(tmp_path / "clips.csv", ["clip", "subject", "label"], [["a.mp4", "p1", "happy"]])
    with pytest.raises(LayoutError, match="clips.csv has no header line with the columns clip, "):
        scan("video", str(tmp_path))
    fx.write_csv(tmp_path / "more.csv", ["clip"], [])
    with pytest.raises(LayoutError, match="2 CSV files and none named labels.csv"):
        scan("video", str(tmp_path))
    rows = [
        ["../a.mp4", "p1", "happy", 0, 1, 2, None, None],
        ["a.mp4", "p/1", "happy", 0, 1, 2, None, None],
        ["a.mp4", "p1", "happy", 0, 1, 2, None, "nano"],
    ]
    result = scan("video", str(fx.video_release(tmp_path / "v", rows)))
    assert result.records == ()
    assert [s.reason for s in result.skipped] == [
        "labels.csv line 2: clip '../a.mp4' is not a file path relative to the root",
        "labels.csv line 3: subject 'p/1' must be non-empty and contain no '/'",
        "labels.csv line 4: expression 'nano' is not one of ('micro', 'macro')",
    ]


# ---------------------------------------------------------------- filters and registry


def test_filters_subjects_expression_limit(tmp_path):
    c2 = str(fx.casme2_release(tmp_path / "c2"))
    ids = ["casme2/sub01/EP02_01f", "casme2/sub01/EP03_02", "casme2/sub26/EP07_28"]

    def clip_ids(**filters) -> list[str]:
        return [r.clip_id for r in scan("casme2", c2, **filters).records]

    assert clip_ids(subjects=["sub01", "casme2/sub26"]) == ids
    assert clip_ids(subjects=["sub01", "samm/006"]) == ids[:2]  # other datasets' ids ignored
    assert clip_ids(limit=2) == ids[:2]
    assert scan("casme2", c2, expression="macro").records == ()
    with pytest.raises(ValueError, match=r"unknown subjects \['casme2/sub1'\]; this release has"):
        scan("casme2", c2, subjects=["sub1"])
    with pytest.raises(ValueError, match="expression filter must be one of"):
        scan("casme2", c2, expression="nano")
    with pytest.raises(ValueError, match="limit must be a positive number"):
        scan("casme2", c2, limit=0)
    sq = str(fx.casme_sq_release(tmp_path / "sq"))
    assert [r.clip_id for r in scan("casme_sq", sq, expression="macro").records] == [
        "casme_sq/s15/disgust1_2",
        "casme_sq/s16/anger1_1",
    ]
    assert [r.clip_id for r in scan("casme_sq", sq, expression="micro").records] == [
        "casme_sq/s15/disgust1_1"
    ]


def test_limit_counts_usable_clips_and_reports_skips_on_the_way(tmp_path):
    frames = dict(fx.CASME2_FRAMES)
    del frames["sub01/EP02_01f"]  # the first clip in id order has no folder
    result = scan("casme2", str(fx.casme2_release(tmp_path, frames=frames)), limit=1)
    assert [r.clip_id for r in result.records] == ["casme2/sub01/EP03_02"]
    assert [s.clip for s in result.skipped] == ["casme2/sub01/EP02_01f"]


def test_registry():
    assert sorted(ADAPTERS) == ["casme", "casme2", "casme_sq", "ckplus", "samm", "smic", "video"]
    with pytest.raises(ValueError, match="unknown dataset 'mmew'"):
        scan("mmew", "/tmp")


# ---------------------------------------------------------------- helpers


def test_list_frames_order_and_errors(tmp_path):
    fx.write_frames(tmp_path / "a", [10, 9, 100, 1])
    uris, numbers = list_frames(storage.resolve(str(tmp_path / "a")))
    assert numbers == (1, 9, 10, 100)
    assert [u.rsplit("/", 1)[-1] for u in uris] == [
        "img1.jpg",
        "img9.jpg",
        "img10.jpg",
        "img100.jpg",
    ]
    fx.write_frames(tmp_path / "b", [46])
    fx.write_frames(tmp_path / "b", [46], "reg_img{}.jpg")
    with pytest.raises(FrameError, match="frame number 46 appears twice in .*: img46.jpg, reg_img"):
        list_frames(storage.resolve(str(tmp_path / "b")))
    fx.write_frames(tmp_path / "c", [1], "face.png")
    with pytest.raises(FrameError, match="face.png has no frame number"):
        list_frames(storage.resolve(str(tmp_path / "c")))


def test_parse_int_cells():
    cells = (46, 46.0, " 46 ", "46.0", "-1")
    assert [parse_int(v, "OnsetFrame", "s row 2") for v in cells] == [46, 46, 46, 46, -1]
    for bad in ("/", "", None, 46.5, True, "4 6"):
        with pytest.raises(RowError, match="s row 2: OnsetFrame .* is not an integer frame number"):
            parse_int(bad, "OnsetFrame", "s row 2")


def test_layout_block_indents_every_line():
    assert layout_block("\n<root>/a.xlsx\n  indented\n") == "  <root>/a.xlsx\n    indented"


# ---------------------------------------------------------------- s3


@pytest.mark.integration
def test_casme2_from_s3(tmp_path, s3_endpoint):
    import boto3

    endpoint, bucket = s3_endpoint
    root = fx.casme2_release(tmp_path / "casme2")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for path in root.rglob("*"):
        if path.is_file():
            key = f"adapters/casme2/{path.relative_to(root).as_posix()}"
            s3.upload_file(str(path), bucket, key)
    prefix = f"s3://{bucket}/adapters/casme2"
    remote, local = scan("casme2", prefix), scan("casme2", str(root))
    assert [r.clip_id for r in remote.records] == [r.clip_id for r in local.records]
    for r, lo in zip(remote.records, local.records, strict=True):
        assert r.frame_uris == tuple(u.replace(str(root), prefix) for u in lo.frame_uris)
        assert r.source_uri == lo.source_uri.replace(str(root), prefix)
        assert (r.onset, r.apex, r.offset, r.frame_numbers, r.repairs) == (
            lo.onset,
            lo.apex,
            lo.offset,
            lo.frame_numbers,
            lo.repairs,
        )
