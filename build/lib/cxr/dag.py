"""One pipeline, two drivers: check that the Snakefile and dvc.yaml describe the same steps, and
let Snakemake adopt outputs that DVC produced or restored.

Workflow tooling, outside the data flow: it imports nothing else from ``cxr``, and Snakemake and
DVC only inside the functions that need them. From the repository root::

    python -m cxr.dag check [ROOT...]  # every difference between the two DAGs; exit 1 if any
    python -m cxr.dag sync [-- ARGS]   # after dvc repro/pull/checkout/exp apply: `dvc status`
                                       # must be clean, then `snakemake --touch --forceall ARGS`
    python -m cxr.dag pull [-- ARGS]   # `dvc pull ARGS`, then sync

``check`` reads both tools' own view of the DAG, nothing hand-parsed: Snakemake's jobs through
its Python API (every job of the default target, forced, with the cores to give each rule its
declared threads), DVC's stages through ``dvc.repo.Repo`` (templating resolved). A Snakemake job
and a DVC stage are the same step when they have the same outputs. For each step it compares

- the rules (all, also those no target reaches; rules without outputs such as ``all`` are
  targets, not steps) with the stage names (``rule``, or ``rule@item`` for a ``foreach``);
- inputs with ``deps`` less code, outputs with ``outs`` + ``metrics`` + ``plots``;
- the command, as argv (redirections dropped, options in any order, ``True``/``true`` alike, an
  option given ``None`` the same as an option not given: the scripts read ``None`` as unset);
- the config keys read: DVC's ``params`` against the keys Snakemake's params depend on;
- code: the script in the command and every ``cxr`` module it imports (transitively) must be
  deps, and no other code.

Rules DVC cannot mirror are listed, with the reason, in ``SNAKEMAKE_ONLY`` (and the config
keys that switch them on in ``STRUCTURAL_KEYS``); the check leaves their jobs out.

Which keys a Snakemake param depends on is measured, not parsed: ``check`` builds the DAG
under the committed config.yaml and under probe configs, each changing a few keys to other
values the schema accepts. Every key is changed in a distinct set of exactly ``w`` probes (its
code); a param whose value changes in exactly the probes of one key's code reads that key. A
param that reads several keys changes in more probes than any code and is reported. Commands,
inputs and outputs are compared under every probe, so a stage templating ``${augment.seed}``
where the rule reads ``split.seed`` is caught even though both are 42 in config.yaml.
"""

from __future__ import annotations

import argparse
import ast
import copy
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from math import comb
from pathlib import Path

import yaml

CONFIG = "config.yaml"
SCHEMA = "schemas/config.schema.yaml"
#: What check copies into its scratch folder: enough for both tools to build their DAG.
WORKFLOW_FILES = ("Snakefile", "rules", "schemas", "envs", "dvc.yaml", CONFIG)
#: Cores for the DAG: more than any rule declares, so every job gets its declared threads.
MANY_CORES = 1024
#: Config keys Snakemake checks at parse time (they must name a real folder or file), with the
#: kind of probe value they need.
PATH_KEYS = {"mirror": "mirror", "pretrained_weights": "file"}
#: Rules with no DVC stage, and why. Their jobs are left out of the comparison.
SNAKEMAKE_ONLY = {
    "evaluate_external": "runs only when external.metadata is set; DVC has no optional stages",
    "seeds_summary": "runs only when seeds are listed; in DVC, repeat runs are experiments"
    " (dvc exp run -S config.yaml:split.seed=N ...)",
}
#: Keys that switch jobs on or off (the rules above): probes keep their config.yaml value.
STRUCTURAL_KEYS = frozenset({"external.metadata", "external.images", "seeds"})
NONE_WORDS = frozenset({"None", "null", ""})
BOOLEAN_WORDS = {"True": "true", "False": "false"}


@dataclass(frozen=True)
class Step:
    """One job (Snakemake) or stage (DVC) of the DAG, in comparable form."""

    name: str  # rule name with wildcards, or DVC stage name
    rule: str  # Snakemake rule; DVC stage name before '@'
    inputs: frozenset  # input files; DVC: deps that are not code
    outputs: frozenset  # outputs; DVC: outs, metrics and plots
    code: frozenset  # DVC: deps under scripts/ and cxr/ ending in .py; Snakemake: empty
    argv: tuple  # normalized command, see normalize_command
    params: dict  # Snakemake: param name -> value; DVC: config key -> value


# --- commands -------------------------------------------------------------------------------


def normalize_command(cmd: str) -> tuple:
    """A shell command as ``(words before the first option, sorted ((option, values), ...))``.

    Redirections (``> log``, ``2>&1``) are dropped, ``True``/``False`` read as ``true``/``false``
    and an option whose value is ``None``/``null``/empty as not given (the scripts' convention).
    """
    words = shlex.split(cmd)
    kept = []
    i = 0
    while i < len(words):
        if re.fullmatch(r"\d*[<>]&\d+", words[i]):
            i += 1
        elif re.fullmatch(r"\d*(<|>|>>)", words[i]):
            i += 2
        else:
            kept.append(words[i])
            i += 1
    head = []
    while kept and not kept[0].startswith("--"):
        head.append(kept.pop(0))
    options: dict[str, list[str]] = {}
    name = None
    for word in kept:
        if word.startswith("--"):
            name = word
            options.setdefault(name, [])
        else:
            options[name].append(BOOLEAN_WORDS.get(word, word))
    given = {k: tuple(v) for k, v in options.items() if not (len(v) == 1 and v[0] in NONE_WORDS)}
    return tuple(head), tuple(sorted(given.items()))


def script_of(argv: tuple) -> str | None:
    """The ``.py`` file a normalized command runs, if any."""
    return next((w for w in argv[0] if w.endswith(".py")), None)


def imported_modules(root: Path, script: str) -> set[str]:
    """Files of the ``cxr`` package that ``script`` imports, directly or through each other."""
    found: set[str] = set()
    todo = [root / script]

    def add(module: str) -> None:
        parts = module.split(".")
        if parts[0] != "cxr":
            return
        for i in range(1, len(parts) + 1):
            base = root.joinpath(*parts[:i])
            for path in (base / "__init__.py", base.with_suffix(".py")):
                if path.is_file() and path.relative_to(root).as_posix() not in found:
                    found.add(path.relative_to(root).as_posix())
                    todo.append(path)

    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                add(node.module)
                for alias in node.names:  # `from cxr import sources`: a module or a name
                    add(f"{node.module}.{alias.name}")
    return found


# --- config probes --------------------------------------------------------------------------


def leaves(config: dict, prefix: str = "") -> dict:
    """``{'a.b': value}`` for every non-mapping value (a list is one value)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def set_key(config: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


def _node(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _schema_node(schema: dict, key: str) -> dict:
    node = schema
    for part in key.split("."):
        node = _node(schema, node).get("properties", {}).get(part, {})
    return _node(schema, node)


def _candidates(schema: dict, value, node: dict, k: int):
    """Values other than ``value`` that ``node`` may accept; ``k`` keeps them apart per key."""
    node = _node(schema, node)
    for sub in node.get("oneOf", []) + node.get("anyOf", []):
        yield from _candidates(schema, value, sub, k)
    yield from (e for e in node.get("enum", []) if e != value)
    types = node.get("type", [])
    for kind in [types] if isinstance(types, str) else types:
        if kind == "boolean":
            yield not value if isinstance(value, bool) else True
        elif kind == "integer":
            base = value if isinstance(value, int) and not isinstance(value, bool) else 0
            lo = node.get("minimum", 0)
            yield from (base + 1000 + k, base + k, base - k, lo + k, lo)
        elif kind == "number":
            base = value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
            yield from (round(base + k / 1000, 6), round(base - k / 1000, 6), k / 1000)
        elif kind == "string":
            base = value if isinstance(value, str) else "probe"
            yield from (f"{base}-probe{k}", f"{k:064x}")
            for i, ch in enumerate(base):  # one character changed: fits most patterns
                swaps = "0123456789" if ch.isdigit() else "ab" if ch.isalpha() else ""
                yield from (base[:i] + c + base[i + 1 :] for c in swaps if c != ch)
        elif kind == "array" and isinstance(value, list) and value:
            for first in _candidates(schema, value[0], node.get("items", {}), k):
                yield [first, *value[1:]]
        elif kind == "null" and value is not None:
            yield None


def probe_value(schema: dict, base: dict, key: str, k: int, scratch: Path):
    """A value for ``key`` other than its value in ``base`` that the schema accepts."""
    import jsonschema

    if key in PATH_KEYS:
        path = scratch / f"probe-{key}"
        if PATH_KEYS[key] == "mirror":
            path.mkdir(exist_ok=True)
            (path / "SHA256SUMS").write_text("")
        else:
            path.write_bytes(b"")
        return str(path)
    value = leaves(base)[key]
    for candidate in _candidates(schema, value, _schema_node(schema, key), k):
        if candidate == value:
            continue
        trial = copy.deepcopy(base)
        set_key(trial, key, candidate)
        if jsonschema.Draft202012Validator(schema).is_valid(trial):
            return candidate
    raise ValueError(f"no other valid value for config key {key!r} (value {value!r})")


def probe_codes(n: int) -> tuple[int, list[tuple[int, ...]]]:
    """``(m, codes)``: m probes and, per key, the ``w`` probes that change it (w in 2, 3)."""
    best = min(
        (m, w) for w in (2, 3) for m in range(w, 64) if comb(m, w) >= n and comb(m - 1, w) < n
    )
    m, w = best
    return m, list(itertools.combinations(range(m), w))[:n]


def probe_configs(base: dict, schema: dict, scratch: Path) -> tuple[list[dict], dict]:
    """Probe configs, and ``{key: its code}`` (the indices of the probes that change it)."""
    keys = sorted(k for k in leaves(base) if k not in STRUCTURAL_KEYS)
    m, codes = probe_codes(len(keys))
    probes = [copy.deepcopy(base) for _ in range(m)]
    for k, (key, code) in enumerate(zip(keys, codes, strict=True), start=1):
        value = probe_value(schema, base, key, k, scratch)
        for i in code:
            set_key(probes[i], key, value)
    return probes, dict(zip(keys, codes, strict=True))


# --- the two DAGs ---------------------------------------------------------------------------


def snakemake_dag(root: Path) -> tuple[set[str], list[Step]]:
    """Rules with outputs, and one Step per job of the default target (all jobs forced);
    both without the SNAKEMAKE_ONLY rules."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        DAGSettings,
        OutputSettings,
        Quietness,
        ResourceSettings,
    )

    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=MANY_CORES),
            snakefile=root / "Snakefile",
            workdir=root,
        )
        workflow_api.dag(DAGSettings(forceall=True))
        # Snakemake 9 has no public accessor for the jobs of a DAG; these two calls are what
        # its own `--summary` does before reading `workflow.dag.jobs`.
        workflow = workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        workflow._build_dag()
        rules = {r.name for r in workflow.rules if r.output and r.name not in SNAKEMAKE_ONLY}
        steps = []
        for job in workflow.dag.jobs:
            if not job.output or job.rule.name in SNAKEMAKE_ONLY:
                continue
            wildcards = ",".join(
                f"{k}={v}" for k, v in sorted(job.wildcards_dict.items()) if v
            )  # the empty {run} of the top-level run is no wildcard worth naming
            steps.append(
                Step(
                    name=f"{job.rule.name}[{wildcards}]" if wildcards else job.rule.name,
                    rule=job.rule.name,
                    inputs=frozenset(map(str, job.input)),
                    outputs=frozenset(map(str, job.output)),
                    code=frozenset(),
                    argv=normalize_command(job.shellcmd or ""),
                    params=dict(job.params.items()),
                )
            )
    return rules, steps


def _is_code(path: str) -> bool:
    return path.endswith(".py") and path.split("/", 1)[0] in ("scripts", "cxr")


def dvc_dag(root: Path, config: dict) -> tuple[set[str], list[Step]]:
    """Stage names before '@', and one Step per (resolved) stage of root/dvc.yaml."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    raw = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    names = set(raw.get("stages") or {})
    values = leaves(config)
    repo = Repo(str(root), uninitialized=True)
    try:
        steps = []
        for stage in repo.index.stages:
            keys, inputs, code = set(), set(), set()
            for dep in stage.deps:
                if not isinstance(dep, ParamsDependency):
                    (code if _is_code(dep.def_path) else inputs).add(dep.def_path)
                elif Path(dep.def_path).name != CONFIG or not dep.params:
                    keys.add(f"<all of {dep.def_path}: list keys of {CONFIG}>")
                else:
                    for key in dep.params:
                        below = {k for k in values if k == key or k.startswith(f"{key}.")}
                        keys |= below or {f"<{key}: not in {CONFIG}>"}
            cmd = stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd or [])
            steps.append(
                Step(
                    name=stage.name,
                    rule=stage.name.split("@", 1)[0],
                    inputs=frozenset(inputs),
                    outputs=frozenset(out.def_path for out in stage.outs),
                    code=frozenset(code),
                    argv=normalize_command(cmd),
                    params={k: values.get(k) for k in sorted(keys)},
                )
            )
    finally:
        repo.close()
    return names, steps


# --- comparison -----------------------------------------------------------------------------


def _pair(smk: list[Step], dvc: list[Step], smk_rules: set, problems: dict) -> list:
    """(job, stage) pairs: equal outputs, else the stage of the same rule sharing the most."""
    left = {s.name: s for s in dvc}
    pairs, unmatched = [], []
    for job in smk:
        same = next((s for s in left.values() if s.outputs == job.outputs), None)
        if same is None:
            unmatched.append(job)
        else:
            pairs.append((job, left.pop(same.name)))
    for job in unmatched:
        near = max(
            (s for s in left.values() if s.rule == job.rule and s.outputs & job.outputs),
            key=lambda s: len(s.outputs & job.outputs),
            default=None,
        )
        if near is None:
            problems.setdefault((job.name, "pair"), f"{job.name}: no stage has its outputs")
            continue
        problems.setdefault(
            (job.name, "outputs"),
            f"{job.name} / stage {near.name}: outputs only in Snakemake"
            f" {sorted(job.outputs - near.outputs)}, outs only in DVC"
            f" {sorted(near.outputs - job.outputs)}",
        )
        pairs.append((job, left.pop(near.name)))
    for stage in left.values():
        if stage.rule in smk_rules:
            problems.setdefault((stage.name, "pair"), f"stage {stage.name}: no job has its outs")
    return pairs


def _compare_pair(job: Step, stage: Step, label: str, problems: dict) -> None:
    where = f"{job.name} / stage {stage.name}: "
    if stage.rule != job.rule:
        problems.setdefault(
            (job.name, "name"), f"{where}stage name must be {job.rule} or {job.rule}@<item>"
        )
    if job.inputs != stage.inputs:
        problems.setdefault(
            (job.name, "inputs"),
            f"{where}inputs only in Snakemake {sorted(job.inputs - stage.inputs)},"
            f" deps only in DVC {sorted(stage.inputs - job.inputs)}",
        )
    if job.argv[0] != stage.argv[0]:
        problems.setdefault(
            (job.name, "command"), f"{where}command {job.argv[0]} vs {stage.argv[0]} (DVC)"
        )
    smk_opts, dvc_opts = dict(job.argv[1]), dict(stage.argv[1])
    for opt in sorted(set(smk_opts) | set(dvc_opts)):
        if smk_opts.get(opt) != dvc_opts.get(opt):
            problems.setdefault(
                (job.name, opt),
                f"{label}{where}option {opt}: Snakemake {smk_opts.get(opt)},"
                f" DVC {dvc_opts.get(opt)}",
            )


def compare(root: Path) -> list[str]:
    """Every difference between root/Snakefile and root/dvc.yaml, as sentences ([] = agree).

    Each difference is reported once, under the first config that shows it: config.yaml, or
    ``[probe i]`` (``probe_configs``).
    """
    root = Path(root).resolve()
    problems: dict = {}
    base = yaml.safe_load((root / CONFIG).read_text())
    schema = yaml.safe_load((root / SCHEMA).read_text())
    with tempfile.TemporaryDirectory(prefix="cxr-dag-") as tmp:
        work, scratch = Path(tmp) / "work", Path(tmp) / "scratch"
        work.mkdir()
        scratch.mkdir()
        for name in WORKFLOW_FILES:
            src = root / name
            if src.is_dir():
                shutil.copytree(src, work / name)
            elif src.is_file():
                shutil.copy2(src, work / name)
        try:
            probes, codes = probe_configs(base, schema, scratch)
        except ValueError as exc:
            return [f"no probe configs: {exc}"]
        runs = []  # per config: ((job, stage) pairs, Snakemake jobs by name)
        for i, config in enumerate([base, *probes]):
            label = "" if i == 0 else f"[probe {i} of {len(probes)}] "
            (work / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
            try:
                smk_rules, smk = snakemake_dag(work)
                dvc_names, dvc = dvc_dag(work, config)
            except Exception as exc:  # noqa: BLE001 - reported, with the config that caused it
                problems.setdefault(
                    ("dag", type(exc).__name__),
                    f"{label}no DAG: {exc!r} (a new key Snakemake checks at parse time? add it"
                    " to PATH_KEYS or STRUCTURAL_KEYS in cxr/dag.py)",
                )
                continue
            if i == 0:
                for rule in sorted(smk_rules - dvc_names):
                    problems[(rule, "rule")] = f"rule {rule} has no stage in dvc.yaml"
                for name in sorted(dvc_names - smk_rules):
                    problems[(name, "rule")] = f"stage {name} in dvc.yaml has no rule"
            pairs = _pair(smk, dvc, smk_rules, problems)
            for job, stage in pairs:
                _compare_pair(job, stage, label, problems)
                if i == 0:
                    _compare_code(root, job, stage, problems)
            runs.append((pairs, {s.name: s for s in smk}))
        if len(runs) == 1 + len(probes):
            _compare_keys(runs, codes, problems)
    return list(problems.values())


def _compare_code(root: Path, job: Step, stage: Step, problems: dict) -> None:
    script = script_of(job.argv)
    if script is None:
        return
    want = {script} | imported_modules(root, script)
    if stage.code != want:
        problems[(stage.name, "code")] = (
            f"stage {stage.name}: code deps missing {sorted(want - stage.code)},"
            f" not imported by {script} {sorted(stage.code - want)}"
        )


def _compare_keys(runs: list, codes: dict, problems: dict) -> None:
    """Config keys each Snakemake job's params depend on (by probe) == the stage's params."""
    by_code = {code: key for key, code in codes.items()}
    base_pairs, probe_jobs = runs[0][0], [jobs for _, jobs in runs[1:]]
    for job, stage in base_pairs:
        keys = set()
        for param, value in job.params.items():
            changed = tuple(
                i
                for i, jobs in enumerate(probe_jobs)
                if job.name in jobs and jobs[job.name].params.get(param) != value
            )
            if not changed:
                continue  # not from config
            if changed not in by_code:
                problems[(job.name, param)] = (
                    f"{job.name}: param {param} depends on several config keys or on part of"
                    f" one (changes in probes {[i + 1 for i in changed]}); DVC can only"
                    " template single keys"
                )
                continue
            keys.add(by_code[changed])
        if keys != set(stage.params):
            problems[(job.name, "params")] = (
                f"{job.name} / stage {stage.name}: config keys read only by Snakemake"
                f" {sorted(keys - set(stage.params))}, params only in dvc.yaml"
                f" {sorted(set(stage.params) - keys)}"
            )


# --- keeping Snakemake in step after DVC ----------------------------------------------------


def _run(cmd: list[str], root: Path, **kwargs) -> subprocess.CompletedProcess:
    print("+", shlex.join(cmd), flush=True)
    return subprocess.run(cmd, cwd=root, **kwargs)


def sync(root: Path, snakemake_args: list[str]) -> int:
    """Refuse unless ``dvc status`` is clean; then ``snakemake --touch --forceall``.

    DVC restores files by content and in no particular order, and leaves no Snakemake metadata.
    Once DVC has verified that every output matches its deps, params and command, touching all
    outputs in DAG order gives Snakemake the same view: file times in order (nothing to do),
    and metadata with the current params and code (so a later config change reruns what it
    should). `.snakemake_timestamp` files that --touch writes into directory outputs are in
    .dvcignore.
    """
    status = _run([sys.executable, "-m", "dvc", "status", "--json"], root, capture_output=True)
    if status.returncode != 0:
        sys.stderr.write(status.stderr.decode())
        return status.returncode
    changed = json.loads(status.stdout.decode() or "{}")
    if changed:
        sys.stderr.write(
            "dvc status is not clean, so outputs do not match their steps; run `dvc repro` or"
            f" `dvc pull` first:\n{json.dumps(changed, indent=2)}\n"
        )
        return 1
    touch = [sys.executable, "-m", "snakemake", "--touch", "--forceall", "--cores", "1"]
    return _run([*touch, *snakemake_args], root).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxr.dag", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="compare Snakefile and dvc.yaml; exit 1 on differences")
    c.add_argument("roots", nargs="*", default=[Path(".")], type=Path, help="checkouts")
    c.add_argument("--json", action="store_true", help="print {root: [differences]}")
    s = sub.add_parser("sync", help="dvc status must be clean; then snakemake --touch --forceall")
    s.add_argument("snakemake_args", nargs="*", help="after --: more snakemake arguments")
    u = sub.add_parser("pull", help="dvc pull, then sync")
    u.add_argument("dvc_args", nargs="*", help="after --: dvc pull arguments (targets, -r)")
    a = p.parse_args(argv)
    if a.command == "check":
        found = {str(root): compare(root) for root in a.roots}
        if a.json:
            print(json.dumps(found, indent=2))
        else:
            for root, problems in found.items():
                agree = "Snakefile and dvc.yaml agree (steps, inputs, outputs, commands, params)"
                print("\n".join(problems) or f"{root}: {agree}")
        return 1 if any(found.values()) else 0
    root = Path.cwd()
    if a.command == "pull":
        pulled = _run([sys.executable, "-m", "dvc", "pull", *a.dvc_args], root)
        if pulled.returncode != 0:
            return pulled.returncode
        return sync(root, [])
    return sync(root, a.snakemake_args)


if __name__ == "__main__":
    sys.exit(main())
