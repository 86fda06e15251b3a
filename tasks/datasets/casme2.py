"""CASME II adapter: 247+ micro-expression clips of 26 subjects, recorded at 200 fps.

Expected layout: `LAYOUT` below (first match wins, in the order listed), which a
folder in another layout fails with.

Sheet quirks handled: `Subject` is an integer (1 -> folder `sub01`); two unnamed blank
columns (3rd and 7th) are ignored because columns are located by header name; a
missing apex ('/', blank, 0) gives apex=None with a repair note (estimated later);
an offset beyond the clip's frames is kept as annotated (preprocessing clamps it).
Subjects are `casme2/subNN`; clip ids `casme2/subNN/EPxx_yy`.
"""

from __future__ import annotations

from functools import partial

from lightman.tasks.datasets.base import (
    CodingRelease,
    layout_block,
    numbered_folder,
    scan_coding_release,
)

DATASET = "casme2"
TITLE = "CASME II"
LAYOUT = layout_block("""
<root>/CASME2-coding-updated.xlsx, else <root>/CASME2-coding-*.xlsx (last in name order)
<root>/CASME2_RAW_selected/subNN/EPxx_yy/imgN.jpg,
  else CASME2_RAW/, else Cropped/ (reg_imgN.jpg), else <root>/subNN/
sheet columns (by name): Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame,
  Action Units, Estimated Emotion
""")
RELEASE = CodingRelease(
    DATASET,
    TITLE,
    LAYOUT,
    fps=200.0,
    sheets=(r"casme2-coding-updated\.xlsx", r"casme2-coding.*\.xlsx"),
    sheet_hint="CASME2-coding-*.xlsx",
    frame_dirs=(r"casme2_raw_selected", r"casme2_raw", r"cropped"),
    subject_dir=r"sub\d+",
    subject_folder=numbered_folder("sub", 2),
    spellings={
        "onset": ("OnsetFrame", "Onset"),
        "apex": ("ApexFrame", "Apex"),
        "offset": ("OffsetFrame", "Offset"),
        "emotion": ("Estimated Emotion", "Emotion"),
    },
)
scan = partial(scan_coding_release, RELEASE)  # (root, *, limit, subjects, expression)
