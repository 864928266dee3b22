"""The WiSE-FT stage of `cxr.train.fit` (protocol version 3): the weight mixing on tiny arrays, and on a tiny model
that its two ends reproduce the head and the fine-tuned stage, that ties keep the earlier stage, and that the kept
members carry the mixed weights."""
from __future__ import annotations

import numpy as np
import pytest

from cxr import train
from cxr.config import Config
from cxr.train.fit import STAGES, interpolate_weights
from test_train import tiny_config, toy_data


def test_interpolate_weights_mixes_floating_arrays_and_keeps_other_state_from_the_end():
    start = [np.zeros((2, 2), "float32"), np.array([1.0, 3.0], "float64"), np.array([7], "int64")]
    end = [np.ones((2, 2), "float32"), np.array([3.0, 5.0], "float64"), np.array([9], "int64")]
    mixed = interpolate_weights(start, end, 0.25)
    np.testing.assert_array_equal(mixed[0], np.full((2, 2), 0.25, "float32"))
    np.testing.assert_array_equal(mixed[1], [1.5, 3.5])
    assert [m.dtype for m in mixed] == [np.float32, np.float64, np.int64]
    np.testing.assert_array_equal(mixed[2], [9])  # a counter or seed state: the fine-tuned end's
    for alpha, ends in ((0.0, start), (1.0, end)):  # the floating arrays of each end, exactly
        for a, b in zip(interpolate_weights(start, end, alpha)[:2], ends[:2]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [
    dict(alpha=1.5), dict(alpha=-0.1), dict(end=[np.ones(2)]), dict(end=[np.ones(3), np.ones(2)])])
def test_interpolate_weights_refuses_mismatched_lists_and_alphas_outside_0_1(bad):
    start, end = [np.zeros(2), np.zeros(2)], [np.ones(2), np.ones(2)]
    args = {"start": start, "end": end, "alpha": 0.5, **bad}
    with pytest.raises(ValueError):
        interpolate_weights(**args)


def test_the_config_checks_wise_ft_alpha_and_protocol_v3_presets_set_it():
    for bad in (1.5, -0.2, True, "0.5"):
        with pytest.raises(ValueError, match="wise_ft_alpha"):
            Config(wise_ft_alpha=bad)
    assert Config().wise_ft_alpha is None  # off unless asked for (protocol v2's recipe)
    for mode in ("full", "smoke"):
        cfg = Config.preset(mode)
        assert (cfg.wise_ft_alpha, cfg.reencode_quality) == (0.5, 75) and cfg.training.wise_ft_alpha == 0.5


@pytest.fixture(scope="module")
def ends():
    """One tiny fit per end of the mixing: alpha 0 (the head's weights) and 1 (the last fine-tuning epoch)."""
    prepared = toy_data(n=12, seed=2)
    cfg = tiny_config(finetune_epochs=1)
    return prepared, {alpha: train.fit(cfg.replace(wise_ft_alpha=alpha), prepared) for alpha in (0.0, 1.0)}


def test_the_two_ends_of_wise_ft_reproduce_the_head_and_the_fine_tuned_stage(ends):
    _, fits = ends
    for alpha, other in ((0.0, "head"), (1.0, "finetune")):
        r = fits[alpha]
        assert list(r.selection["stage"]) == list(STAGES)
        np.testing.assert_allclose(r.stage_oof["wise-ft"], r.stage_oof[other], rtol=1e-4, atol=1e-5)
        sel = r.selection.set_index("stage")
        assert sel.loc["wise-ft", "best_epoch"] == 1  # the last fine-tuning epoch is the one mixed
        assert sel.loc["wise-ft", "selection_loss"] == pytest.approx(sel.loc[other, "selection_loss"], rel=1e-3)


def test_a_tie_keeps_the_earlier_stage_and_the_kept_stage_has_the_lowest_selection_loss(ends):
    _, fits = ends
    for r in fits.values():
        sel = r.selection.set_index("stage")
        assert r.kept_stage != "wise-ft"  # each end ties with an earlier stage (up to float noise, never below it
        # by more than that noise: the kept stage is the minimum)
        assert sel.loc[r.kept_stage, "selection_loss"] <= sel["selection_loss"].min() * (1 + 1e-3)
        assert sel["kept"].sum() == 1 and sel.loc[r.kept_stage, "kept"]


def test_kept_wise_ft_members_carry_the_mixed_weights_and_score_their_held_out_fold():
    prepared = toy_data(n=12, seed=3)
    cfg = tiny_config(finetune_epochs=1, wise_ft_alpha=0.5)
    r = train.fit(cfg, prepared)
    sel = r.selection.set_index("stage")
    assert list(sel.index) == list(STAGES) and r.kept_stage == sel["selection_loss"].idxmin()
    np.testing.assert_allclose(r.oof["p"], r.stage_oof[r.kept_stage])
    for f, member in enumerate(r.members):  # each member gives its fold's OOF scores at the kept stage
        part = r.oof[r.oof["fold"] == f]
        p = train.predict_proba(member, prepared.images[part["position"].to_numpy()], cfg.batch_size)
        np.testing.assert_allclose(p, part["p"], rtol=1e-4, atol=1e-5)
    wise = r.stage_oof["wise-ft"]
    assert np.isfinite(wise).all() and not np.allclose(wise, r.stage_oof["head"])


def test_stage_comparison_pairs_every_stage_with_the_kept_one_on_the_same_images():
    from cxr.evaluate import stage_comparison

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    groups = np.arange(120) // 2  # two images per child
    good = np.clip(y * 0.6 + rng.normal(0.2, 0.2, 120), 0, 1)
    poor = np.clip(y * 0.2 + rng.normal(0.4, 0.3, 120), 0, 1)
    import pandas as pd
    selection = pd.DataFrame({"stage": ["head", "finetune", "wise-ft"], "best_epoch": [5, 2, 3],
                              "selection_loss": [0.2, 0.3, 0.25], "oof_loss": [0.2, 0.3, 0.25],
                              "oof_auroc": [0.99, 0.8, 0.9], "kept": [True, False, False]})
    table = stage_comparison(selection, {"head": good, "finetune": poor}, y, groups, n_bootstrap=200)
    assert list(table.index) == ["head", "finetune", "wise-ft"] and table.loc["head", "AUROC - kept"] == 0.0
    d = table.loc["finetune", "AUROC - kept"]
    from sklearn.metrics import roc_auc_score
    assert d == pytest.approx(roc_auc_score(y, poor) - roc_auc_score(y, good)) and d < 0
    low, high = (float(v) for v in table.loc["finetune", "95% CI"].strip("[]").split(","))
    assert low <= d <= high and high < 0  # a clearly worse stage: its whole interval below 0
    assert np.isnan(table.loc["wise-ft", "AUROC - kept"])  # no OOF given: no difference invented
    with pytest.raises(ValueError, match="exactly one"):
        stage_comparison(selection.assign(kept=False), {"head": good}, y, groups)
