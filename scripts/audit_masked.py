"""Rule audit_masked: model_03 on the test images with the central lung box masked -> ROC AUC.

Entry point shared by Snakemake and DVC; options named like the config keys (sections
``audit`` and ``evaluate``). Writes only --out (JSON, :func:`cxr.audit.masked_result`).
"""

import argparse

from cxr.runtime import PRECISION_OPTION

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--model", required=True, help="trained model (.keras)")
p.add_argument("--store", required=True, help="test store (.npz)")
p.add_argument("--out", required=True, help="output JSON")
p.add_argument("--lung_box", type=float, nargs=4, required=True, metavar=("X0", "Y0", "X1", "Y1"))
p.add_argument("--batch_size", type=int, required=True)
p.add_argument("--bootstrap_resamples", type=int, required=True)
p.add_argument("--bootstrap_seed", type=int, required=True)
p.add_argument("--confidence", type=float, required=True)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--precision", **PRECISION_OPTION)
a = p.parse_args()

from cxr.runtime import apply_precision, configure_threads  # noqa: E402

configure_threads(a.threads)
apply_precision(a.precision)

from cxr.audit import masked_result  # noqa: E402
from cxr.gradcam import check_box, mask_box  # noqa: E402
from cxr.io import write_json  # noqa: E402
from cxr.metrics import format_interval  # noqa: E402
from cxr.model import load_model  # noqa: E402
from cxr.predict import predict_p_covid  # noqa: E402
from cxr.store import load_store  # noqa: E402

box = check_box(a.lung_box)
store = load_store(a.store)
model = load_model(a.model)
p_masked = predict_p_covid(model, mask_box(store["images"], box), a.batch_size)
result = masked_result(
    store["labels"],
    p_masked,
    store["patient_ids"],
    box,
    n_resamples=a.bootstrap_resamples,
    seed=a.bootstrap_seed,
    confidence=a.confidence,
)
write_json(result, a.out)
print(f"lungs masked: test ROC AUC {format_interval(result['roc_auc'])}")
