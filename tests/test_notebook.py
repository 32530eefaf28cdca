"""notebooks/quickstart.ipynb runs top to bottom (on the real SmolLM2 model)."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_executes():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(str(o.get("text", "")) + str(o.get("data", "")) for c in nb.cells for o in c.get("outputs", []))
    assert "reliability" in outputs and "undone" in outputs
