"""CASME adapter: 195 micro-expression clips of 19 subjects, 60 fps (lit.).

Expected layout: `LAYOUT` below (first match wins, in the order listed), which a
folder in another layout fails with.

Sheet quirks handled: blank columns (3rd and 8th) are ignored because columns are
located by header name; `Subject` may be an integer (1 -> folder `sub01`); `ApexF1`
is the apex (`ApexF2`, a second apex some rows carry, is not used); onset/offset
values that disagree with the frames on disk are left to preprocessing, which
clamps and records them. Subjects are `casme/subNN`; clip ids `casme/subNN/EPxx_y`.
"""

from __future__ import annotations

from functools import partial

from lightman.tasks.datasets.base import (
    CodingRelease,
    layout_block,
    numbered_folder,
    scan_coding_release,
)

DATASET = "casme"
TITLE = "CASME"
LAYOUT = layout_block("""
<root>/CASME*.xlsx, not CASME2/CASMEII (e.g. casme.xlsx, CASME_A_Section.xlsx;
  last in name order)
<root>/CASME_raw_selected/subNN/EPxx_y/<frames numbered in their names>,
  else Cropped/, else <root>/subNN/
sheet columns (by name): Subject, Filename, OnsetF, ApexF1, ApexF2, OffsetF,
  Action Units, Emotion
""")
RELEASE = CodingRelease(
    DATASET,
    TITLE,
    LAYOUT,
    fps=60.0,
    # 'casme' followed by nothing or a separator: excludes CASME2-*, CASMEII-*, CASME3-*.
    sheets=(r"casme([^0-9a-z].*)?\.xlsx",),
    sheet_hint="CASME*.xlsx",
    frame_dirs=(r"casme_raw_selected", r"cropped"),
    subject_dir=r"sub\d+",
    subject_folder=numbered_folder("sub", 2),
    spellings={
        "onset": ("OnsetF", "OnsetFrame"),
        "apex": ("ApexF1", "ApexFrame"),
        "offset": ("OffsetF", "OffsetFrame"),
        "emotion": ("Emotion", "Estimated Emotion"),
    },
)
scan = partial(scan_coding_release, RELEASE)  # (root, *, limit, subjects, expression)
