"""``python edit.py mode=value_ceiling editor=memit data=zsre data.limit=100``: the value ceiling.

Optimises the editor's value targets for the data slice on the unedited model (from the value
cache when the editor has one), adds each delta at the subject's last token of its edit prompt
and rephrases, and writes the target token accuracies (:mod:`lit_edit.editors.locate.ceiling`)
to ``ceiling.json`` / ``ceiling.md`` in the run directory. No weight is written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lit_edit.cli.common import build_model, refuse_existing_results
from lit_edit.editors.locate.base import LocateEditor
from lit_edit.editors.locate.ceiling import ceiling_table, value_ceiling
from lit_edit.evaluation.loop import EvalConfig

log = logging.getLogger(__name__)


def run_value_ceiling(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    from lit_edit.cli.edit import build_datamodule, build_editor

    out = Path(run_dir)
    refuse_existing_results(out, ("ceiling.json", "ceiling.md"))
    editor = build_editor(cfg)
    if not isinstance(editor, LocateEditor):
        raise TypeError(f"mode=value_ceiling needs a locate-then-edit editor with a value target "
                        f"(rome, memit, pmet, alphaedit); editor={cfg.editor.name} has none")
    eval_cfg = EvalConfig(**OmegaConf.to_container(cfg.eval, resolve=True))
    datamodule = build_datamodule(cfg, eval_cfg)
    datamodule.setup("test")
    requests = [r for batch in datamodule.test_dataloader() for r in batch]
    model, tokenizer, layout = build_model(cfg)
    model.eval()
    targets = editor.initial_value_targets(model, tokenizer, requests)
    module, layer = editor.value_site
    scales = [float(s) for s in cfg.ceiling.scales]
    rows = value_ceiling(model, tokenizer, layout, module, layer, requests, targets.delta, scales)
    site = f"{layout.name(module, layer)} ({cfg.editor.name}, {cfg.model.spec.name}, {cfg.data.name} x{len(requests)})"
    table = ceiling_table(rows, site)
    out.mkdir(parents=True, exist_ok=True)
    result = {"site": site, "module": module, "layer": layer, "editor": cfg.editor.name, "data": cfg.data.name,
              "requests": len(requests), "rows": [r.as_dict() for r in rows]}
    (out / "ceiling.json").write_text(json.dumps(result, indent=2))
    (out / "ceiling.md").write_text(table + "\n")
    print(table)
    log.info("value ceiling written to %s", out)
    return result
