"""SAMM adapter: 159 micro-movement clips of 32 participants, greyscale, 200 fps (lit.).

Expected layout: `LAYOUT` below (first match wins, in the order listed), which a
folder in another layout fails with.

Sheet quirks handled: the header row is found by its 'Subject' and 'Filename' cells,
not by position; `Subject` may be an integer (6 -> folder `006`); 'Others' and 'others'
are the same class (`other`, recorded as a repair); rows without apex get apex=None
and a repair note; AU cells with "or" alternatives are kept verbatim. Every row of
this sheet is a micro-expression (the `Micro` column is not interpreted). Subjects
are `samm/NNN`; clip ids `samm/NNN/NNN_I_K`.
"""

from __future__ import annotations

from functools import partial

from lightman.tasks.datasets.base import (
    CodingRelease,
    layout_block,
    numbered_folder,
    scan_coding_release,
)

DATASET = "samm"
TITLE = "SAMM"
LAYOUT = layout_block("""
<root>/SAMM_Micro_FACS_Codes*.xlsx (last in name order, so _v2 beats the original)
<root>/SAMM/NNN/NNN_I_K/NNN_FFFFF.jpg, else <root>/NNN/NNN_I_K/NNN_FFFFF.jpg
sheet: ~12 text rows, then the header row: Subject, Filename, Inducement Code,
  Onset Frame, Apex Frame, Offset Frame, Duration, Micro, Action Units, Notes,
  Estimated Emotion, Objective Classes
""")
RELEASE = CodingRelease(
    DATASET,
    TITLE,
    LAYOUT,
    fps=200.0,
    sheets=(r"samm_micro_facs_codes.*\.xlsx",),
    sheet_hint="SAMM_Micro_FACS_Codes*.xlsx",
    frame_dirs=(r"samm",),
    subject_dir=r"\d+",
    subject_folder=numbered_folder("", 3),
    spellings={
        "onset": ("Onset Frame", "Onset"),
        "apex": ("Apex Frame", "Apex"),
        "offset": ("Offset Frame", "Offset"),
        "emotion": ("Estimated Emotion", "Emotion"),
    },
)
scan = partial(scan_coding_release, RELEASE)  # (root, *, limit, subjects, expression)
