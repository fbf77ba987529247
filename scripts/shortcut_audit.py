"""Rule shortcut_audit: the audit table (JSON) and figure, warnings printed, not hidden.

Entry point shared by Snakemake and DVC; options named like the config keys (section
``audit``). Combines the blind baselines, the masked-lungs check, the model's own test metrics
and the Grad-CAM summary (:func:`cxr.audit.shortcut_audit`). No TensorFlow.
"""

import argparse
import json
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--baselines", required=True, help="reports/audit/baselines.json")
p.add_argument("--masked", required=True, help="reports/audit/masked.json")
p.add_argument("--metrics", required=True, help="reports/metrics/model_03_test.json")
p.add_argument("--gradcam", required=True, help="reports/audit/gradcam.json")
p.add_argument("--out", required=True, help="output JSON")
p.add_argument("--figure", required=True, help="output PNG")
p.add_argument("--warn_auc", type=float, required=True)
p.add_argument("--dpi", type=int, required=True)
a = p.parse_args()

from cxr.audit import shortcut_audit  # noqa: E402
from cxr.audit_figures import audit_figure  # noqa: E402
from cxr.figures import save_png  # noqa: E402
from cxr.io import write_json  # noqa: E402
from cxr.metrics import format_interval  # noqa: E402


def load(path):
    return json.loads(Path(path).read_text())


audit = shortcut_audit(
    load(a.baselines), load(a.masked), load(a.metrics), load(a.gradcam), a.warn_auc
)
write_json(audit, a.out)
save_png(audit_figure(audit), a.figure, a.dpi)
for e in audit["entries"]:
    print(f"{e['name']}: test ROC AUC {format_interval(e['roc_auc'])}")
for w in audit["warnings"]:
    print(f"WARNING: {w}")
