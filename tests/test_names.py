"""The Kaggle file-name rules, pinned: every naming form of the archive (both normal families, both pneumonia
subtypes) and odd names (case, other extensions, names outside the families, folders, backslashes), with the
outputs the package gave before the rules were gathered in `cxr.data.names` (computed then with the functions of
`cxr.data.index`, `cxr.data.split`, `cxr.evaluate.predictions` and `cxr.evaluate.shift`, written here by hand).
Also the task table's primary task."""
from __future__ import annotations

import dataclasses
import re

import pandas as pd
import pytest

from conftest import REPO
from cxr import config
from cxr.data import audit, index, names, split
from cxr.data.names import file_family, id_family, normal_id_number, patient_id, person_number
from cxr.data.names import subtype as subtype_of
from cxr.evaluate import predictions

# (file name or path, label folder) -> (patient_id, subtype_of, id_family, file_family)
CASES = [
    # the four families of the archive
    ("IM-0115-0001.jpeg", "NORMAL", "IM-0115", "normal", ("IM", 115), "IM-"),
    ("IM-0600-0001-0001.jpeg", "NORMAL", "IM-0600", "normal", ("IM", 600), "IM-"),
    ("NORMAL2-IM-0102-0001.jpeg", "NORMAL", "NORMAL2-IM-0102", "normal", ("NORMAL2-IM", 102), "NORMAL2-IM-"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL", "NORMAL2-IM-1427", "normal", ("NORMAL2-IM", 1427), "NORMAL2-IM-"),
    ("person1000_bacteria_2931.jpeg", "PNEUMONIA", "person1000_bacteria", "bacteria", ("bacteria", 1000),
     "person*_bacteria"),
    ("person1000_virus_1681.jpeg", "PNEUMONIA", "person1000_virus", "virus", ("virus", 1000), "person*_virus"),
    ("person1_virus_6.jpeg", "PNEUMONIA", "person1_virus", "virus", ("virus", 1), "person*_virus"),
    ("person007_bacteria_1.jpeg", "PNEUMONIA", "person007_bacteria", "bacteria", ("bacteria", 7), "person*_bacteria"),
    # case
    ("im-0115-0001.jpeg", "NORMAL", "IM-0115", "normal", ("IM", 115), "IM-"),
    ("normal2-im-0102-0001.JPEG", "NORMAL", "NORMAL2-IM-0102", "normal", ("NORMAL2-IM", 102), "NORMAL2-IM-"),
    ("PERSON12_BACTERIA_3.JPEG", "PNEUMONIA", "person12_bacteria", "bacteria", ("bacteria", 12), "person*_bacteria"),
    ("Person7_Virus_12.JPEG", "PNEUMONIA", "person7_virus", "virus", ("virus", 7), "person*_virus"),
    # other extensions
    ("IM-0115-0001.jpg", "NORMAL", "IM-0115", "normal", ("IM", 115), "IM-"),
    ("IM-0115-0001.png", "NORMAL", "IM-0115", "normal", ("IM", 115), "IM-"),
    ("IM-0115-0001.dcm", "NORMAL", "IM-0115", "normal", ("IM", 115), "IM-"),
    ("person3_virus_1.png", "PNEUMONIA", "person3_virus", "virus", ("virus", 3), "person*_virus"),
    ("person3_bacteria_9.dcm", "PNEUMONIA", "person3_bacteria", "bacteria", ("bacteria", 3), "person*_bacteria"),
    # near the families: the prefix rule (file_family) is looser than the numbered rules
    ("IM-0115.jpeg", "NORMAL", "NORMAL/IM-0115", "normal", ("other", -1), "IM-"),
    ("IM-abc-0001.jpeg", "NORMAL", "NORMAL/IM-abc-0001", "normal", ("other", -1), "IM-"),
    ("NORMAL2-IM-abc.jpeg", "NORMAL", "NORMAL/NORMAL2-IM-abc", "normal", ("other", -1), "NORMAL2-IM-"),
    ("IM-.jpeg", "NORMAL", "NORMAL/IM-", "normal", ("other", -1), "IM-"),
    ("xIM-0115-0001.jpeg", "NORMAL", "NORMAL/xIM-0115-0001", "normal", ("other", -1), "other"),
    ("NORMAL-IM-0102-0001.jpeg", "NORMAL", "NORMAL/NORMAL-IM-0102-0001", "normal", ("other", -1), "other"),
    ("personX_virus_1.jpeg", "PNEUMONIA", "PNEUMONIA/personX_virus_1", "virus", ("other", -1), "other"),
    ("person5_fungus_1.jpeg", "PNEUMONIA", "PNEUMONIA/person5_fungus_1", "unknown", ("other", -1), "other"),
    ("person5virus.jpeg", "PNEUMONIA", "PNEUMONIA/person5virus", "virus", ("other", -1), "other"),
    # outside the families: one image, one child; the subtype is any "bacteria"/"virus" in the name (the first)
    ("scan_17.jpeg", "NORMAL", "NORMAL/scan_17", "normal", ("other", -1), "other"),
    ("scan_17.jpeg", "PNEUMONIA", "PNEUMONIA/scan_17", "unknown", ("other", -1), "other"),
    ("covid_virus_case.jpeg", "PNEUMONIA", "PNEUMONIA/covid_virus_case", "virus", ("other", -1), "other"),
    ("bacteria_then_virus.png", "PNEUMONIA", "PNEUMONIA/bacteria_then_virus", "bacteria", ("other", -1), "other"),
    ("person5_bacteria_virus.jpeg", "PNEUMONIA", "person5_bacteria", "bacteria", ("bacteria", 5), "person*_bacteria"),
    ("person5_virus_bacteria.jpeg", "PNEUMONIA", "person5_virus", "virus", ("virus", 5), "person*_virus"),
    ("noext", "NORMAL", "NORMAL/noext", "normal", ("other", -1), "other"),
    ("a.b.c.jpeg", "PNEUMONIA", "PNEUMONIA/a.b.c", "unknown", ("other", -1), "other"),
    # the label folder decides the subtype of a normal and the fallback id only, never the family
    ("person1_virus_6.jpeg", "NORMAL", "person1_virus", "normal", ("virus", 1), "person*_virus"),
    ("IM-0115-0001.jpeg", "PNEUMONIA", "IM-0115", "unknown", ("IM", 115), "IM-"),
    # folders are ignored; backslashes are folders for file_family only
    ("train/NORMAL/IM-0115-0001.jpeg", "NORMAL", "IM-0115", "normal", ("IM", 115), "IM-"),
    ("chest_xray/test/PNEUMONIA/person1_virus_6.jpeg", "PNEUMONIA", "person1_virus", "virus", ("virus", 1),
     "person*_virus"),
    ("chest_xray\\train\\PNEUMONIA\\person1_virus_6.jpeg", "PNEUMONIA",
     "PNEUMONIA/chest_xray\\train\\PNEUMONIA\\person1_virus_6", "virus", ("other", -1), "person*_virus"),
    ("chest_xray\\train\\NORMAL\\IM-0115-0001.jpeg", "NORMAL", "NORMAL/chest_xray\\train\\NORMAL\\IM-0115-0001",
     "normal", ("other", -1), "IM-"),
]

# a patient id -> (normal family, number) of the id-block checks, or None
PATIENT_IDS = [
    ("IM-0115", ("IM-", 115)),
    ("NORMAL2-IM-0102", ("NORMAL2-IM-", 102)),
    ("im-0115", ("IM-", 115)),
    ("normal2-im-0102", ("NORMAL2-IM-", 102)),
    ("NORMAL2-IM-7", ("NORMAL2-IM-", 7)),
    ("IM-0115-0001", None),
    ("NORMAL/IM-0115", None),
    ("person1_virus", None),
    ("IM-", None),
    ("IM-12a", None),
]


@pytest.mark.parametrize("name, label, child, subtype, family, file_fam", CASES)
def test_every_naming_form(name, label, child, subtype, family, file_fam):
    assert patient_id(name, label) == child
    assert subtype_of(name, label) == subtype
    assert id_family(name) == family
    assert file_family(name) == file_fam


@pytest.mark.parametrize("pid, expected", PATIENT_IDS)
def test_normal_id_numbers_from_patient_ids(pid, expected):
    assert normal_id_number(pid) == expected


def test_a_normal_patient_id_reads_back_as_its_family_and_number():
    for name, label, child, _, family, file_fam in CASES:
        if family[0] in ("IM", "NORMAL2-IM") and "\\" not in name:
            assert normal_id_number(patient_id(name, label)) == (file_fam, family[1])


def _person_index() -> pd.DataFrame:
    rows = [("train/PNEUMONIA/person1_bacteria_1.jpeg", "train", "PNEUMONIA", "bacteria"),
            ("train/PNEUMONIA/person1_bacteria_2.jpeg", "train", "PNEUMONIA", "bacteria"),
            ("train/PNEUMONIA/person2_virus_3.jpeg", "train", "PNEUMONIA", "virus"),
            ("train/PNEUMONIA/Person3_Virus_4.JPEG", "train", "PNEUMONIA", "virus"),
            ("train/PNEUMONIA/person1_virus_9.jpeg", "train", "PNEUMONIA", "virus"),
            ("val/PNEUMONIA/person150_bacteria_5.png", "val", "PNEUMONIA", "bacteria"),
            ("train/PNEUMONIA/person250_bacteria_7.jpeg", "train", "PNEUMONIA", "bacteria"),
            ("train/PNEUMONIA/scan_virus.jpeg", "train", "PNEUMONIA", "virus"),
            ("train/PNEUMONIA/person9_virus_8.jpeg", "train", "PNEUMONIA", "bacteria"),  # the column decides
            ("train/NORMAL/IM-0001-0001.jpeg", "train", "NORMAL", "normal"),
            ("test/PNEUMONIA/person2_bacteria_10.jpeg", "test", "PNEUMONIA", "bacteria"),
            ("test/PNEUMONIA/person1_bacteria_11.jpeg", "test", "PNEUMONIA", "bacteria"),
            ("test/PNEUMONIA/person250_virus_12.dcm", "test", "PNEUMONIA", "virus"),
            ("test/PNEUMONIA/person8_virus_13.jpeg", "test", "PNEUMONIA", "virus"),
            ("test/NORMAL/IM-0002-0001.jpeg", "test", "NORMAL", "normal")]
    return pd.DataFrame(rows, columns=["path", "official_split", "label", "subtype"])


def test_person_numbers_of_the_audit():
    index = _person_index()
    expected = {("train", "bacteria"): {1, 9, 250}, ("train", "virus"): {1, 2, 3}, ("val", "bacteria"): {150},
                ("test", "bacteria"): {1, 2}, ("test", "virus"): {8, 250}}
    for split in ("train", "val", "test"):
        for subtype in ("bacteria", "virus", "normal"):
            assert audit._person_numbers(index, split, subtype) == expected.get((split, subtype), set())


def test_patient_id_evidence_counts():
    assert audit.patient_id_evidence(_person_index(), bin_width=100) == {
        "merged_ids_would_exclude": 5, "pneumonia_training_images": 9,
        "numbers": {"train/bacteria": 3, "train/virus": 3, "test/bacteria": 2, "test/virus": 2},
        "train_in_test_same_subtype": {"bacteria": 1, "virus": 0},
        "train_in_test_other_subtype": {"bacteria_to_virus": 1, "virus_to_bacteria": 2},
        "train_bacteria_virus_coincidences": 1, "chance_uniform": pytest.approx(0.036),
        "chance_by_density": pytest.approx(0.06), "bin_width": 100}


@pytest.mark.parametrize("name, label, child, subtype, family, file_fam", CASES)
def test_person_number_of_every_naming_form(name, label, child, subtype, family, file_fam):
    assert person_number(name) == (family[1] if family[0] in names.PNEUMONIA_FAMILIES else None)


def test_the_old_homes_of_the_rules_are_the_names_module():
    assert index.patient_id is names.patient_id and index.subtype_of is names.subtype
    assert split.id_family is names.id_family and split.OTHER == names.OTHER == "other"
    assert split.FAMILIES == names.ID_FAMILIES == ("IM", "NORMAL2-IM", "bacteria", "virus")
    assert predictions.file_family is names.file_family
    assert predictions.FAMILIES == names.FILE_FAMILIES == ("IM-", "NORMAL2-IM-", "person*_bacteria", "person*_virus")
    assert [names.FAMILY_LABELS[f] for f in names.ID_FAMILIES] == list(names.FILE_FAMILIES)


def test_no_file_name_rule_outside_the_names_module():
    """No other module of the package spells a family of the archive in a regular expression."""
    family = re.compile(r"IM-|NORMAL2|person|bacteria|virus", re.IGNORECASE)
    pattern = re.compile(r"re\.(?:compile|match|search|fullmatch|findall|sub)\(\s*r?[\"']([^\"']*)")
    found = []
    for path in sorted((REPO / "cxr").rglob("*.py")):
        if path.name == "names.py" and path.parent.name == "data":
            continue
        text = path.read_text()
        found += [f"{path.relative_to(REPO)}: {m.group(1)}" for m in pattern.finditer(text) if family.search(m.group(1))]
        found += [f"{path.relative_to(REPO)}: {line.strip()}" for line in text.splitlines()
                  if re.search(r"\.str\.(?:extract|match|contains|fullmatch)\(", line) and family.search(line)]
    assert found == []


def test_the_task_table_names_its_primary_task():
    assert config.primary_task() == "pneumonia"
    assert [name for name, t in config.TASKS.items() if t.primary] == ["pneumonia"]
    assert config.TASKS["pneumonia"].title == "Pneumonia vs normal"
    assert config.TASKS["subtype"].title == "Bacterial vs viral pneumonia"
    assert not config.TASKS["subtype"].primary


def test_primary_task_refuses_a_table_without_exactly_one(monkeypatch):
    both = {name: dataclasses.replace(t, primary=True) for name, t in config.TASKS.items()}
    monkeypatch.setattr(config, "TASKS", both)
    with pytest.raises(ValueError, match="exactly one task"):
        config.primary_task()
    monkeypatch.setattr(config, "TASKS", {})
    with pytest.raises(ValueError, match="exactly one task"):
        config.primary_task()
