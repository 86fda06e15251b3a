"""Label schemes: each dataset's native classes, the 5-class sets, the 3-class composite.

A scheme maps a (dataset, raw emotion) pair to a class index, or to None when the
clip is outside the scheme (e.g. CASME II "fear" under the 5-class set). Raw emotions
are compared case- and space-insensitively ("Others" == "others"), because the real
sheets are inconsistent; anything not listed is an *unknown* emotion and the clip is
skipped with that reason (never silently mapped).
"""

from __future__ import annotations

from dataclasses import dataclass

NATIVE: dict[str, tuple[str, ...]] = {
    "casme2": ("happiness", "surprise", "disgust", "repression", "others", "fear", "sadness"),
    "samm": ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise", "other"),
    "smic": ("negative", "positive", "surprise"),
    "casme": (
        "amusement",
        "sadness",
        "disgust",
        "surprise",
        "contempt",
        "fear",
        "repression",
        "tense",
    ),
    "casme_sq": ("negative", "positive", "surprise", "others"),
    "ckplus": ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"),
    "video": (),  # generic adapter: classes are whatever the CSV names (sorted)
}

# Spelling variants seen in the real sheets, folded onto the native name.
_SAMM_ALIASES = {"others": "other"}
_CASME2_ALIASES = {"other": "others"}

FIVE_CLASS: dict[str, dict[str, str]] = {
    # CASME II 5-class set (247 clips): happiness, surprise, disgust, repression, others
    "casme2": {e: e for e in ("happiness", "surprise", "disgust", "repression", "others")},
    # SAMM 5-class set used with CASME II: anger, contempt, happiness, surprise, other
    "samm": {e: e for e in ("anger", "contempt", "happiness", "surprise", "other")},
}

COMPOSITE3 = ("negative", "positive", "surprise")
_COMPOSITE_MAP: dict[str, dict[str, str]] = {
    "casme2": {
        "disgust": "negative",
        "repression": "negative",
        "happiness": "positive",
        "surprise": "surprise",
    },
    "samm": {
        "anger": "negative",
        "contempt": "negative",
        "disgust": "negative",
        "fear": "negative",
        "sadness": "negative",
        "happiness": "positive",
        "surprise": "surprise",
    },
    "smic": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
    "casme_sq": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
    "casme": {
        "disgust": "negative",
        "sadness": "negative",
        "contempt": "negative",
        "fear": "negative",
        "repression": "negative",
        "tense": "negative",
        "amusement": "positive",
        "surprise": "surprise",
    },
    "ckplus": {
        "anger": "negative",
        "contempt": "negative",
        "disgust": "negative",
        "fear": "negative",
        "sadness": "negative",
        "happy": "positive",
        "surprise": "surprise",
    },
}

SCHEMES = ("native", "five", "composite3")


class UnknownEmotion(ValueError):
    """The raw emotion is not a class of the dataset: the clip is skipped with this message."""


def normalise(dataset: str, emotion: str) -> str:
    """Canonical spelling of a raw emotion for a dataset; raises UnknownEmotion."""
    e = " ".join(str(emotion).strip().lower().split())
    if dataset == "samm":
        e = _SAMM_ALIASES.get(e, e)
    if dataset == "casme2":
        e = _CASME2_ALIASES.get(e, e)
    native = NATIVE.get(dataset)
    if native is None:
        raise UnknownEmotion(f"unknown dataset {dataset!r}; known: {sorted(NATIVE)}")
    if native and e not in native:
        raise UnknownEmotion(
            f"unknown emotion {emotion!r} for {dataset}; expected one of {list(native)}"
        )
    if not e:
        raise UnknownEmotion(f"empty emotion for {dataset}")
    return e


@dataclass(frozen=True)
class LabelScheme:
    """Class names and the mapping of (dataset, raw emotion) to a class index."""

    name: str
    class_names: tuple[str, ...]
    mapping: tuple[tuple[str, str, str], ...]  # (dataset, canonical emotion, class name)

    def label(self, dataset: str, emotion: str) -> int | None:
        """Class index, or None if the (valid) emotion is outside this scheme."""
        e = normalise(dataset, emotion)
        for d, em, cls in self.mapping:
            if d == dataset and em == e:
                return self.class_names.index(cls)
        return None

    def to_dict(self) -> dict:
        return {"name": self.name, "class_names": list(self.class_names)}


def build_scheme(
    name: str, datasets: tuple[str, ...] | list[str], extra_emotions: tuple[str, ...] = ()
) -> LabelScheme:
    """The scheme `name` over `datasets` (several datasets share a scheme when combined).

    `extra_emotions` are the classes of the generic `video` adapter (from its CSV).
    """
    datasets = tuple(sorted(set(datasets)))
    unknown = [d for d in datasets if d not in NATIVE]
    if unknown:
        raise ValueError(f"unknown dataset {unknown[0]!r}; choose one of {sorted(NATIVE)}")
    if name == "native":
        names: list[str] = []
        mapping = []
        for d in datasets:
            classes = (
                NATIVE[d]
                if d != "video"
                else tuple(sorted({normalise("video", e) for e in extra_emotions}))
            )
            for e in classes:
                if e not in names:
                    names.append(e)
                mapping.append((d, e, e))
        return LabelScheme("native", tuple(names), tuple(mapping))
    if name == "five":
        bad = [d for d in datasets if d not in FIVE_CLASS]
        if bad:
            raise ValueError(f"the 5-class scheme exists for {sorted(FIVE_CLASS)} only, not {bad}")
        names, mapping = [], []
        for d in datasets:
            for e, cls in FIVE_CLASS[d].items():
                if cls not in names:
                    names.append(cls)
                mapping.append((d, e, cls))
        return LabelScheme("five", tuple(names), tuple(mapping))
    if name == "composite3":
        bad = [d for d in datasets if d not in _COMPOSITE_MAP]
        if bad:
            raise ValueError(f"the composite 3-class scheme has no mapping for {bad}")
        mapping = [(d, e, cls) for d in datasets for e, cls in _COMPOSITE_MAP[d].items()]
        return LabelScheme("composite3", COMPOSITE3, tuple(mapping))
    raise ValueError(f"unknown label scheme {name!r}; choose one of {SCHEMES}")
