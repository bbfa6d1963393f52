"""Crab's segmentation branch: query generator + two-scale SAM-style mask decoder + losses.

Modules: :mod:`.config` (``SegConfig``), :mod:`.resize` (torch-exact bilinear resize),
:mod:`.blocks` (transposed conv, upscaler, random Fourier positions, hyper MLP),
:mod:`.transformer` (SAM's two-way transformer), :mod:`.query_generator`, :mod:`.decoder`
(``MaskDecoderMultiScale``), :mod:`.module` (``SegModule``) and :mod:`.losses` (mask losses).

Port of ``SegModule`` / ``MaskDecoderMultiScale`` / ``TwoWayTransformer`` / ``QueryGenerator``
(``models/multimodal_encoder.py``) and the mask losses (``models/loss.py``). Attribute names
mirror the torch state dict (``text_hidden_fcs.0.0``, ``mask_decoder.transformer.1.layers.0
.cross_attn_token_to_image.q_proj`` ...) so the converter table is a near-identity map.

Layouts: image maps are channels-last inside (``[batch, h, w, C]``); the public outputs are
channels-first like torch (``[batch, classes, H, W]``).

One compiled program serves a batch that mixes binary tasks (s4 / ms3 / ref-avs) and AVSS:
both classifier heads are evaluated for every sample and ``is_avss [batch]`` (a boolean array,
not Python task strings) picks, per sample, which head's level-0 logits gate level 1 and
which loss applies. Callers read ``binary_logits`` for binary samples and ``avss_logits``
for AVSS samples (the other head's output of a sample is a by-product, never used).

Behaviour of the original kept on purpose (see the fixture README, section 4):
  * the 1/3 (per-scale token average) and 1/2 (per-level sum) factors are constants;
  * every query-generator layer restarts from the learned queries, so only the last layer
    shapes the output;
  * two-way layer 0 replaces the queries by their self-attention (no residual, no PE);
  * level 1 gates its upsampled image map by ``sigmoid(mean_classes(level-0 logits)) + 1``;
  * only the first object's six prompt tokens and the first frame's 256 image tokens are used;
  * losses are summed over samples and weighted by the fraction of binary / AVSS samples.
"""
