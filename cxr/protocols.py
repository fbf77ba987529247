"""Protocols: which manifest rows make the ``covid`` class and which make ``non_covid``.

A protocol is defined in config alone (``protocol_definitions.<name>`` in config.yaml,
schema in schemas/config.schema.yaml; docs/protocols.md). Per class it names:

- ``sources``: a mapping from a source name (:data:`SOURCES`) to the findings taken from it
  (a list, or one string), or null for every row the manifest keeps of that source. Findings
  match as ``manifest.covid_findings`` does (:func:`cxr.manifest.matches_finding`:
  case-insensitive, a listed name occurring in the row's ``finding``). A source name matches
  the manifest's ``source`` column exactly or as its prefix before ``-`` (``kermany``
  matches ``kermany-train`` and ``kermany-test``).
- ``views`` (optional): the view positions kept; absent or null: any view (Kermany rows have
  none).
- ``min_age`` / ``max_age`` (optional, years, inclusive): absent or null: no bound.
- ``unknown_age`` (required): ``keep`` or ``exclude`` the rows whose age cannot be placed
  inside or outside the range (no age; or a cohort range that straddles a bound).

Rows are placed by their ``age_low`` / ``age_high`` columns (cxr.manifest): inside when both
lie in the range, outside when the two intervals do not meet, unknown otherwise. A class's age
range only applies when a bound is set; without bounds no row is ever "unknown".

:func:`apply_protocol` applies one to a manifest; every row it does not select is returned
with a reason: ``not in protocol``, ``view not in protocol``, ``outside age range``,
``unknown age``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from cxr.manifest import EXCLUDED_COLUMNS, matches_finding

#: The protocol's classes, in the order the pipeline labels them.
CLASSES = ("covid", "non_covid")
#: Source names a protocol may use (the manifest's ``source`` column, before any ``-split``).
SOURCES = ("ieee8023", "kermany", "nih")
#: What a class does with rows of unknown age.
UNKNOWN_AGE = ("keep", "exclude")
#: Adult: 18 years and over (age groups of :func:`count_selection`).
ADULT_AGE = 18


class ProtocolError(ValueError):
    """A protocol that cannot be used: unknown name or key, or a class that comes out empty.
    The message names the protocol (and the class or key)."""


@dataclass(frozen=True)
class ClassSpec:
    """One class of a protocol (see the module docstring for the meaning of each field).

    sources : tuple of (source name, tuple of findings or None for all).
    views : tuple of view positions, or None for any view.
    min_age, max_age : float years (inclusive) or None for no bound.
    unknown_age : ``"keep"`` or ``"exclude"``.
    """

    sources: tuple
    views: tuple | None
    min_age: float | None
    max_age: float | None
    unknown_age: str


@dataclass(frozen=True)
class Protocol:
    """A named protocol: ``description`` and one :class:`ClassSpec` per class."""

    name: str
    description: str
    covid: ClassSpec
    non_covid: ClassSpec

    def classes(self) -> dict[str, ClassSpec]:
        """``{"covid": ClassSpec, "non_covid": ClassSpec}``."""
        return {"covid": self.covid, "non_covid": self.non_covid}


_CLASS_KEYS = {"sources", "views", "min_age", "max_age", "unknown_age"}
_PROTOCOL_KEYS = {"description", *CLASSES}


def _unknown_keys(where: str, given, allowed) -> None:
    extra = sorted(set(given) - set(allowed))
    if extra:
        raise ProtocolError(f"{where}: unknown key(s) {extra} (allowed: {sorted(allowed)})")


def _class_spec(where: str, spec) -> ClassSpec:
    if not isinstance(spec, dict):
        raise ProtocolError(f"{where}: expected a mapping, got {spec!r}")
    _unknown_keys(where, spec, _CLASS_KEYS)
    for key in ("sources", "unknown_age"):
        if key not in spec:
            raise ProtocolError(f"{where}: missing key '{key}'")
    sources = spec["sources"]
    if not isinstance(sources, dict) or not sources:
        raise ProtocolError(f"{where}.sources: expected a non-empty mapping source -> findings")
    bad = sorted(set(sources) - set(SOURCES))
    if bad:
        raise ProtocolError(f"{where}.sources: unknown source(s) {bad} (known: {list(SOURCES)})")
    if spec["unknown_age"] not in UNKNOWN_AGE:
        raise ProtocolError(
            f"{where}.unknown_age: {spec['unknown_age']!r} is not one of {list(UNKNOWN_AGE)}"
        )
    lo, hi = spec.get("min_age"), spec.get("max_age")
    if lo is not None and hi is not None and lo > hi:
        raise ProtocolError(f"{where}: min_age {lo} is above max_age {hi}")
    views = spec.get("views")
    return ClassSpec(
        sources=tuple(
            (src, None if f is None else (f,) if isinstance(f, str) else tuple(f))
            for src, f in sorted(sources.items())
        ),
        views=None if views is None else tuple(views),
        min_age=None if lo is None else float(lo),
        max_age=None if hi is None else float(hi),
        unknown_age=spec["unknown_age"],
    )


def load_protocol(definitions: dict, name: str) -> Protocol:
    """The protocol ``name`` from the config's ``protocol_definitions`` mapping.

    The schema refuses the same mistakes at parse time; this check is for callers that did not
    validate (DVC, Python).

    Raises
    ------
    ProtocolError naming the protocol and the offending key, source or value; or naming an
    unknown protocol and listing the defined ones.
    """
    if name not in definitions:
        raise ProtocolError(f"unknown protocol {name!r} (defined: {sorted(definitions)})")
    spec = definitions[name]
    where = f"protocol_definitions.{name}"
    if not isinstance(spec, dict):
        raise ProtocolError(f"{where}: expected a mapping, got {spec!r}")
    _unknown_keys(where, spec, _PROTOCOL_KEYS)
    for cls in CLASSES:
        if cls not in spec:
            raise ProtocolError(f"{where}: missing class '{cls}'")
    return Protocol(
        name=name,
        description=str(spec.get("description", "")),
        covid=_class_spec(f"{where}.covid", spec["covid"]),
        non_covid=_class_spec(f"{where}.non_covid", spec["non_covid"]),
    )


def source_name(source: str) -> str:
    """The protocol source name of a manifest ``source`` (``kermany-train``: ``kermany``)."""
    return source.split("-", 1)[0]


def _matches(spec: ClassSpec, source: str, finding: str) -> bool:
    name = source_name(source)
    return any(
        name == src and (findings is None or matches_finding(finding, findings))
        for src, findings in spec.sources
    )


def _num(value) -> float:
    """A CSV cell as float years; NaN for empty."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def age_place(age_low, age_high, min_age: float | None, max_age: float | None) -> str:
    """Where a row's age interval ``[age_low, age_high]`` (years; NaN: unknown) lies against
    the range ``[min_age, max_age]`` (None: unbounded): ``"inside"``, ``"outside"`` or
    ``"unknown"``."""
    if min_age is None and max_age is None:
        return "inside"
    lo, hi = _num(age_low), _num(age_high)
    if math.isnan(lo) or math.isnan(hi):
        return "unknown"
    a = -math.inf if min_age is None else min_age
    b = math.inf if max_age is None else max_age
    if lo >= a and hi <= b:
        return "inside"
    if hi < a or lo > b:
        return "outside"
    return "unknown"


def _range_text(spec: ClassSpec) -> str:
    lo = "" if spec.min_age is None else f"{spec.min_age:g}"
    hi = "" if spec.max_age is None else f"{spec.max_age:g}"
    return f"[{lo}, {hi}] y"


def _age_text(age_low, age_high) -> str:
    lo, hi = _num(age_low), _num(age_high)
    if math.isnan(lo):
        return "no age"
    return f"age {lo:g} y" if lo == hi else f"age {lo:g}-{hi:g} y"


def apply_protocol(manifest: pd.DataFrame, protocol: Protocol) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Select the rows of ``manifest`` that ``protocol`` puts in a class, and label them.

    Parameters
    ----------
    manifest : one row per image with at least ``path, label, source, patient_id, view,
        finding, age_low, age_high`` (cxr.manifest.COLUMNS); ``age_*`` in years, NaN or empty
        when unknown.
    protocol : from :func:`load_protocol`.

    Returns
    -------
    (selected, excluded) : ``selected`` has the manifest's columns, ``label`` set to the class
    (``covid`` / ``non_covid``), sorted by path; ``excluded`` has
    :data:`cxr.manifest.EXCLUDED_COLUMNS` (``label`` is the class the row would have had, or
    empty for ``not in protocol``), one row per manifest row not selected, sorted by path.

    Raises
    ------
    ProtocolError naming the protocol when a row matches both classes, when one patient has
    images in both classes, or when a class comes out empty (naming the class and its
    exclusion counts).
    """
    classes = protocol.classes()
    chosen, excluded = {}, []
    for index, rec in zip(manifest.index, manifest.to_dict("records"), strict=True):
        source, finding = str(rec["source"]), str(rec["finding"])
        hits = [c for c, spec in classes.items() if _matches(spec, source, finding)]
        if len(hits) == 2:
            raise ProtocolError(
                f"protocol {protocol.name!r}: {rec['path']} (source {source}, finding"
                f" {finding!r}) matches both classes"
            )
        reason = detail = None
        cls = hits[0] if hits else ""
        if not hits:
            reason, detail = "not in protocol", f"source {source}, finding {finding!r}"
        else:
            spec = classes[cls]
            place = age_place(rec["age_low"], rec["age_high"], spec.min_age, spec.max_age)
            age = _age_text(rec["age_low"], rec["age_high"])
            if spec.views is not None and rec["view"] not in spec.views:
                reason, detail = "view not in protocol", f"view {rec['view']!r}"
            elif place == "outside":
                reason, detail = "outside age range", f"{age}, range {_range_text(spec)}"
            elif place == "unknown" and spec.unknown_age == "exclude":
                reason, detail = "unknown age", f"{age}, range {_range_text(spec)}"
        if reason is None:
            chosen[index] = cls
            continue
        excluded.append({
            "path": rec["path"], "label": cls, "source": source,
            "patient_id": rec["patient_id"], "reason": reason, "detail": detail,
        })  # fmt: skip
    selected = manifest.loc[list(chosen)].copy()
    selected["label"] = list(chosen.values())
    selected = selected.sort_values("path", ignore_index=True)
    ex = pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS).sort_values(
        ["path", "reason"], ignore_index=True
    )
    both = selected.groupby("patient_id")["label"].nunique()
    if (both > 1).any():
        pids = sorted(both[both > 1].index)
        raise ProtocolError(
            f"protocol {protocol.name!r}: patient(s) {pids[:5]} have images in both classes"
        )
    for cls in CLASSES:
        if not (selected["label"] == cls).any():
            why = ex[ex["label"] == cls]["reason"].value_counts().to_dict()
            raise ProtocolError(
                f"protocol {protocol.name!r}: class {cls!r} is empty (manifest rows of its"
                f" sources excluded: {why or 'none: no manifest row matches its sources'})"
            )
    return selected, ex


def age_group(age_low, age_high) -> str:
    """``"adult"`` (>= :data:`ADULT_AGE` y), ``"child"`` (below), ``"unknown"`` or ``"mixed"``
    (a cohort range across 18), from a row's age bounds in years."""
    place = age_place(age_low, age_high, ADULT_AGE, None)
    if place == "unknown":
        return "unknown" if math.isnan(_num(age_low)) else "mixed"
    return "adult" if place == "inside" else "child"


def count_selection(selected: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per ``source``, ``label`` and age group (:func:`age_group`).

    Returns
    -------
    DataFrame with columns ``source, label, age_group, images, patients``, sorted.
    """
    bounds = zip(selected["age_low"], selected["age_high"], strict=True)
    groups = [age_group(lo, hi) for lo, hi in bounds]
    frame = selected.assign(age_group=groups)
    out = frame.groupby(["source", "label", "age_group"]).agg(
        images=("path", "size"), patients=("patient_id", "nunique")
    )
    return out.reset_index()
