"""constraints.txt pins every package that pyproject.toml names, its extras' too, so that
`pip install -c constraints.txt -e ".[dev,notebook]"` installs the versions tested together."""

from __future__ import annotations

import re
import tomllib

from conftest import PROJECT_ROOT


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_dependency_and_extra_is_pinned():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"notebook", "ipykernel"} <= set(extras["notebook"])  # what kedro jupyter needs
    named = [*project["dependencies"], *(d for deps in extras.values() for d in deps)]
    pins = {
        normalized(line.split("==")[0])
        for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    missing = {normalized(re.split(r"[\[<>=~!; ]", d)[0]) for d in named} - pins
    assert missing == set()
