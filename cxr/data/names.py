"""The Kaggle file-name rules of the archive, in one place: every other module reads a name through these.

The archive's file names come in four families, batches of the original collection whose ID numbers follow
acquisition time (the official test is made of whole ID blocks of every family):

- normal images: `IM-0115-0001.jpeg` (family "IM") and `NORMAL2-IM-0102-0001.jpeg` ("NORMAL2-IM"), the ID
  number followed by the image number; the child is `IM-0115` / `NORMAL2-IM-0102`;
- pneumonia images: `person1000_bacteria_2931.jpeg` ("bacteria") and `person1000_virus_1681.jpeg` ("virus");
  the person number is counted per subtype, so the child is `person1000_bacteria` / `person1000_virus`
  (`cxr.data.audit.patient_id_evidence` shows why).

Matching ignores case; only the base name counts (the folders never do). Any other name is outside the
families: its child is the file (`<label>/<stem>`), its family "other".

- `patient_id`, `subtype`: the child and the subtype of an image (the index's columns);
- `id_family`: (family, ID number), for the folds in ID blocks (`cxr.data.split.block_folds`);
- `file_family`: the family label of the error analysis (`cxr.evaluate.predictions`), by prefix only;
- `normal_id_number`: (family label, number) of a normal child's patient id (`cxr.evaluate.shift`);
- `person_number`: the person number of a pneumonia file (`cxr.data.audit`).
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

NORMAL_FAMILIES = ("IM", "NORMAL2-IM")
PNEUMONIA_FAMILIES = ("bacteria", "virus")  # the subtypes, as the pneumonia file names spell them
ID_FAMILIES = (*NORMAL_FAMILIES, *PNEUMONIA_FAMILIES)  # the families `id_family` names, in this order
OTHER = "other"  # the family of a name outside them
FAMILY_LABELS = {"IM": "IM-", "NORMAL2-IM": "NORMAL2-IM-", "bacteria": "person*_bacteria", "virus": "person*_virus"}
FILE_FAMILIES = tuple(FAMILY_LABELS[f] for f in ID_FAMILIES)  # the labels `file_family` gives
NORMAL_LABEL = "NORMAL"  # the archive's folder of normal images
NORMAL_SUBTYPE, UNKNOWN_SUBTYPE = "normal", "unknown"

_NORMAL_ORDER = ("NORMAL2-IM", "IM")  # NORMAL2-IM- first: it is tried before the shorter IM- prefix
_PREFIX = {f: re.compile("^" + re.escape(FAMILY_LABELS[f]), re.IGNORECASE) for f in _NORMAL_ORDER}
_NUMBERED = {f: re.compile("^" + re.escape(FAMILY_LABELS[f]) + r"(\d+)-", re.IGNORECASE) for f in _NORMAL_ORDER}
_NORMAL_ID = re.compile("^(" + "|".join(re.escape(FAMILY_LABELS[f]) for f in _NORMAL_ORDER) + r")(\d+)$",
                        re.IGNORECASE)
_PERSON = re.compile(r"^person(\d+)_(?:(?P<bacteria>bacteria)|(?P<virus>virus))", re.IGNORECASE)
_SUBTYPE_WORD = re.compile("(" + "|".join(PNEUMONIA_FAMILIES) + ")", re.IGNORECASE)


def base_name(path: str | Path) -> str:
    """The file name of `path` without its folders (`/` separates folders; see `file_family` for `\\`)."""
    return Path(str(path)).name


def _numbered_normal(name: str) -> tuple[str, re.Match[str]] | None:
    """(family, match) of a numbered normal name (`IM-0115-...`, `NORMAL2-IM-0102-...`), or None."""
    for family in _NORMAL_ORDER:
        match = _NUMBERED[family].match(name)
        if match:
            return family, match
    return None


def _person_subtype(match: re.Match[str]) -> str:
    """The subtype text of a `_PERSON` match, as written in the name."""
    return match.group("bacteria") or match.group("virus")


def patient_id(filename: str | Path, label: str) -> str:
    """The child of an image, from its file name: `person123_bacteria` / `person123_virus` for pneumonia,
    `IM-0115` / `NORMAL2-IM-0102` for normal images; otherwise `<label>/<file stem>` (one image, one child).

    The person number of a pneumonia file is counted separately per subtype: `person5_bacteria` and
    `person5_virus` are two children. The archive shows it: no training number reappears in the test split with
    the same subtype, every number shared with the test split switches subtype, and bacterial and viral numbers
    coincide within training about as often as chance predicts (`cxr.data.audit.patient_id_evidence` computes
    these counts from the index)."""
    name = base_name(filename)
    match = _PERSON.match(name)
    if match:
        return match.group(0).lower()
    normal = _numbered_normal(name)
    if normal:
        return normal[1].group(0)[:-1].upper()  # without the "-" before the image number
    return f"{label}/{Path(name).stem}"


def subtype(filename: str | Path, label: str) -> str:
    """normal (any file of the NORMAL folder), else the first "bacteria" or "virus" anywhere in the file name
    (lower case); unknown when a PNEUMONIA file name says neither."""
    if label == NORMAL_LABEL:
        return NORMAL_SUBTYPE
    match = _SUBTYPE_WORD.search(base_name(filename))
    return match.group(1).lower() if match else UNKNOWN_SUBTYPE


def id_family(path: str | Path) -> tuple[str, int]:
    """(family, ID number) of an image from its file name: `IM-0115-0001.jpeg` -> ("IM", 115),
    `NORMAL2-IM-0102-0001.jpeg` -> ("NORMAL2-IM", 102), `person1000_bacteria_2931.jpeg` -> ("bacteria", 1000),
    `person1000_virus_1681.jpeg` -> ("virus", 1000); any other name -> ("other", -1). The ID numbers of a family
    follow acquisition time, and the official test is made of whole ID blocks of every family."""
    name = base_name(path)
    normal = _numbered_normal(name)
    if normal:
        return normal[0], int(normal[1].group(1))
    match = _PERSON.match(name)
    if match:
        return _person_subtype(match).lower(), int(match.group(1))
    return OTHER, -1


def file_family(path: str | Path) -> str:
    """The file-name family label of an image, from its base name (`/` and `\\` both separate folders):
    "IM-", "NORMAL2-IM-" (by prefix alone), "person*_bacteria", "person*_virus", or "other". The families are
    batches of the original collection, so they can differ in source and acquisition; a model that errs by
    family may have learnt the batch rather than the disease."""
    name = PurePosixPath(str(path).replace("\\", "/")).name
    for family in _NORMAL_ORDER:
        if _PREFIX[family].match(name):
            return FAMILY_LABELS[family]
    match = _PERSON.match(name)
    if match:
        return FAMILY_LABELS[str(match.lastgroup)]
    return OTHER


def normal_id_number(patient_id: str) -> tuple[str, int] | None:
    """(family label, ID number) of a normal child's patient id (`patient_id`): `IM-0115` -> ("IM-", 115),
    `NORMAL2-IM-0102` -> ("NORMAL2-IM-", 102); None for any other id."""
    match = _NORMAL_ID.match(str(patient_id))
    return (match.group(1).upper(), int(match.group(2))) if match else None


def person_number(path: str | Path) -> int | None:
    """The person number of a pneumonia file name (`person1000_bacteria_2931.jpeg` -> 1000), whichever its
    subtype; None for any other name."""
    match = _PERSON.match(base_name(path))
    return int(match.group(1)) if match else None
