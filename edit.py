"""Edit + evaluate:  python edit.py editor=ft_m data=zsre data.limit=100

Composes configs/edit.yaml and hands over to lit_edit.cli.edit.run_edit.
"""

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="edit")
def main(cfg: DictConfig) -> None:
    from lit_edit.cli.edit import run_edit

    run_edit(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))
    main()
