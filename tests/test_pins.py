"""Pins in one place: ``pyproject.toml`` holds the versions, ``envs/cxr.yaml`` must repeat them.

The conda environment of the rules (``snakemake --sdm conda``) installs with pip exactly the
project's runtime dependencies at the versions ``pyproject.toml`` pins, except the workflow
tools in :data:`NOT_IN_RULE_ENV`, which run the rules rather than run inside them. A pin that
differs, or a dependency one file has and the other lacks, fails naming the package.
"""

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from .conftest import REPO

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")

#: Runtime dependencies of the project that the rules' environment leaves out, and why.
NOT_IN_RULE_ENV = {
    "snakemake": "runs the rules; no script imports it",
    "dvc": "runs the stages; no script imports it",
}


def pins(requirements) -> dict[str, str]:
    """``{canonical name: specifier}`` of requirement strings, e.g. ``{"keras": "==3.15.1"}``."""
    out = {}
    for text in requirements:
        req = Requirement(text)
        out[canonicalize_name(req.name)] = str(req.specifier)
    return out


def pin_differences(pyproject_text: str, env_text: str) -> list[str]:
    """Every disagreement between the two files, one message per package (empty: they agree)."""
    project = tomllib.loads(pyproject_text)["project"]
    env = yaml.safe_load(env_text)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    want, have = pins(project["dependencies"]), pins(pip)
    problems = []
    for name, spec in sorted(want.items()):
        if name in NOT_IN_RULE_ENV:
            if name in have:
                problems.append(f"{name}: in envs/cxr.yaml, but listed in NOT_IN_RULE_ENV")
        elif name not in have:
            problems.append(f"{name}: pyproject.toml pins {spec}, envs/cxr.yaml lacks it")
        elif have[name] != spec:
            problems.append(f"{name}: pyproject.toml pins {spec}, envs/cxr.yaml {have[name]}")
        elif not spec.startswith("=="):
            problems.append(f"{name}: {spec} is not an exact pin (==)")
    for name in sorted(set(have) - set(want)):
        problems.append(f"{name}: envs/cxr.yaml pins {have[name]}, pyproject.toml lacks it")
    python = next(
        str(d).split("=", 1)[1] for d in env["dependencies"] if str(d).startswith("python=")
    )
    if python not in SpecifierSet(project["requires-python"]):
        problems.append(f"python: envs/cxr.yaml {python} outside {project['requires-python']}")
    return problems


def read(name: str) -> str:
    return (REPO / name).read_text()


def test_env_repeats_the_pyproject_pins():
    assert pin_differences(read("pyproject.toml"), read("envs/cxr.yaml")) == []


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("keras==3.15.1", "keras==3.15.0", "keras: pyproject.toml pins ==3.15.1, envs/cxr.yaml"),
        ("      - Jinja2==3.1.6\n", "", "jinja2: pyproject.toml pins ==3.1.6, envs/cxr.yaml lacks"),
        ("  - pip:\n", "  - pip:\n      - requests==2.0\n", "requests: envs/cxr.yaml pins ==2.0"),
        ("  - pip:\n", "  - pip:\n      - dvc==3.67.1\n", "dvc: in envs/cxr.yaml"),
        ("python=3.11", "python=3.9", "python: envs/cxr.yaml 3.9 outside >=3.10"),
    ],
    ids=["version", "missing", "extra", "workflow-tool", "python"],
)
def test_a_planted_difference_is_named(old, new, message):
    env = read("envs/cxr.yaml")
    assert old in env
    problems = pin_differences(read("pyproject.toml"), env.replace(old, new, 1))
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_a_loose_pin_is_named():
    text = read("pyproject.toml").replace('"pooch==1.9.0"', '"pooch>=1.9"')
    env = read("envs/cxr.yaml").replace("pooch==1.9.0", "pooch>=1.9")
    assert pin_differences(text, env) == ["pooch: >=1.9 is not an exact pin (==)"]
