"""Train a learnable editor:  python train.py editor=<name>

Composes configs/train.yaml and hands over to lit_edit.cli.train.run_train.
"""

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from lit_edit.cli.train import run_train

    run_train(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))
    main()
