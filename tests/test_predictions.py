"""The predictions file (one row per scored image, exact round trip) and the error analysis, on toy inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxr import reporting
from cxr.evaluate import predictions as pr

# (file name, label, subtype, patient, width, height, probability): threshold 0.5 gives
# IM-0001 FP, IM-0002 TN, NORMAL2-0003 FP, NORMAL2-0004 FP, bacteria_1 TP, bacteria_2 FN, virus_3 FN, virus_4 TP.
TOY = [
    ("test/NORMAL/IM-0001-0001.jpeg", "NORMAL", "normal", "IM-0001", 1000, 1000, 0.90),
    ("test/NORMAL/IM-0002-0001.jpeg", "NORMAL", "normal", "IM-0002", 2000, 2000, 0.20),
    ("test/NORMAL/NORMAL2-IM-0003-0001.jpeg", "NORMAL", "normal", "NORMAL2-IM-0003", 1000, 1000, 0.70),
    ("test/NORMAL/NORMAL2-IM-0004-0001.jpeg", "NORMAL", "normal", "NORMAL2-IM-0004", 2000, 2000, 0.60),
    ("test/PNEUMONIA/person1_bacteria_1.jpeg", "PNEUMONIA", "bacteria", "person1", 1000, 800, 0.80),
    ("test/PNEUMONIA/person1_bacteria_2.jpeg", "PNEUMONIA", "bacteria", "person1", 2000, 1600, 0.30),
    ("test/PNEUMONIA/person2_virus_3.jpeg", "PNEUMONIA", "virus", "person2", 1000, 800, 0.10),
    ("test/PNEUMONIA/person3_virus_4.jpeg", "PNEUMONIA", "virus", "person3", 2000, 1600, 0.95),
]


def toy_index() -> pd.DataFrame:
    """Two val rows first (so positions are not 0..n-1), then the eight test rows of TOY."""
    rows = [("train/NORMAL/IM-0900-0001.jpeg", "NORMAL", "normal", "IM-0900", 1200, 1000, None, "val"),
            ("train/PNEUMONIA/person900_virus_1.jpeg", "PNEUMONIA", "virus", "person900", 1300, 1000, None, "val")]
    rows += [(*r, "test") for r in TOY]
    index = pd.DataFrame(rows, columns=["path", "label", "subtype", "patient_id", "width", "height", "p", "split"])
    index["official_split"] = np.where(index["split"] == "test", "test", "train")
    return index.drop(columns="p")


def toy_frame(**kwargs) -> pd.DataFrame:
    index = toy_index()
    positions = np.arange(2, 10)
    return pr.predictions_frame(index, positions, "test", "pneumonia", [r[-1] for r in TOY], None, 0.5, **kwargs)


def test_families_from_real_file_names():
    assert pr.file_family("IM-0115-0001.jpeg") == "IM-"
    assert pr.file_family("NORMAL2-IM-0102-0001.jpeg") == "NORMAL2-IM-"
    assert pr.file_family("person1000_bacteria_2931.jpeg") == "person*_bacteria"
    assert pr.file_family("person1000_virus_1681.jpeg") == "person*_virus"
    assert pr.file_family("chest_xray/test/NORMAL/NORMAL2-IM-0102-0001.jpeg") == "NORMAL2-IM-"  # folders ignored
    assert pr.file_family(r"chest_xray\train\PNEUMONIA\person1_virus_6.jpeg") == "person*_virus"
    assert pr.file_family("scan.png") == "other"
    assert pr.file_family("xIM-0115-0001.jpeg") == "other"


def test_one_row_per_scored_image_with_the_right_columns():
    index = toy_index()
    frame = toy_frame()
    assert len(frame) == 8
    assert frame["path"].tolist() == index["path"].iloc[2:].tolist()
    assert list(frame.columns) == list(pr.COLUMNS)
    assert frame["y"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert frame["decision"].tolist() == [1, 0, 1, 1, 1, 0, 0, 1]
    assert frame["predicted"].tolist() == ["PNEUMONIA", "NORMAL", "PNEUMONIA", "PNEUMONIA",
                                           "PNEUMONIA", "NORMAL", "NORMAL", "PNEUMONIA"]
    assert frame["correct"].tolist() == [False, True, False, False, True, False, False, True]
    assert frame["family"].tolist() == ["IM-", "IM-", "NORMAL2-IM-", "NORMAL2-IM-", "person*_bacteria",
                                        "person*_bacteria", "person*_virus", "person*_virus"]
    assert frame["aspect"].tolist() == [1.0, 1.0, 1.0, 1.0, 1.25, 1.25, 1.25, 1.25]
    assert frame["calibrated_probability"].isna().all()
    # the subtype task scores only pneumonia images, labelled bacteria / virus
    sub = pr.predictions_frame(index, [6, 7, 8, 9], "test", "subtype", [0.2, 0.7, 0.6, 0.1], None, 0.5)
    assert sub["label"].tolist() == ["bacteria", "bacteria", "virus", "virus"]
    assert sub["y"].tolist() == [0, 0, 1, 1]
    assert sub["correct"].tolist() == [True, False, True, False]


def test_without_sizes_the_size_columns_are_left_out():
    index = toy_index().drop(columns=["width", "height"])
    frame = pr.predictions_frame(index, [2, 3], "test", "pneumonia", [0.1, 0.9], None, 0.5)
    assert "aspect" not in frame and "width" not in frame
    assert set(pr.error_analysis(frame)) == {"overall", "by_class", "by_subtype", "by_family", "fpr_by_family"}


def test_threshold_on_calibrated_decides_on_the_calibrated_probability():
    index = toy_index()
    raw, calibrated = [0.6, 0.4], [0.45, 0.55]
    on_raw = pr.predictions_frame(index, [2, 3], "test", "pneumonia", raw, calibrated, 0.5, threshold_on="raw")
    on_cal = pr.predictions_frame(index, [2, 3], "test", "pneumonia", raw, calibrated, 0.5,
                                  threshold_on="calibrated")
    assert on_raw["decision"].tolist() == [1, 0]
    assert on_cal["decision"].tolist() == [0, 1]
    assert on_cal["threshold_on"].eq("calibrated").all()
    with pytest.raises(ValueError, match="calibrated"):
        pr.predictions_frame(index, [2, 3], "test", "pneumonia", raw, None, 0.5, threshold_on="calibrated")
    with pytest.raises(ValueError, match="threshold_on"):
        pr.predictions_frame(index, [2, 3], "test", "pneumonia", raw, None, 0.5, threshold_on="platt")


def test_mismatched_inputs_are_refused():
    index = toy_index()
    with pytest.raises(ValueError, match="positions"):
        pr.predictions_frame(index, [2, 3, 4], "test", "pneumonia", [0.1, 0.2], None, 0.5)
    with pytest.raises(ValueError, match="split"):
        pr.predictions_frame(index, [0, 2], "test", "pneumonia", [0.1, 0.2], None, 0.5)
    with pytest.raises(ValueError, match="not part of task"):
        pr.predictions_frame(index, [2, 6], "test", "subtype", [0.1, 0.2], None, 0.5)
    with pytest.raises(ValueError, match="missing"):
        pr.predictions_frame(index, [2, 3], "test", "pneumonia", [0.1, np.nan], None, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pr.predictions_frame(index, [2, 3], "test", "pneumonia", [0.1, 0.2], [0.5, 1.5], 0.5)


def test_validation_and_test_round_trip_exactly(tmp_path):
    index = toy_index()
    index.loc[3, "patient_id"] = "NA"  # must not come back as a missing value
    rng = np.random.default_rng(0)
    p_test = rng.random(8)
    val = pr.predictions_frame(index, [0, 1], "val", "pneumonia", [1 / 3, 2 / 3], [0.1 + 0.2, 1e-17], 0.4)
    test = pr.predictions_frame(index, np.arange(2, 10), "test", "pneumonia", p_test, p_test ** 1.5, 0.4)
    frame = pd.concat([val, test], ignore_index=True)
    path = pr.write_predictions(frame, pr.predictions_path(tmp_path, "pneumonia"))
    assert path.name == "predictions_pneumonia.csv"
    back = pr.read_predictions(path)
    pd.testing.assert_frame_equal(back, frame, check_exact=True)
    assert back.loc[3, "patient_id"] == "NA"
    assert back["split"].value_counts().to_dict() == {"test": 8, "val": 2}
    # missing calibration (NaN) and no size columns round-trip too
    bare = pr.predictions_frame(index.drop(columns=["width", "height"]), [2, 3], "test", "pneumonia", [0.25, 0.75],
                                None, 0.5)
    back = pr.read_predictions(pr.write_predictions(bare, tmp_path / "bare.csv"))
    pd.testing.assert_frame_equal(back, bare, check_exact=True)
    with pytest.raises(ValueError, match="twice"):
        pr.write_predictions(pd.concat([test, test]), tmp_path / "dup.csv")


def test_wilson_interval_matches_scipy():
    for k, n in [(3, 4), (0, 10), (10, 10), (91, 234)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert pr.wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert all(np.isnan(pr.wilson_interval(0, 0)))


def test_error_rates_by_group_hand_checked():
    analysis = pr.error_analysis(toy_frame(), q=2)
    overall = analysis["overall"].iloc[0]
    assert (overall["n"], overall["errors"], overall["false_positives"], overall["false_negatives"]) == (8, 5, 3, 2)
    assert overall["patients"] == 7  # person1 has two images
    assert overall["rate"] == 5 / 8
    assert (overall["ci_low"], overall["ci_high"]) == pr.wilson_interval(5, 8)

    def counts(table):
        return {k: (int(r["errors"]), int(r["n"])) for k, r in table.iterrows()}

    assert counts(analysis["by_class"]) == {"NORMAL": (3, 4), "PNEUMONIA": (2, 4)}
    assert counts(analysis["by_subtype"]) == {"normal": (3, 4), "bacteria": (1, 2), "virus": (1, 2)}
    assert counts(analysis["by_family"]) == {"IM-": (1, 2), "NORMAL2-IM-": (2, 2), "person*_bacteria": (1, 2),
                                             "person*_virus": (1, 2)}
    assert counts(analysis["fpr_by_family"]) == {"IM-": (1, 2), "NORMAL2-IM-": (2, 2)}
    assert analysis["fpr_by_family"]["rate"].tolist() == [0.5, 1.0]
    # long side 1000 (IM-0001 FP, NORMAL2-0003 FP, bacteria_1 ok, virus_3 FN) and 2000 (IM-0002 ok, NORMAL2-0004
    # FP, bacteria_2 FN, virus_4 ok), in size order
    assert counts(analysis["by_size"]) == {"1000-1500": (3, 4), "1500-2000": (2, 4)}
    assert analysis["by_size"]["false_positives"].tolist() == [2, 1]
    # aspect 1.0: the normals (3 of 4 wrong); aspect 1.25: the pneumonias (2 of 4 wrong)
    assert counts(analysis["by_aspect"]) == {"1.00-1.12": (3, 4), "1.12-1.25": (2, 4)}
    assert analysis["by_subtype"].loc["normal", "ci_low"] == pr.wilson_interval(3, 4)[0]
    # among the four normals: long side 1000 has IM-0001 and NORMAL2-0003 (both FP), 2000 has one FP of two
    assert counts(analysis["fpr_by_size"]) == {"1000-1500": (2, 2), "1500-2000": (1, 2)}
    assert counts(analysis["fpr_by_aspect"]) == {"1.00-1.12": (3, 4)}  # all normals have aspect 1.0


def test_error_analysis_takes_one_split():
    index = toy_index()
    val = pr.predictions_frame(index, [0, 1], "val", "pneumonia", [0.9, 0.1], None, 0.5)  # both wrong
    frame = pd.concat([val, toy_frame()], ignore_index=True)
    assert pr.error_analysis(frame)["overall"]["n"].item() == 8
    assert pr.error_analysis(frame, split="val")["overall"]["errors"].item() == 2
    assert pr.error_analysis(frame, split=None)["overall"]["errors"].item() == 7


def test_size_bins_ordered_numerically_and_single_size_is_one_bin():
    index = toy_index()
    index["width"] = [900, 950] + [800, 900, 1000, 1100, 1200, 1300, 1400, 1500]
    index["height"] = 700
    frame = pr.predictions_frame(index, np.arange(2, 10), "test", "pneumonia", [r[-1] for r in TOY], None, 0.5)
    labels = pr.error_analysis(frame, q=4)["by_size"].index.tolist()
    assert labels == ["800-975", "975-1150", "1150-1325", "1325-1500"]  # not sorted as text
    index["width"], index["height"] = 224, 224
    frame = pr.predictions_frame(index, np.arange(2, 10), "test", "pneumonia", [r[-1] for r in TOY], None, 0.5)
    analysis = pr.error_analysis(frame)
    assert analysis["by_size"].index.tolist() == ["all 224"]
    assert "same stored size" in reporting.describe_errors(analysis)


def test_most_confident_errors_order():
    frame = toy_frame()
    top = pr.most_confident_errors(frame, k=2)
    assert top["error"].tolist() == ["false positive", "false positive", "false negative", "false negative"]
    assert top["probability"].tolist() == [0.90, 0.70, 0.10, 0.30]
    assert top["path"].str.endswith(("IM-0001-0001.jpeg", "IM-0003-0001.jpeg", "virus_3.jpeg",
                                     "bacteria_2.jpeg")).all()
    assert len(pr.most_confident_errors(frame, k=10)) == 5  # every error once


def test_most_confident_errors_use_the_thresholded_probability():
    index = toy_index()
    frame = pr.predictions_frame(index, [2, 3, 4], "test", "pneumonia", [0.9, 0.8, 0.7], [0.6, 0.7, 0.65], 0.5,
                                 threshold_on="calibrated")
    # all three normals are false positives; ranked by the calibrated probability the threshold applied to
    assert pr.most_confident_errors(frame, k=3)["calibrated_probability"].tolist() == [0.7, 0.65, 0.6]


def test_describe_errors_is_written_from_the_numbers():
    analysis = pr.error_analysis(toy_frame(), q=2)
    assert "long side" not in reporting.describe_errors(analysis)  # bins this small are not compared by default
    text = reporting.describe_errors(analysis, min_n=2)
    assert text.startswith("5 of 8 images were misclassified, 62% (95% CI 31-86%, n = 8)")
    assert "3 false positives and 2 false negatives, so false positives drive the errors" in text
    assert "3 of 4 NORMAL images wrong, 75%" in text
    assert "from 50% (95% CI 9-91%, n = 2) for IM- to 100% (95% CI 34-100%, n = 2) for NORMAL2-IM-" in text
    # false positives dominate: sizes are compared by the false-positive rate among normals
    assert ("The false-positive rate by original long side (px) ranged from 50% (95% CI 9-91%, "
            "n = 2) for 1500-2000 to 100% (95% CI 34-100%, n = 2) for 1000-1500") in text
    assert "aspect" not in text  # every normal has aspect 1.0: nothing to compare
    assert len(text.split(". ")) == 3
    perfect = toy_frame().assign(correct=True)
    assert reporting.describe_errors(pr.error_analysis(perfect)) == "None of the 8 images was misclassified."


def test_describe_errors_when_false_negatives_dominate():
    p = [0.1, 0.1, 0.1, 0.1, 0.4, 0.3, 0.1, 0.95]  # normals right; bacteria_1, bacteria_2, virus_3 missed
    frame = pr.predictions_frame(toy_index(), np.arange(2, 10), "test", "pneumonia", p, None, 0.5)
    text = reporting.describe_errors(pr.error_analysis(frame, q=2), min_n=4)
    assert "0 false positives and 3 false negatives, so false negatives drive the errors" in text
    assert ("The error rate by original long side (px) ranged from 25% (95% CI 5-70%, n = 4) for 1500-2000 to 50% "
            "(95% CI 15-85%, n = 4) for 1000-1500, whose errors are 0 false positives and 2 false negatives") in text
