"""cxr: a reproducible COVID-19 vs non-COVID viral pneumonia chest X-ray pipeline.

Research and teaching only: this is not a diagnostic tool.

Modules follow the data flow, and each imports only from those before it:

- data: sources (download / mirror, checksums) -> images (the one loader) -> manifest ->
  split -> augment -> store (preprocessed arrays)
- model: model (VGG19 + head, stage freezing) -> train
- evaluation: metrics (intervals, curves, calibration) -> figures -> gradcam -> audit
  (shortcut audit) -> external (other image sets) -> model_card
- predict (the ``cxr-predict`` console script) and dag (dvc.yaml from the Snakefile) use
  the modules above; cli (argument types of scripts/) uses none.
"""

#: Class names in label-index order. Index 1 (``covid``) is the positive class everywhere:
#: ``p_covid`` is the softmax column 1, sensitivity is recall on ``covid``.
CLASSES = ("non_covid", "covid")
LABEL_INDEX = {name: i for i, name in enumerate(CLASSES)}
