"""SAM 2.1 image-predictor weights (a shared model, :mod:`crab_jax.models.sam2`): :mod:`.weights`
(strict reading of the original's .pt, an HF Sam2Model folder or a converted folder; the model),
:mod:`.export` (writing each of them back), :mod:`.original_names` (HF -> original names) and
:mod:`.converter` (``crab-convert-weights --family sam2``)."""
