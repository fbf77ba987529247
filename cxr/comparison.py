"""The protocols compared (rule compare_protocols): one row per run, the same tests for each.

A run is one protocol (config ``protocols``) and, where config ``seeds`` lists some, one seed.
Every cell is read from the run's own files, never recomputed: the split tables (images per
class), ``reports/metrics/model_03_test.json`` (sensitivity, specificity, ROC AUC),
``reports/audit/baselines.json`` (blind baselines), ``reports/audit/masked.json`` (lungs
masked), ``reports/external/ieee8023_adult.json`` (within-source check) and, when configured,
``reports/external/external.json``. Intervals are those the files hold (Wilson on the patient
design effect's effective sample size for proportions, Newcombe's interval on patient counts for
AUCs). The overlap guard's counts (:mod:`cxr.overlap`: images of the check that the run has
seen, left out) are read from the same files. Pure pandas / matplotlib; writes nothing itself.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cxr.metrics import format_interval  # noqa: E402

#: Interval measures of a row: column prefix -> (file key, how to read the interval dict).
MEASURES = {
    "test_sensitivity": ("metrics", lambda d: d["intervals"]["sensitivity"]),
    "test_specificity": ("metrics", lambda d: d["intervals"]["specificity"]),
    "test_roc_auc": ("metrics", lambda d: d["intervals"]["roc_auc"]),
    "thumbnail_auc": ("baselines", lambda d: d["thumbnail"]["roc_auc"]),
    "size_mode_auc": ("baselines", lambda d: d["size_mode"]["roc_auc"]),
    "masked_auc": ("masked", lambda d: d["roc_auc"]),
    "within_specificity": ("within", lambda d: d.get("intervals", {}).get("specificity")),
    "within_auc": ("within", lambda d: d.get("auc_test_covid_vs_these")),
    "external_sensitivity": ("external", lambda d: d.get("intervals", {}).get("sensitivity")),
    "external_specificity": ("external", lambda d: d.get("intervals", {}).get("specificity")),
    "external_roc_auc": ("external", lambda d: d.get("intervals", {}).get("roc_auc")),
}
#: Markdown / figure headings of the measures.
HEADINGS = {
    "test_sensitivity": "test sensitivity",
    "test_specificity": "test specificity",
    "test_roc_auc": "test ROC AUC",
    "thumbnail_auc": "blind: thumbnail AUC",
    "size_mode_auc": "blind: width/height/mode AUC",
    "masked_auc": "lungs masked AUC",
    "within_specificity": "within-source specificity",
    "within_auc": "within-source AUC (test covid vs them)",
    "external_sensitivity": "external sensitivity",
    "external_specificity": "external specificity",
    "external_roc_auc": "external ROC AUC",
}
#: What each shipped protocol can and cannot show (data: shared/data/README.md, "What these
#: controls change"; docs/protocols.md). Another protocol is described by its description.
NOTES = {
    "seed": (
        "Adult COVID-19 images (ieee8023, figures from papers and websites) against Kermany"
        " children aged 1-5 from one hospital: age, hospital and file handling all separate"
        " the classes, so a high test score cannot show COVID-19 detection; the within-source"
        " check shows whether the model calls the COVID images' own non-COVID adults COVID."
    ),
    "adult_controls": (
        "Adult COVID-19 images (ieee8023) against adult NIH ChestX-ray8 No Finding and"
        " Pneumonia images: the age cue is gone, the source cue remains (one hospital's"
        " uniform PACS exports against figures from papers; width, height and mode alone"
        " separate them), so a high test score still cannot show COVID-19 detection; the"
        " within-source check is the test that a source shortcut fails."
    ),
}


def _class_counts(frame: pd.DataFrame) -> dict:
    return {label: int((frame["label"] == label).sum()) for label in ("covid", "non_covid")}


def comparison_row(
    *,
    protocol: str,
    seed: int | None,
    train: pd.DataFrame,
    test: pd.DataFrame,
    metrics: dict,
    baselines: dict,
    masked: dict,
    within: dict,
    selection: dict | None = None,
    external: dict | None = None,
) -> dict:
    """One run's row: ``protocol, seed`` (None: the protocol's top-level run); with
    ``selection`` (the protocol's ``selection.json``) the images it selected per class and how
    many of them have an unknown age (``selected_covid, selected_covid_unknown_age``, same for
    ``non_covid``); images per class in train and test (``train_covid, train_non_covid,
    test_covid, test_non_covid``, from the split tables: before augmentation), ``within_n``
    (images scored), ``within_overlaps`` and, with ``external``, ``external_overlaps`` (images
    the overlap guard left out; None for a file without a guard entry), and for each
    of :data:`MEASURES` ``<measure>`` (estimate), ``<measure>_lower``, ``<measure>_upper``
    (None when undefined or, for external, not configured)."""
    files = {
        "metrics": metrics,
        "baselines": baselines,
        "masked": masked,
        "within": within,
        "external": external,
    }
    row = {"protocol": protocol, "seed": seed}
    if selection is not None:
        for label in ("covid", "non_covid"):
            counts = [c for c in selection["counts"] if c["label"] == label]
            row[f"selected_{label}"] = sum(c["images"] for c in counts)
            row[f"selected_{label}_unknown_age"] = sum(
                c["images"] for c in counts if c["age_group"] == "unknown"
            )
    row.update({f"train_{k}": v for k, v in _class_counts(train).items()})
    row.update({f"test_{k}": v for k, v in _class_counts(test).items()})
    row["within_n"] = within.get("n", 0)
    row["within_overlaps"] = (within.get("overlap") or {}).get("n_overlapping")
    if external is not None:
        row["external_overlaps"] = (external.get("overlap") or {}).get("n_overlapping")
    for name, (key, read) in MEASURES.items():
        entry = read(files[key]) if files[key] is not None else None
        entry = entry or {}
        row[name] = entry.get("estimate")
        row[f"{name}_lower"] = entry.get("lower")
        row[f"{name}_upper"] = entry.get("upper")
    return row


def comparison_table(rows: list[dict], external: bool) -> pd.DataFrame:
    """The rows as a table, in the order given; the external columns only when ``external``."""
    table = pd.DataFrame(rows)
    if not external:
        table = table[[c for c in table.columns if not c.startswith("external_")]]
    table["seed"] = table["seed"].astype("Int64")
    return table


def _interval(row: pd.Series, name: str) -> str:
    return format_interval(
        {"estimate": row[name], "lower": row[f"{name}_lower"], "upper": row[f"{name}_upper"]}
    )


def _present(value) -> bool:
    return value is not None and not pd.isna(value)


def _count(value) -> str:
    return str(int(value)) if _present(value) else "n/a"


def comparison_markdown(table: pd.DataFrame, descriptions: dict[str, str], level: str) -> str:
    """The comparison as Markdown: a counts table, a results table (estimates with their
    ``level`` intervals), and one sentence per protocol (:data:`NOTES`, else its
    ``descriptions`` entry)."""
    names = [m for m in MEASURES if m in table.columns]

    def run_name(row) -> str:
        return row["protocol"] + (f", seed {row['seed']}" if _present(row["seed"]) else "")

    counts = [
        "| run | selected covid (unknown age) | selected non_covid (unknown age) |"
        " train covid | train non_covid | test covid | test non_covid | within-source images |"
        " within-source images left out (overlap) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    results = [
        "| run | " + " | ".join(HEADINGS[m] for m in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for _, row in table.iterrows():
        selected = [
            f"{row[f'selected_{label}']} ({row[f'selected_{label}_unknown_age']})"
            if f"selected_{label}" in row
            else "n/a"
            for label in ("covid", "non_covid")
        ]
        counts.append(
            f"| {run_name(row)} | {selected[0]} | {selected[1]} |"
            f" {row['train_covid']} | {row['train_non_covid']} |"
            f" {row['test_covid']} | {row['test_non_covid']} | {row['within_n']} |"
            f" {_count(row.get('within_overlaps'))} |"
        )
        results.append(
            f"| {run_name(row)} | " + " | ".join(_interval(row, m) for m in names) + " |"
        )
    notes = [
        f"- **{name}**: {NOTES.get(name, descriptions.get(name, ''))}"
        for name in dict.fromkeys(table["protocol"])
    ]
    return "\n".join(
        [
            "# Protocols compared",
            "",
            "_Generated by the pipeline (rule `compare_protocols`) from each run's files;"
            " do not edit by hand._",
            "",
            "Images per class that the protocol selected (in brackets: of unknown age, kept"
            " or, where the protocol excludes them, not counted here but in its"
            " selection_excluded.csv), in each run's training split (before augmentation)"
            " and test split, the ieee8023 non-COVID adults scored by the within-source"
            " check, and those its overlap guard left out (same file, pixels, perceptual hash"
            " or patient as an image of the run):",
            "",
            *counts,
            "",
            f"model_03 on each run's test split and the checks, estimates with {level}"
            " intervals (proportions: Wilson on the patient design effect's effective sample"
            " size; AUCs: Newcombe's score interval on patient counts). Blind"
            " baselines and lungs-masked AUC near 1 mean the classes are separable without"
            " the lungs; a within-source specificity far below the test specificity means"
            " the model calls the COVID images' own non-COVID adults COVID.",
            "",
            *results,
            "",
            "What each protocol can and cannot show:",
            "",
            *notes,
            "",
        ]
    )


def comparison_figure(table: pd.DataFrame) -> Figure:
    """One panel per measure (:data:`MEASURES` present in ``table``; four per row), one point
    with its interval per run; the x axis 0-1."""
    names = [m for m in MEASURES if m in table.columns]
    labels = [
        r["protocol"] + (f"\nseed {r['seed']}" if _present(r["seed"]) else "")
        for _, r in table.iterrows()
    ]
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(3.2 * ncols, nrows * (0.5 * len(table) + 1.2)))
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    ys = list(range(len(table)))[::-1]
    for ax, name in zip(axes, names, strict=False):
        for y, (_, row) in zip(ys, table.iterrows(), strict=True):
            est = row[name]
            if not _present(est):
                ax.text(0.5, y, "n/a", ha="center", va="center", fontsize=8)
                continue
            lo, hi = row[f"{name}_lower"], row[f"{name}_upper"]
            xerr = [[est - lo], [hi - est]] if _present(lo) and _present(hi) else None
            ax.errorbar([est], [y], xerr=xerr, fmt="o", color="tab:blue", capsize=3)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.5, len(table) - 0.5)
        ax.set_title(HEADINGS[name], fontsize=8)
        ax.axvline(0.5, color="grey", lw=0.5, ls=":")
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=8)
    fig.suptitle("Protocols compared: model_03 on its test split and the checks")
    fig.tight_layout()
    return fig
