"""Explanations: where in the image the evidence for a score lies, and whether those maps can be trusted.

- `cam`: the one CAM mechanism (`cams`, running the model's cached compiled `cam_function` of (weights, images))
  and its methods, `grad_cam` and `grad_cam_plus_plus` (each a weighting rule); `METHODS` names them. A new
  method is a new weighting rule plus one line in `METHODS`.
- `checks`: the randomisation sanity check, deletion/insertion faithfulness and the shortcut audit; where the heat
  lies (lungs, marker corners, border band) per confusion cell (`shortcut_audit`) and per case shown
  (`case_regions`); the stamp counterfactual (`stamp_counterfactual`, `counterfactual_summary`).
- `cases`: which cases to explain, by rule (`confident_cases`, `near_threshold_cases`); the colour map's scale in
  words (`SCALE_NOTE`, the figures' caption).

The verdicts and readings of all of them in plain sentences are in `cxr.reporting` (`describe_randomization`,
`describe_where`, `where_summary`, ...), which nothing here imports.

Figures of all three are in `cxr.plots.explain` (`overlay`, `gradcam_pairs`, `randomization_figure`, ...).
"""
from cxr.explain.cases import CELLS, SCALE_NOTE, confident_cases, near_threshold_cases  # noqa: F401
from cxr.explain.cam import (METHODS, CamFunction, cam_function, cams, find_target_layer,  # noqa: F401
                             finish_cams, grad_cam, grad_cam_plus_plus, gradcam_pp_weights, gradcam_weights,
                             replay_check)
from cxr.explain.checks import (BODY_BOX, REGIONS, Faithfulness, case_regions, deletion_insertion,  # noqa: F401
                                heat_shares, randomization_test, region_masks, shortcut_audit)
from cxr.explain.checks import counterfactual_summary, stamp_counterfactual  # noqa: F401
