"""Keep the training batches the same in every epoch (for ``debug=overfit``).

``trainer.overfit_batches=N`` trains on the first N batches of each epoch. Lightning makes those
the same batches by swapping a shuffling ``sampler`` for a sequential one, but our token-budget
*batch* sampler shuffles by itself (per epoch), so the N batches would change every epoch and the
model would never overfit them. This callback turns that shuffling off: batches then come in
length order, the same ones every epoch.
"""

from __future__ import annotations

import lightning as L


class FixedTrainBatches(L.Callback):
    """Turn off the shuffling of the DataModule's ``train_sampler`` once training starts."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sampler = getattr(getattr(trainer, "datamodule", None), "train_sampler", None)
        if sampler is not None and hasattr(sampler, "shuffle"):
            sampler.shuffle = False
