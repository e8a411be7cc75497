"""What training needs besides the model: the optimizer, the learning-rate schedule and its budget
(cooldown), compiling the loss, and the guard against non-finite losses. The LightningModule
(:mod:`seq2seq.models.lit_module`) only wires them."""
