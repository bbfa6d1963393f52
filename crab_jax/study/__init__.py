"""Studies over many training runs (above :mod:`crab_jax.training`, below :mod:`crab_jax.cli`).

``python -m crab_jax.study transfer``: single-task vs multi-task training per adapter variant,
every model scored on every task's held-out set (:mod:`crab_jax.study.transfer`).
``python -m crab_jax.study routes``: the per-token I-LoRA router gates of a trained model on
held-out batches, per task / layer / projection / token modality, with figures
(:mod:`crab_jax.study.routes`).
"""
