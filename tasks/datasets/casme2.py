"""CASME II adapter: 247+ micro-expression clips of 26 subjects, recorded at 200 fps.

Expected layout (first match wins, in the order listed):
<root>/CASME2-coding-updated.xlsx, else <root>/CASME2-coding-*.xlsx (last in name order)
<root>/CASME2_RAW_selected/subNN/EPxx_yy/imgN.jpg,
  else CASME2_RAW/, else Cropped/ (reg_imgN.jpg), else <root>/subNN/
sheet columns (by name): Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame,
  Action Units, Estimated Emotion

Sheet quirks handled: `Subject` is an integer (1 -> folder `sub01`); two unnamed blank
columns (3rd and 7th) are ignored because columns are located by header name; a
missing apex ('/', blank, 0) gives apex=None with a repair note (estimated later);
an offset beyond the clip's frames is kept as annotated (preprocessing clamps it).
Subjects are `casme2/subNN`; clip ids `casme2/subNN/EPxx_yy`.
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

DATASET = "casme2"
TITLE = "CASME II"
LAYOUT = layout_block(  # first match wins, in the order listed (the docstring repeats it)
    "<root>/CASME2-coding-updated.xlsx, else <root>/CASME2-coding-*.xlsx (last in name order)",
    "<root>/CASME2_RAW_selected/subNN/EPxx_yy/imgN.jpg,",
    "  else CASME2_RAW/, else Cropped/ (reg_imgN.jpg), else <root>/subNN/",
    "sheet columns (by name): Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame,",
    "  Action Units, Estimated Emotion",
)
FPS = 200.0
SHEETS = (r"casme2-coding-updated\.xlsx", r"casme2-coding.*\.xlsx")
FRAME_DIRS = (r"casme2_raw_selected", r"casme2_raw", r"cropped")
REQUIRED = {
    "subject": ("Subject",),
    "filename": ("Filename",),
    "onset": ("OnsetFrame", "Onset"),
    "apex": ("ApexFrame", "Apex"),
    "offset": ("OffsetFrame", "Offset"),
    "emotion": ("Estimated Emotion", "Emotion"),
}
OPTIONAL = {"action_units": ("Action Units", "AUs")}


RELEASE = CodingRelease(
    dataset=DATASET,
    title=TITLE,
    layout=LAYOUT,
    fps=FPS,
    sheets=SHEETS,
    sheet_hint="CASME2-coding-*.xlsx",
    frame_dirs=FRAME_DIRS,
    subject_dir=r"sub\d+",
    subject_folder=numbered_folder("sub", 2),
    required=REQUIRED,
    optional=OPTIONAL,
)


def scan(
    root: Location, *, limit: int | None = None, subjects=None, expression: str | None = None
) -> ScanResult:
    """All CASME II clips under `root` (see the module docstring for the layout)."""
    return scan_coding_release(RELEASE, root, limit=limit, subjects=subjects, expression=expression)
