"""The paper's metric kernels for Crab's nine tasks (NumPy in, Python floats / NumPy out; no family).

Each reproduces the original's evaluation function, quirks included (spec A.6; the fixture
README section 7), so numbers are comparable with the paper's:

* :mod:`.masks`: S4 / MS3 / Ref-AVS J (``mask_iou``) and F (``Eval_Fmeasure``), the Ref-AVS null
  S, AVSS class-wise mIoU and F (``calc_color_miou_fscore``), and the per-frame accumulators
  the scripts' averages come from.
* :mod:`.avvp`: AVVP segment- and event-level F (``segment_level`` / ``event_level``) and the
  LLP benchmark summary (Type@AV, Event@AV).
* :mod:`.boxes`: ARIG box IoU, the repository's CIoU kernels and the cIoU / AUC summary.
* :mod:`.captions`: AV captioning BLEU@1-4, METEOR, ROUGE-L, CIDEr (pycocoevalcap), with
  :mod:`.ptb_tokenizer` as the Java-free tokenizer.
* :mod:`.classification`: accuracy (WAR), UAR, weighted F1 and MUSIC-AVQA's per-type accuracy
  (Crab+'s label tasks, spec B.7). :mod:`.masks` also holds Crab+'s fixed-threshold J / F and
  null S of the SAM2 stage's binary masks (spec B.6).
* :mod:`.tables`: the task-scorer protocol and the helpers scorers share (line counts, the
  prediction text, reading a reference file).
"""
