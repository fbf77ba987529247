"""The model card (``reports/model_card.md``), generated from one run's outputs.

Sections follow Mitchell et al. (2019), Model Cards for Model Reporting (FAT* '19,
arXiv:1810.03993): intended use, model, data (sources, licenses, counts), split, metrics with
intervals, the shortcut audit, the honesty checks, known limitations. Every number comes from
the run's files (:func:`render` takes them already loaded); nothing is typed in by hand, so a
rerun on other data or another config gives its own card. Pure Python / pandas / Jinja2; writes
nothing (the model_card script writes the text).

The words are in the template ``cxr/templates/model_card.md.j2``; :func:`context` turns the
run's tables and JSON into the template's values (numbers already formatted), one small
function per section, and :func:`render` fills the template.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import jinja2
import pandas as pd

from cxr.metrics import format_interval
from cxr.overlap import overlap_note

KERMANY_LICENSE = "CC BY 4.0"
#: NIH ChestX-ray8 (shared/data/README.md): the NIH Clinical Center allows use with citation.
NIH_LICENSE = "free use with citation (NIH Clinical Center)"
KERMANY_CITATION = (
    "Kermany, Zhang & Goldbaum (2018), Labeled Optical Coherence Tomography (OCT) and Chest "
    "X-Ray Images for Classification, Mendeley Data, doi:10.17632/rscbjbr9sj.2"
)
IEEE_CITATION = (
    "Cohen et al. (2020), COVID-19 image data collection, arXiv:2003.11597 "
    "(github.com/ieee8023/covid-chestxray-dataset)"
)
#: The template, inside the package (``pyproject.toml`` package-data).
TEMPLATE = "templates/model_card.md.j2"
INTERVAL_ROWS = (
    ("sensitivity", "Sensitivity (recall, covid)"),
    ("specificity", "Specificity (recall, non_covid)"),
    ("ppv", "PPV (precision, covid)"),
    ("npv", "NPV (precision, non_covid)"),
    ("accuracy", "Accuracy"),
    ("roc_auc", "ROC AUC"),
)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table (header, ``|---|`` line, one line per row; cells by ``str``), without
    a final newline; the template's ``table``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _basis(entry: dict) -> str:
    if entry.get("trials") is not None:
        basis = f"{entry['successes']} / {entry['trials']}"
        if entry.get("n_patients") is not None:
            basis += f" ({entry['n_patients']} patients)"
        return basis
    if entry.get("n_covid_patients") is not None:
        return f"{entry['n_covid_patients']} + {entry['n_non_covid_patients']} patients"
    if entry.get("n_patients") is not None:
        return f"{entry['n_patients']} patients, {entry['n_resamples']} resamples"
    return ""


def license_counts(manifest: pd.DataFrame, metadata: pd.DataFrame | None) -> pd.DataFrame:
    """Images used per source and license: ``source, license, images``.

    ieee8023 licenses are per image (``metadata.csv`` column ``license``, joined on the file
    name; blank: "not stated"); every Kermany image is CC BY 4.0; the NIH images
    :data:`NIH_LICENSE`.
    """
    rows = []
    ieee = manifest[manifest["source"] == "ieee8023"]
    if len(ieee):
        lic = pd.Series("not stated", index=ieee.index)
        if metadata is not None and "license" in metadata.columns:
            by_file = (
                metadata.drop_duplicates("filename").set_index("filename")["license"].str.strip()
            )
            names = ieee["path"].map(lambda p: Path(p).name)
            found = names.map(by_file).fillna("")
            lic = found.where(found != "", "not stated")
        for name, n in lic.value_counts().sort_index().items():
            rows.append(["ieee8023", name, int(n)])
    kermany = manifest["source"].str.startswith("kermany")
    if kermany.any():
        rows.append(["kermany", KERMANY_LICENSE, int(kermany.sum())])
    nih = manifest["source"] == "nih"
    if nih.any():
        rows.append(["nih", NIH_LICENSE, int(nih.sum())])
    return pd.DataFrame(rows, columns=["source", "license", "images"])


def split_counts(splits: dict[str, pd.DataFrame]) -> list[list]:
    """Rows ``split, covid images (patients), non_covid images (patients), total``."""
    rows = []
    for name, frame in splits.items():
        cells = [name]
        for label in ("covid", "non_covid"):
            part = frame[frame["label"] == label]
            cells.append(f"{len(part)} ({part['patient_id'].nunique()})")
        cells.append(f"{len(frame)} ({frame['patient_id'].nunique()})")
        rows.append(cells)
    return rows


def data_context(
    manifest: pd.DataFrame,
    excluded: pd.DataFrame,
    metadata: pd.DataFrame | None,
    splits: dict[str, pd.DataFrame],
    n_augmented: int,
) -> dict:
    """Sections Data and Split: per class usable and split images (patients), images per
    source and license, exclusions by reason, per split counts, augmented images."""
    in_split = pd.concat(list(splits.values()), ignore_index=True)
    class_rows = []
    for label in ("covid", "non_covid"):
        usable = manifest[manifest["label"] == label]
        taken = in_split[in_split["label"] == label]
        class_rows.append(
            [
                label,
                f"{len(usable)} ({usable['patient_id'].nunique()})",
                f"{len(taken)} ({taken['patient_id'].nunique()})",
            ]
        )
    reasons = excluded["reason"].value_counts()
    return {
        "ieee_citation": IEEE_CITATION,
        "kermany_citation": KERMANY_CITATION,
        "kermany_license": KERMANY_LICENSE,
        "class_rows": class_rows,
        "license_rows": license_counts(in_split, metadata).values.tolist(),
        "n_excluded": len(excluded),
        "excluded_reasons": ", ".join(f"{n} {r}" for r, n in reasons.items()),
        "split_rows": split_counts(splits),
        "n_augmented": n_augmented,
    }


def interval_rows(intervals: dict) -> list[list[str]]:
    """``[name, "0.750 [0.301, 0.954]", "3 / 4"]`` per :data:`INTERVAL_ROWS` entry."""
    return [
        [name, format_interval(intervals[k]), _basis(intervals[k])] for k, name in INTERVAL_ROWS
    ]


def metrics_context(metrics: dict[str, dict]) -> dict:
    """Section Metrics: the test table (intervals, calibration error, Brier score) and one
    validation row per other evaluation, in the order given; ``level`` e.g. ``"95%"``; the
    precision model_03 was trained and scored in (its test metrics' ``precision``)."""
    test = metrics["model_03_test"]
    cal = test["calibration"]
    test_rows = interval_rows(test["intervals"])
    test_rows.append(["Expected calibration error", f"{cal['ece']:.3f}", f"{cal['n_bins']} bins"])
    test_rows.append(["Brier score", f"{cal['brier']:.3f}", f"{test['n']} images"])
    keys = ("accuracy", "sensitivity", "specificity", "roc_auc")
    validation_rows = [
        [name, *(format_interval(m["intervals"][k]) for k in keys)]
        for name, m in metrics.items()
        if name != "model_03_test"
    ]
    # Older metrics files lack the precision: those models were float32 throughout.
    precision = test.get("precision", {"trained": "float32", "scored": "float32"})
    return {
        "level": f"{test.get('confidence', 0.95):.0%}",
        "test_rows": test_rows,
        "validation_rows": validation_rows,
        "precision_trained": precision["trained"],
        "precision_scored": precision["scored"],
    }


def audit_context(audit: dict, gradcam: dict) -> dict:
    """Section Shortcut audit: one row per check (flagged ones marked), its warnings, and the
    Grad-CAM heat in the lung box (None when the run measured none)."""
    rows = [
        [
            e["name"],
            e.get("description", ""),
            format_interval(e["roc_auc"]),
            "**WARNING**" if e.get("flagged") else "",
        ]
        for e in audit["entries"]
    ]
    heat = None
    if gradcam.get("mean_heat_in_box") is not None:
        x0, y0, x1, y1 = gradcam["lung_box"]
        heat = {
            "n_images": gradcam["n_images"],
            "mean_heat_in_box": f"{gradcam['mean_heat_in_box']:.0%}",
            "x0": x0,
            "x1": x1,
            "y0": y0,
            "y1": y1,
            "box_area_fraction": f"{gradcam['box_area_fraction']:.0%}",
        }
    return {
        "warnings": audit.get("warnings", []),
        "warn_auc": audit["warn_auc"],
        "audit_rows": rows,
        "gradcam": heat,
    }


def guard_line(summary: dict) -> str | None:
    """What the overlap guard did to a set outside the split (its ``overlap`` entry), as a
    sentence: :func:`cxr.overlap.overlap_note`, or that none of the checked images overlaps;
    None when the set's file has no guard entry (a run before the guard)."""
    guard = summary.get("overlap")
    if not guard:
        return None
    return overlap_note(guard) or (
        f"none of the {guard['n_checked']} images overlaps the run's images (file, pixels,"
        " perceptual hash, patient id)"
    )


def viral_context(viral: dict) -> dict:
    """Section Honesty check (``reports/external/ieee8023_viral.json``): None when no image
    was scored; ``viral_failed``, the listed images that did not load; ``viral_guard``, the
    overlap guard's sentence (:func:`guard_line`)."""
    out = {"viral": None, "viral_failed": viral.get("n_failed"), "viral_guard": guard_line(viral)}
    if viral.get("n"):
        spec = viral["intervals"]["specificity"]
        out["viral"] = {
            "n": viral["n"],
            "findings": ", ".join(f"{k}: {v['n']}" for k, v in viral["per_finding"].items()),
            "specificity": format_interval(spec),
            "specificity_basis": _basis(spec),
            "p_covid_mean": f"{viral['p_covid_mean']:.3f}",
            "children_specificity": format_interval(viral["test_non_covid_specificity"]),
            "auc": format_interval(viral.get("auc_test_covid_vs_these")),
        }
    return out


def within_context(within: dict) -> dict:
    """Section Within-source check (``reports/external/ieee8023_adult.json``), as
    :func:`viral_context`: ``within`` (None when no image was scored), ``within_failed``."""
    out = viral_context(within)
    return {
        "within": out["viral"],
        "within_failed": out["viral_failed"],
        "within_guard": out["viral_guard"],
    }


def protocol_context(selection: dict) -> dict:
    """Section Protocol (``data/interim/selection.json`` of rule select): the protocol's name
    and description, the sources it draws on, and the selected images per source, class and
    age group (unknown ages included), with the exclusions by reason."""
    rows = [
        [c["source"], c["label"], c["age_group"], c["images"], c["patients"]]
        for c in selection["counts"]
    ]
    return {
        "protocol": selection["protocol"],
        "protocol_description": selection["description"],
        "protocol_sources": sorted({c["source"].split("-", 1)[0] for c in selection["counts"]}),
        "selection_rows": rows,
        "selection_excluded": ", ".join(
            f"{n} {r}" for r, n in selection.get("excluded", {}).items()
        ),
    }


def external_context(external: dict | None) -> dict:
    """Section External test: None when none is configured, else its name, counts and (when
    images were scored) the interval table."""
    if external is None:
        return {"external": None}
    n = external.get("n") or 0
    return {
        "external": {
            "name": external["name"],
            "n": n,
            "n_failed": external["n_failed"],
            "guard": guard_line(external),
            "rows": interval_rows(external["intervals"]) if n else [],
        }
    }


def context(
    *,
    manifest: pd.DataFrame,
    excluded: pd.DataFrame,
    metadata: pd.DataFrame | None,
    splits: dict[str, pd.DataFrame],
    n_augmented: int,
    histories: dict[str, pd.DataFrame],
    metrics: dict[str, dict],
    audit: dict,
    gradcam: dict,
    viral: dict,
    within: dict,
    selection: dict,
    external: dict | None,
    image_size: int,
) -> dict:
    """Every value the template uses, formatted; parameters as :func:`render`."""
    return {
        "image_size": image_size,
        "epochs": ", ".join(f"{s}: {len(h)}" for s, h in histories.items()),
        **data_context(manifest, excluded, metadata, splits, n_augmented),
        **metrics_context(metrics),
        **audit_context(audit, gradcam),
        **viral_context(viral),
        **within_context(within),
        **protocol_context(selection),
        **external_context(external),
    }


def template() -> jinja2.Template:
    """The card's Jinja2 template. Undefined names are errors (``StrictUndefined``); no HTML
    escaping (the card is Markdown, and every value comes from the run's own files)."""
    env = jinja2.Environment(
        autoescape=False,  # Markdown, not HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals["table"] = markdown_table
    return env.from_string(files("cxr").joinpath(TEMPLATE).read_text(encoding="utf-8"))


def render(**inputs) -> str:
    """The model card as Markdown.

    Parameters (keyword only)
    -------------------------
    manifest : the protocol's ``data/interim/selected.csv`` (rule select); excluded :
        ``data/interim/excluded.csv`` (the manifest's).
    metadata : the raw ieee8023 ``metadata.csv`` (licenses), or None.
    splits : ``{"train": ..., "val": ..., "test": ...}`` split tables.
    n_augmented : rows of ``data/augmented/augmented.csv``.
    histories : ``{stage: history table}``.
    metrics : ``{"model_03_test": ..., "model_01_val": ...}`` evaluation dicts.
    audit : ``reports/audit/shortcut_audit.json``; gradcam : ``reports/audit/gradcam.json``.
    viral : ``reports/external/ieee8023_viral.json``; within :
        ``reports/external/ieee8023_adult.json``; external : the external test's JSON or
        None when none is configured.
    selection : the protocol's ``data/interim/selection.json`` (rule select).
    image_size : the model's input side, pixels.

    Raises
    ------
    TypeError
        A missing or unknown parameter (from :func:`context`).
    KeyError, jinja2.UndefinedError
        An input without a key the card needs (e.g. ``model_03_test`` in ``metrics``).
    """
    return template().render(context(**inputs)).rstrip() + "\n"
