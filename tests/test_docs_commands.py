"""Every `python -m ...` command the docs and examples show names a module that runs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", REPO / "Makefile", *sorted((REPO / "docs").glob("*.md")),
        *sorted(REPO.glob("*/README.md")), *sorted(REPO.glob("data/*/README.md")),
        *sorted((REPO / "examples").iterdir()), *sorted((REPO / "scripts").glob("*.sh"))]
OURS = ("vllm_nfoxhead", "conversion")


def shown_commands() -> list[tuple[str, str]]:
    """(file, module) for each `python -m MODULE` of this project in the docs."""
    found = set()
    for path in DOCS:
        for module in re.findall(r"python3? -m ([\w.]+)", path.read_text()):
            if module.split(".")[0] in OURS:
                found.add((str(path.relative_to(REPO)), module))
    return sorted(found)


def test_the_docs_show_commands():
    assert len(shown_commands()) >= 10


@pytest.mark.parametrize(("doc", "module"), shown_commands())
def test_shown_command_is_runnable(doc: str, module: str):
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{doc} shows `python -m {module}`, which does not exist"
    if spec.submodule_search_locations is not None:  # a package runs through its __main__
        assert importlib.util.find_spec(module + ".__main__") is not None, \
            f"{doc} shows `python -m {module}`, a package without __main__"
    else:
        assert "__main__" in Path(spec.origin).read_text(), \
            f"{doc} shows `python -m {module}`, which has no `if __name__ == \"__main__\"`"
