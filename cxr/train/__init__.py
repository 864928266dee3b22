"""Training: the cross-validated recipe and its fold ensemble (`fit`), fixed-shape batches and padded prediction,
and the device set-up (`resolve`: the batch size and dtype policy of a run, once)."""
from cxr.train.batches import (PredictBatches, TrainBatches, balanced_class_weight, padded_predict,  # noqa: F401
                               predict_proba)
from cxr.train.device import (accelerator, batch_size, environment, precision_policy, precision_scope,  # noqa: F401
                              resolve, setup_precision)
from cxr.train.fit import (BALANCE_OPTIONS, HeldOut, TrainResult, finetune_optimizer, fit, loss_auroc,  # noqa: F401
                           predict_split, record, selection_loss)
