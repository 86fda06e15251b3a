"""CASME adapter: 195 micro-expression clips of 19 subjects, 60 fps (lit.).

Expected layout (first match wins, in the order listed):
<root>/CASME*.xlsx, not CASME2/CASMEII (e.g. casme.xlsx, CASME_A_Section.xlsx;
  last in name order)
<root>/CASME_raw_selected/subNN/EPxx_y/<frames numbered in their names>,
  else Cropped/, else <root>/subNN/
sheet columns (by name): Subject, Filename, OnsetF, ApexF1, ApexF2, OffsetF,
  Action Units, Emotion

Sheet quirks handled: blank columns (3rd and 8th) are ignored because columns are
located by header name; `Subject` may be an integer (1 -> folder `sub01`); `ApexF1`
is the apex (`ApexF2`, a second apex some rows carry, is not used); onset/offset
values that disagree with the frames on disk are left to preprocessing, which
clamps and records them. Subjects are `casme/subNN`; clip ids `casme/subNN/EPxx_y`.
"""

from __future__ import annotations

from lightman.tasks.datasets.base import (
    CodingRelease,
    ScanResult,
    layout_block,
    numbered_folder,
    scan_coding_release,
)
from lightman.tasks.storage import Location

DATASET = "casme"
TITLE = "CASME"
LAYOUT = layout_block(  # first match wins, in the order listed (the docstring repeats it)
    "<root>/CASME*.xlsx, not CASME2/CASMEII (e.g. casme.xlsx, CASME_A_Section.xlsx;",
    "  last in name order)",
    "<root>/CASME_raw_selected/subNN/EPxx_y/<frames numbered in their names>,",
    "  else Cropped/, else <root>/subNN/",
    "sheet columns (by name): Subject, Filename, OnsetF, ApexF1, ApexF2, OffsetF,",
    "  Action Units, Emotion",
)
FPS = 60.0
# 'casme' followed by nothing or a separator: excludes CASME2-*, CASMEII-*, CASME3-*.
SHEETS = (r"casme([^0-9a-z].*)?\.xlsx",)
FRAME_DIRS = (r"casme_raw_selected", r"cropped")
REQUIRED = {
    "subject": ("Subject",),
    "filename": ("Filename",),
    "onset": ("OnsetF", "OnsetFrame"),
    "apex": ("ApexF1", "ApexFrame"),
    "offset": ("OffsetF", "OffsetFrame"),
    "emotion": ("Emotion", "Estimated Emotion"),
}
OPTIONAL = {"action_units": ("Action Units", "AUs")}


RELEASE = CodingRelease(
    dataset=DATASET,
    title=TITLE,
    layout=LAYOUT,
    fps=FPS,
    sheets=SHEETS,
    sheet_hint="CASME*.xlsx",
    frame_dirs=FRAME_DIRS,
    subject_dir=r"sub\d+",
    subject_folder=numbered_folder("sub", 2),
    required=REQUIRED,
    optional=OPTIONAL,
)


def scan(
    root: Location, *, limit: int | None = None, subjects=None, expression: str | None = None
) -> ScanResult:
    """All CASME clips under `root` (see the module docstring for the layout)."""
    return scan_coding_release(RELEASE, root, limit=limit, subjects=subjects, expression=expression)
