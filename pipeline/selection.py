"""Which eyes of an annotation table are converted.

Modes (``--selection``):

``normal`` (default)
    the eye's *own* keywords are exactly ``normal fundus`` (the other eye may be
    diseased). On odir5k-dev/full_df.csv: 2,125 eyes, 1,157 male / 968 female, 1,362
    patients.
``normal_or_quality``
    also eyes whose keywords are ``normal fundus`` plus only image-quality notes
    (:data:`QUALITY_KEYWORDS`), e.g. ``lens dust，normal fundus``.
``all``
    every eye (diseased ones too: the sex label holds for every eye), for training on
    more eyes; evaluation still uses only the ``normal`` ones.

The ``normal`` column of the kept table means *eligible for evaluation*: under
``normal`` and ``normal_or_quality`` every kept eye is eligible (that is what the mode
selects); under ``all`` it is True only for eyes whose keywords are exactly ``normal
fundus``. The reader's ``normal_only`` filter uses it.

Skips are bad inputs, counted and listed with a reason (never silent): among the eyes a
mode would keep, a sex other than male/female or an empty file name. Eyes a mode does
not select (diseased eyes under ``normal``) are *not* skips; their number is
``kept.attrs["unselected"]`` and they are available with ``return_unselected=True``.
"""
from __future__ import annotations

import re

import pandas as pd

MODES = ("normal", "normal_or_quality", "all")
NORMAL = "normal fundus"

#: ODIR-5K keywords that describe the photograph, not the eye. Taken from the keywords
#: of odir5k-dev + odir5k-extra (``lens dust`` 207 eyes, ``low image quality`` 19,
#: ``optic disk photographically invisible`` 5, ``image offset`` 1). ``no fundus image``
#: and ``anterior segment image`` are *not* here: such a photo shows no usable fundus.
QUALITY_KEYWORDS = frozenset({
    "lens dust",
    "low image quality",
    "image offset",
    "optic disk photographically invisible",
})

_SPLIT = re.compile(r"[，,]")
SEXES = ("female", "male")


def parse_keywords(s: object) -> tuple[str, ...]:
    """Split a keyword string on ``，`` (full-width comma) and ``,``; each keyword is
    trimmed, lower-cased, inner whitespace collapsed; empty pieces dropped.

    >>> parse_keywords(" Lens dust，normal  fundus ")
    ('lens dust', 'normal fundus')
    """
    if s is None or (isinstance(s, float) and s != s):
        return ()
    parts = (re.sub(r"\s+", " ", p).strip().lower() for p in _SPLIT.split(str(s)))
    return tuple(p for p in parts if p)


def is_normal(keywords: object) -> bool:
    """True when the keywords are exactly ``normal fundus``."""
    return parse_keywords(keywords) == (NORMAL,)


def is_normal_or_quality(keywords: object) -> bool:
    """True when ``normal fundus`` is present and every other keyword is a quality note."""
    kws = set(parse_keywords(keywords))
    return NORMAL in kws and kws - {NORMAL} <= QUALITY_KEYWORDS


def _wanted(keywords: pd.Series, mode: str) -> pd.Series:
    if mode == "normal":
        return keywords.map(is_normal).astype(bool)
    if mode == "normal_or_quality":
        return keywords.map(is_normal_or_quality).astype(bool)
    return pd.Series(True, index=keywords.index)


def select(table: pd.DataFrame, mode: str = "normal", return_unselected: bool = False):
    """Split an eye table (:func:`pipeline.annotations.read_annotations`) by ``mode``.

    Returns:
      ``(kept, skipped)``, or ``(kept, skipped, unselected)`` with ``return_unselected``.
      ``kept``: the selected eyes with valid sex and file name, plus boolean column
      ``normal`` (eligible for evaluation, see the module doc); ``attrs["unselected"]``
      is the number of eyes the mode did not select.
      ``skipped``: selected eyes that cannot be used, plus a ``reason`` column.
      ``unselected``: eyes the mode does not select (not errors).
      All keep the table's columns and index.
    """
    if mode not in MODES:
        raise ValueError(f"--selection={mode!r}: must be one of {', '.join(MODES)}")
    wanted = _wanted(table["keywords"], mode)
    sex_ok = table["sex"].isin(SEXES)
    file_ok = table["filename"].astype(str).str.strip() != ""
    reasons = pd.Series("", index=table.index, dtype=object)
    reasons[~sex_ok] = ["sex not male/female: " + repr(str(v))
                        for v in table.loc[~sex_ok, "sex"]]
    no_file = ~file_ok & sex_ok
    reasons[no_file] = "no image file name"
    bad = ~(sex_ok & file_ok)
    kept = table[wanted & ~bad].copy()
    if mode == "all":
        kept["normal"] = kept["keywords"].map(is_normal).astype(bool)
    else:
        kept["normal"] = True
    skipped = table[wanted & bad].copy()
    skipped["reason"] = reasons[wanted & bad]
    unselected = table[~wanted].copy()
    kept.attrs["unselected"] = int((~wanted).sum())
    if return_unselected:
        return kept, skipped, unselected
    return kept, skipped


def summary(kept: pd.DataFrame) -> dict[str, int]:
    """``{"images", "patients", "male", "female"}`` counts of a kept table."""
    return {"images": int(len(kept)), "patients": int(kept["patient_id"].nunique()),
            "male": int((kept["sex"] == "male").sum()),
            "female": int((kept["sex"] == "female").sum())}
