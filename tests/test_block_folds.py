"""Block cross-validation folds (`cxr.data.split.block_folds`, `split_by_patient(scheme="blocks")`): contiguous ID
ranges of every file-name family, as the official test is cut. Synthetic indexes in the Kaggle naming (no images,
seconds), and once the real index of ../shared/data."""
from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from cxr import data
from cxr.config import Config, parse_settings
from cxr.data.split import FAMILIES, block_folds, fold_blocks, id_family


def row(path: str, sha: str | None = None) -> dict:
    """One index row from a path like train/NORMAL/IM-0115-0001.jpeg (label from the folder, child and subtype
    from the file name, as `cxr.data.index` reads them; a unique sha1 unless `sha` is given)."""
    split, label, name = path.split("/")
    digest = hashlib.sha1((sha or path).encode()).hexdigest()
    phash = hashlib.sha256(path.encode()).hexdigest()  # random bits: no two rows are near duplicates
    return {"path": path, "official_split": split, "label": label, "subtype": data.subtype_of(name, label),
            "patient_id": data.patient_id(name, label), "width": 224, "height": 224, "mode": "L", "format": "JPEG",
            "sha1": digest, "phash": phash}


def kaggle_like(seed: int = 0, children: int = 40) -> pd.DataFrame:
    """Training children of the four families (sparse, increasing ID numbers, 1-4 images each) after a test block
    of each family, as the Kaggle archive has them."""
    rng = np.random.default_rng(seed)
    rows, image = [], 0
    for family, start, label in (("IM", 115, "NORMAL"), ("NORMAL2-IM", 383, "NORMAL"),
                                 ("bacteria", 200, "PNEUMONIA"), ("virus", 80, "PNEUMONIA")):
        ids = start + np.cumsum(rng.integers(1, 4, children))
        for n in ids:
            for k in range(int(rng.integers(1, 5))):
                image += 1
                if label == "NORMAL":
                    rows.append(row(f"train/NORMAL/{family}-{n:04d}-{k + 1:04d}.jpeg"))
                else:
                    rows.append(row(f"train/PNEUMONIA/person{n}_{family}_{image}.jpeg"))
    for n in range(1, 6):  # the official test: the earliest IDs
        rows.append(row(f"test/NORMAL/IM-{n:04d}-0001.jpeg"))
        rows.append(row(f"test/NORMAL/NORMAL2-IM-{n + 10:04d}-0001.jpeg"))
        rows.append(row(f"test/PNEUMONIA/person{100 + n}_bacteria_{n}.jpeg"))
        rows.append(row(f"test/PNEUMONIA/person{n}_virus_{50 + n}.jpeg"))
    return pd.DataFrame(rows).sort_values("path", ignore_index=True)


def ranges(split: pd.DataFrame) -> pd.DataFrame:
    """(family, fold) -> min and max ID number of the training rows, computed here from the file names."""
    train = split[split["split"] == "train"]
    parsed = pd.DataFrame([id_family(p) for p in train["path"]], columns=["family", "number"])
    parsed["fold"] = train["fold"].to_numpy()
    return parsed.groupby(["family", "fold"])["number"].agg(["min", "max"])


def assert_contiguous(split: pd.DataFrame) -> None:
    """Within each family, the folds' ID ranges do not interleave, and fold f comes before fold f + 1."""
    for family, table in ranges(split).groupby(level="family"):
        if family == "other":
            continue
        table = table.droplevel("family").sort_index()
        assert (table["max"].to_numpy()[:-1] < table["min"].to_numpy()[1:]).all(), (family, table)


def folds_by_path(split: pd.DataFrame) -> pd.Series:
    return split.set_index("path")["fold"].sort_index()


def test_id_family_reads_the_kaggle_names():
    assert id_family("train/NORMAL/IM-0115-0001.jpeg") == ("IM", 115)
    assert id_family("train/NORMAL/IM-0600-0001-0001.jpeg") == ("IM", 600)  # the suffixed Kaggle form
    assert id_family("NORMAL2-IM-0102-0001.jpeg") == ("NORMAL2-IM", 102)
    assert id_family("test/PNEUMONIA/person1000_bacteria_2931.jpeg") == ("bacteria", 1000)
    assert id_family("person1000_virus_1681.jpeg") == ("virus", 1000)
    assert id_family("train/PNEUMONIA/Person7_Virus_12.JPEG") == ("virus", 7)
    assert id_family("train/NORMAL/scan_17.jpeg") == ("other", -1)
    assert id_family("train/NORMAL/IM-abc.jpeg") == ("other", -1)


def test_block_folds_are_contiguous_id_ranges_of_every_family():
    index = kaggle_like()
    split = data.split_by_patient(index, 4, seed=0, scheme="blocks")
    data.check_no_leakage(split, patients_vs_test=True)
    train = split[split["split"] == "train"]
    assert set(train["fold"]) == {0, 1, 2, 3} and split.loc[split["split"] == "test", "fold"].eq(-1).all()
    assert_contiguous(split)
    # every fold holds every family, with about a quarter of its images
    table = ranges(split)
    family = train["path"].map(lambda p: id_family(p)[0])
    for name in FAMILIES:
        assert set(table.loc[name].index) == {0, 1, 2, 3}, name
        counts = train[family == name]["fold"].value_counts()
        assert counts.max() - counts.min() <= 6, (name, counts)  # children have at most 4 images
    # fold 0 is the earliest period of every family
    assert all(table.loc[name].loc[0, "max"] < table.loc[name].loc[1, "min"] for name in FAMILIES)
    # the summary table agrees
    blocks = fold_blocks(split)
    assert list(blocks.columns) == ["first_id", "last_id", "images", "children"]
    assert blocks["images"].sum() == len(train)
    for (fold, name), values in blocks.iterrows():
        assert (values["first_id"], values["last_id"]) == tuple(table.loc[(name, fold)]), (fold, name)
        rows = train[(train["fold"] == fold) & (family == name)]
        assert values["children"] == rows["patient_id"].nunique() and values["images"] == len(rows)


def test_no_child_copy_or_near_duplicate_in_two_folds():
    index = kaggle_like(seed=1)
    pool = index[index["official_split"] == "train"]
    bacteria = pool[pool["subtype"] == "bacteria"].drop_duplicates("patient_id")
    virus = pool[pool["subtype"] == "virus"].drop_duplicates("patient_id")
    # a byte copy between two children far apart in ID (person ids at a fifth and four fifths of the family)
    a, b = bacteria.iloc[len(bacteria) // 5], bacteria.iloc[4 * len(bacteria) // 5]
    index.loc[index["path"] == b["path"], "sha1"] = a["sha1"]
    # a copy across families: an IM image also filed as NORMAL2-IM
    im = pool[pool["path"].str.contains("/IM-")].iloc[-1]
    n2 = pool[pool["path"].str.contains("NORMAL2-IM")].iloc[0]
    index.loc[index["path"] == n2["path"], "sha1"] = im["sha1"]
    # a near-duplicate pair between two viral children
    c, d = virus.iloc[3], virus.iloc[len(virus) // 2]
    near = pd.DataFrame({"path_a": [c["path"]], "path_b": [d["path"]]})
    split = data.split_by_patient(index, 4, seed=0, near=near, scheme="blocks")
    data.check_no_leakage(split, patients_vs_test=True, near=near)  # children, sha1 and the pair, one fold each
    assert split[split["split"] == "train"].groupby("patient_id")["fold"].nunique().max() == 1
    fold = folds_by_path(split)
    assert fold[a["path"]] == fold[b["path"]] and fold[c["path"]] == fold[d["path"]]
    # a group spanning families goes with its first member's family (by path: train/NORMAL/IM-... first): the
    # last IM child is in the last IM block, so its NORMAL2-IM copy is too, not with the earliest NORMAL2-IM ids
    assert fold[im["path"]] == fold[n2["path"]] == 3
    # the whole child of the linked copy goes along
    child = split[split["patient_id"] == n2["patient_id"]]
    assert child["fold"].eq(3).all()


def test_block_folds_are_deterministic_whatever_the_row_order():
    index = kaggle_like(seed=2)
    near = pd.DataFrame({"path_a": [index["path"].iloc[10]], "path_b": [index["path"].iloc[200]]})
    reference = folds_by_path(data.split_by_patient(index, 4, seed=0, near=near, scheme="blocks"))
    for shuffle in range(3):
        shuffled = index.sample(frac=1, random_state=shuffle).reset_index(drop=True)
        again = folds_by_path(data.split_by_patient(shuffled, 4, seed=0, near=near, scheme="blocks"))
        pd.testing.assert_series_equal(again, reference)
    # no seed: the blocks are a fact of the IDs
    pd.testing.assert_series_equal(folds_by_path(data.split_by_patient(index, 4, 99, near=near, scheme="blocks")),
                                   reference)
    # block_folds itself: the same partition for permuted rows and renumbered groups
    pool = index[index["official_split"] == "train"].reset_index(drop=True)
    groups = pd.factorize(pool["patient_id"])[0]
    order = np.random.default_rng(0).permutation(len(pool))
    direct = pd.Series(block_folds(pool, groups, 4), index=pool["path"]).sort_index()
    permuted = pd.Series(block_folds(pool.iloc[order], 1000 - groups[order], 4), index=pool["path"].iloc[order])
    pd.testing.assert_series_equal(permuted.sort_index(), direct)


def test_small_families_and_other_file_names():
    rows = [row(f"train/NORMAL/IM-{n:04d}-0001.jpeg") for n in range(115, 135)]
    rows += [row("train/PNEUMONIA/person5_virus_9.jpeg"), row("train/PNEUMONIA/person9_virus_10.jpeg")]  # 2 < 4
    rows += [row(f"train/PNEUMONIA/pneumonia_scan_{i}.jpeg") for i in range(6)]  # outside the families
    rows += [row(f"train/PNEUMONIA/person{n}_bacteria_{n}.jpeg") for n in range(300, 316)]
    rows += [row("test/NORMAL/IM-0001-0001.jpeg"), row("test/PNEUMONIA/person1_virus_1.jpeg")]
    index = pd.DataFrame(rows)
    split = data.split_by_patient(index, 4, seed=0, scheme="blocks")
    data.check_no_leakage(split)
    assert_contiguous(split)
    fold = folds_by_path(split)
    viral = fold[["train/PNEUMONIA/person5_virus_9.jpeg", "train/PNEUMONIA/person9_virus_10.jpeg"]]
    assert viral.nunique() == 2 and viral.is_monotonic_increasing  # two folds, in ID order
    others = fold[[p for p in fold.index if "pneumonia_scan" in p]]
    assert others.ge(0).all() and others.nunique() > 1  # dealt by child across the folds
    sizes = split[split["split"] == "train"]["fold"].value_counts()
    assert sorted(sizes.index) == [0, 1, 2, 3] and sizes.max() - sizes.min() <= 2
    # a pool of 3 children cannot fill 4 folds: 3 folds, each child in its own
    tiny = pd.DataFrame([row(f"train/NORMAL/IM-{n:04d}-0001.jpeg") for n in (200, 201)]
                        + [row("train/PNEUMONIA/person3_virus_3.jpeg"), row("test/NORMAL/IM-0001-0001.jpeg")])
    few = data.split_by_patient(tiny, 4, seed=0, scheme="blocks")
    assert sorted(few.loc[few["split"] == "train", "fold"]) == [0, 1, 2]


def test_default_random_scheme_is_unchanged():
    """The default is today's StratifiedGroupKFold split, computed here directly (seeded, groups numbered by their
    first row in path order, as `split_by_patient` has always done)."""
    index = kaggle_like(seed=3)
    children = index[(index["subtype"] == "bacteria") & (index["official_split"] == "train")]
    a, b = children.drop_duplicates("patient_id")["path"].iloc[[0, 7]]  # a byte copy between two children
    index.loc[index["path"] == b, "sha1"] = index.loc[index["path"] == a, "sha1"].iloc[0]
    for seed in (0, 42):
        pool = index[index["official_split"] == "train"].sort_values("path", ignore_index=True)
        key = pool["patient_id"].replace({data.patient_id(b.split("/")[-1], "PNEUMONIA"):
                                          data.patient_id(a.split("/")[-1], "PNEUMONIA")})
        groups = pd.factorize(key)[0]
        expected = np.full(len(pool), -1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cv = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed)
            for f, (_, held_out) in enumerate(cv.split(np.zeros(len(pool)), pool["subtype"], groups)):
                expected[held_out] = f
        expected = pd.Series(expected, index=pool["path"], name="fold")
        default = data.split_by_patient(index, 4, seed)
        explicit = data.split_by_patient(index, 4, seed, scheme="random")
        pd.testing.assert_frame_equal(default, explicit)
        got = folds_by_path(default[default["split"] == "train"])
        pd.testing.assert_series_equal(got, expected.sort_index(), check_dtype=False)
    blocks = folds_by_path(data.split_by_patient(index, 4, 0, scheme="blocks"))
    assert not blocks.equals(folds_by_path(data.split_by_patient(index, 4, 0)))
    with pytest.raises(ValueError, match="unknown fold scheme 'time'"):
        data.split_by_patient(index, 4, 0, scheme="time")
    with pytest.raises(ValueError, match="groups has 2 entries"):
        block_folds(index, np.zeros(2, int), 4)


def test_config_fold_scheme_is_validated_and_reaches_the_split():
    assert Config().fold_scheme == "blocks"  # protocol v2
    assert Config.preset("smoke", fold_scheme="blocks").fold_scheme == "blocks"
    assert parse_settings(["fold_scheme=blocks"]) == {"fold_scheme": "blocks"}
    with pytest.raises(ValueError, match="fold_scheme must be 'random' or 'blocks', not 'time'"):
        Config(fold_scheme="time")
    assert Config.from_dict(Config(fold_scheme="blocks").to_dict()).fold_scheme == "blocks"
    index = kaggle_like(seed=4)
    for config in (Config(), Config(fold_scheme="blocks")):
        inventory, near = data._split(config, index)
        expected = data.split_by_patient(index, config.n_folds, config.split_seed, drop_test_patients=True,
                                         near=near, scheme=config.fold_scheme)
        pd.testing.assert_frame_equal(inventory, expected)
    assert_contiguous(data._split(Config(fold_scheme="blocks"), index)[0])


def test_block_folds_on_the_shared_index(shared_data, tmp_path, capsys):
    root = data.extract(shared_data / "chest-xray-pneumonia-224.zip", tmp_path / "shared")
    index, _ = data.build_index(root)
    near = data.audit.near_duplicate_pairs(index, Config().near_duplicate_bits)
    split = data.split_by_patient(index, 4, 42, drop_test_patients=True, near=near, scheme="blocks")
    data.check_no_leakage(split, patients_vs_test=True, near=near)
    assert split["split"].value_counts().to_dict() == {"train": 5216, "test": 624}
    assert_contiguous(split)
    blocks = fold_blocks(split)
    for family, table in blocks.groupby(level="family", observed=True):
        table = table.droplevel("family").sort_index()
        assert list(table.index) == [0, 1, 2, 3], family  # every family in every fold
        assert (table["last_id"].to_numpy()[:-1] < table["first_id"].to_numpy()[1:]).all(), family
    sizes = split.loc[split["split"] == "train", "fold"].value_counts()
    assert sizes.between(0.85 * 5216 / 4, 1.15 * 5216 / 4).all(), sizes
    with capsys.disabled():
        print("\nblock folds of the shared index:\n" + blocks.to_string())
