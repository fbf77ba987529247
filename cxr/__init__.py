"""cxr: a reproducible COVID-19 vs non-COVID viral pneumonia chest X-ray pipeline.

Research and teaching only: this is not a diagnostic tool.

Modules follow the data flow, :data:`FLOW`, and each imports only from those before it
(tests/test_imports.py checks every module and script):

- base: io (atomic writers, the one ``.keras`` save) -> runtime (threads, devices, strategy)
- data: sources (download / mirror, checksums) -> dicom (DICOM files for the loader) -> images
  (the one loader) -> manifest ->
  protocols (which images make each class) -> split -> augment -> store (preprocessed arrays)
- model: model (VGG19 + head, stage freezing)
- training: features (the feature cache) -> batches (augmented batches, class weights) ->
  resume (history, backup, resumable callbacks) -> train (settings, the stage loop)
- evaluation: intervals (clustered Wilson, Newcombe AUC, patient bootstrap) -> metrics
  (counts, curves, calibration) -> figures (training, evaluation) -> audit_figures (Grad-CAM
  overlays, audit, outside the split) -> gradcam -> predict (the ``cxr-predict`` console
  script) -> audit (shortcut audit) -> overlap (the guard: scored images against the run's
  images) -> external (other image sets) -> summary (seeds) -> model_card -> comparison
  (protocols compared). Evaluation imports no
  training module (:data:`TRAINING`): a trained model is read from its file, so editing
  training code does not touch evaluation.
- cli (argument types of scripts/): imported by the scripts only, no module imports it.
- dag (workflow tooling: Snakefile / dvc.yaml) is outside the flow: it may import any of the
  modules above, and none imports it.

A script in scripts/ may import cxr.cli and the modules of its own stage and those before it
(the features script no training module past features; evaluation scripts no training).
"""

#: Class names in label-index order. Index 1 (``covid``) is the positive class everywhere:
#: ``p_covid`` is the softmax column 1, sensitivity is recall on ``covid``.
CLASSES = ("non_covid", "covid")
LABEL_INDEX = {name: i for i, name in enumerate(CLASSES)}

#: The modules in data-flow order: a module imports only modules before it (and ``cxr``).
FLOW = (
    "io",
    "runtime",
    "sources",
    "dicom",
    "images",
    "manifest",
    "protocols",
    "split",
    "augment",
    "store",
    "model",
    "features",
    "batches",
    "resume",
    "train",
    "intervals",
    "metrics",
    "figures",
    "audit_figures",
    "gradcam",
    "predict",
    "audit",
    "overlap",
    "external",
    "summary",
    "model_card",
    "comparison",
    "cli",
    "dag",
)
#: The training modules, which no evaluation module (:data:`EVALUATION`) may import.
TRAINING = ("features", "batches", "resume", "train")
#: The evaluation modules: the part of :data:`FLOW` from ``intervals`` to ``comparison``.
EVALUATION = FLOW[FLOW.index("intervals") : FLOW.index("comparison") + 1]
