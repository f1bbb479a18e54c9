"""The package's import graph: no module imports another in a loop, no import runs up the layers
(``cli/commands -> (executors, app, demo) -> benchmark -> tasks -> (pipeline, masks, data) -> model``), every
package has its layer, and docs/architecture.md's module map is the one the code gives. The checker itself is
shown to catch a cycle and an upward import in a small package made here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "module_map.py"


@pytest.fixture(scope="module")
def module_map():
    spec = importlib.util.spec_from_file_location("module_map", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["module_map"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def graph(module_map):
    return module_map.read_graph()


def test_no_import_cycle(module_map, graph):
    assert module_map.cycles(graph) == []


def test_no_import_runs_up_the_layers(module_map, graph):
    assert module_map.upward_imports(graph) == []


def test_every_package_has_a_layer(module_map, graph):
    assert module_map.unplaced(graph) == []
    assert (
        len(graph.files) > 50
        and "dualanodiff.benchmark" in graph.imports["dualanodiff.executors.ray_benchmark"]
    )


def test_the_documented_module_map_is_the_codes(module_map, graph):
    documented = module_map.documented_map()
    assert documented == module_map.module_map(graph), "run: python scripts/module_map.py --write"
    for name in {module_map.top(graph, m) for m in graph.files} - {"__init__"}:
        assert f"`{name}/`" in documented or f"`{name}.py`" in documented, name


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_checker_sees_cycles_and_upward_imports(module_map, tmp_path):
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "def f():\n    from .high import g  # lazy, still a dependency\n",
            "high.py": "from pkg.low import f\n",
            "sub/__init__.py": "from .a import x\n",
            "sub/a.py": "from .b import y\nx = 1\n",
            "sub/b.py": "from . import a\ny = 2\n",
            "other.py": "import os\n",
        },
    )
    graph = module_map.read_graph(package)
    assert graph.imports["pkg.high"] == {"pkg.low"} and graph.imports["pkg.low"] == {"pkg.high"}
    assert module_map.cycles(graph) == [["pkg.high", "pkg.low"], ["pkg.sub.a", "pkg.sub.b"]]
    layers = (("top", ("high",)), ("bottom", ("low", "sub", "__init__")))
    assert module_map.upward_imports(graph, layers) == ["pkg.low -> pkg.high"]
    assert module_map.unplaced(graph, layers) == ["other"]
