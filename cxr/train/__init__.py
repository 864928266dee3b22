"""Training: the recipe (`fit`), fixed-shape batches and padded prediction, and the device set-up.

Public names (unchanged for `cxr.pipeline` and the notebook): `fit`, `TrainResult`, `predict_split`,
`predict_proba`, `record`, `environment`, `validation_threshold`, plus `accelerator`, `precision_policy`,
`setup_precision`, `balanced_class_weight` and `TASKS`.
"""
from cxr.train.batches import (PredictBatches, TrainBatches, balanced_class_weight, padded_predict,  # noqa: F401
                               predict_proba)
from cxr.train.device import (accelerator, batch_size, data_parallel, environment, precision_policy,  # noqa: F401
                              precision_scope, setup_precision)
from cxr.train.fit import (BALANCE_OPTIONS, TASKS, BestEpoch, TrainResult, ValidationMetrics, finetune_optimizer,  # noqa: F401
                           fit, predict_split, record, validation_threshold)
