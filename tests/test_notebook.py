"""notebooks/walkthrough.ipynb: committed without outputs, written against the public API, and
executed top to bottom in its quick setting by a real Jupyter kernel (nbclient), every figure made."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dermedge_testing import DATA, REPO

NOTEBOOK = REPO / "notebooks" / "walkthrough.ipynb"
FIGURES = (  # the tags of the cells that must show a figure (image/png)
    "figure:photos",
    "figure:contract",
    "figure:augmented",
    "figure:curves",
    "figure:confusion",
    "figure:roc",
    "figure:predictions",
    "figure:int8-vs-keras",
    "figure:derm7pt-roc",
    "figure:per-diagnosis",
    "figure:site-roc",
    "figure:adapt-roc",
)


def _cells() -> list[dict]:
    """The notebook's cells as stored in the repository."""
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]


def _code(cells: list[dict]) -> list[str]:
    """The source of each code cell."""
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_notebook_is_committed_without_outputs() -> None:
    stored = [c for c in _cells() if c["cell_type"] == "code"]
    assert stored, "the notebook has no code cells"
    with_output = [i for i, c in enumerate(stored) if c.get("outputs") or c.get("execution_count")]
    assert not with_output, f"code cells {with_output} carry outputs: clear them before committing"


def test_notebook_uses_the_public_api_and_tags_every_figure() -> None:
    code = "\n".join(_code(_cells()))
    deep = re.findall(r"(?:from|import) (dermedge\.\w+\.\w+)", code)
    assert not deep, f"the notebook imports deep modules {deep}: re-export the names instead"
    assert not re.search(r"^\s*!|subprocess|os\.system", code, re.M), "no shell calls"
    tags = [t for c in _cells() for t in c.get("metadata", {}).get("tags", [])]
    assert sorted(tags) == sorted(FIGURES)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_in_the_quick_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[notebook]'")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[notebook]'")
    kernelspec = pytest.importorskip("ipykernel.kernelspec", reason="pip install -e '.[notebook]'")
    pytest.importorskip("tensorflow", reason="the notebook trains: pip install -e '.[train]'")
    for name in ("isic-mvb", "isic2020", "derm7pt", "ham10000", "isic2017"):
        if not (DATA / name).is_dir():
            pytest.skip(f"real data not found at {DATA / name} (set DERMEDGE_DATA)")
    monkeypatch.setenv("DERMEDGE_NOTEBOOK", "quick")
    monkeypatch.setenv("DERMEDGE_DATA", str(DATA))
    monkeypatch.setenv("DERMEDGE_RUNS", str(tmp_path / "runs"))
    # a kernel of this very interpreter (not whatever `python3` kernel another install put first)
    kernelspec.write_kernel_spec(tmp_path / "jupyter" / "kernels" / "dermedge-test")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="dermedge-test",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # CellExecutionError (with the cell and its traceback) on any error

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors
    pngs = {
        tag: sum("image/png" in o.get("data", {}) for o in c.outputs)
        for c in nb.cells
        if c.cell_type == "code"
        for tag in c.metadata.get("tags", [])
    }
    assert pngs == {tag: pngs.get(tag, 0) for tag in FIGURES}
    assert all(pngs[tag] >= 1 for tag in FIGURES), f"figures missing: {pngs}"
    for model in ("walkthrough-site.tflite", "walkthrough-adapted.tflite"):
        assert (tmp_path / "runs" / "convert" / model).is_file()


def _resolve(modules: str) -> str:
    """Run a fresh interpreter that resolves every public name of `modules` (comma-separated
    package names under dermedge) and prints whether TensorFlow got imported."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules.split(',')!r}:\n"
        "    m = importlib.import_module('dermedge.' + name)\n"
        "    [getattr(m, n) for n in m.__all__]\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_public_names_of_data_edge_convert_resolve_without_tensorflow() -> None:
    assert _resolve("data,edge,convert") == "False"


@pytest.mark.slow
def test_public_names_of_train_resolve() -> None:
    pytest.importorskip("tensorflow", reason="pip install -e '.[train]'")
    assert _resolve("train") == "True"
