"""W&B sweep files: valid structure, parameters that exist in the config, and one trial run as an agent runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweep").glob("*.yaml"))
COMMAND = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
METHODS = ("grid", "random", "bayes")
DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform_values",
                 "q_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal", "inv_log_uniform_values")


def sample(spec: dict):
    """One value of a sweep parameter, as a search method would pick it (the first / the minimum)."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][0]
    return spec["min"]


def agent_command(sweep: dict, args: dict) -> list[str]:
    """The command line ``wandb agent`` runs for one trial (wandb/wandb_agent.py: macros expanded the
    same way; ``${interpreter}`` is this interpreter instead of whatever ``python`` is on PATH)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in args.items()}})
    sweep_vars.update(env=["/usr/bin/env"], interpreter=[sys.executable], program=[sweep["program"]])
    command = []
    for chunk in sweep_utils.create_sweep_command(list(sweep["command"])):
        chunk = str(chunk)
        command += sweep_vars.get(chunk[2:-1]) or [] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return command


def test_there_are_sweeps_for_a_learned_and_a_training_free_editor():
    programs = {yaml.safe_load(p.read_text())["program"] for p in SWEEPS}
    assert {"train.py", "edit.py"} <= programs, programs


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_valid(path):
    sweep = yaml.safe_load(path.read_text())
    assert (ROOT / sweep["program"]).is_file()
    assert sweep["method"] in METHODS
    assert set(sweep["metric"]) == {"name", "goal"} and sweep["metric"]["goal"] in ("maximize", "minimize")
    assert sweep["command"] == COMMAND
    params = sweep["parameters"]
    assert params and any("value" not in spec for spec in params.values()), "nothing is swept"
    for key, spec in params.items():
        assert isinstance(spec, dict) and spec, key
        if "values" in spec:
            assert isinstance(spec["values"], list) and spec["values"], key
        elif "value" not in spec:
            assert spec.get("distribution") in DISTRIBUTIONS and spec["min"] < spec["max"], key
        if sweep["method"] == "grid":
            assert "distribution" not in spec, f"{key}: grid search needs discrete values"
    # every parameter is a valid override of the program's Hydra config
    overrides = [f"{k}={sample(v)}" for k, v in params.items()]
    config = "train" if sweep["program"] == "train.py" else "edit"
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config, overrides=overrides)
    for key, spec in params.items():
        if "." in key:
            assert OmegaConf.select(cfg, key) == sample(spec), key


# what makes a trial small enough for a test (added as if they were fixed sweep parameters)
TINY = {
    "train.py": {"model": "tiny_llama", "data.limit": 6, "train_data.val_size": 2, "trainer.max_steps": 2,
                 "trainer.val_check_interval": 2, "callbacks.progress_bar": "null"},
    "edit.py": {"model": "tiny_llama", "data.limit": 2},
}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_one_trial_runs_as_the_agent_runs_it(path, tmp_path, shared_data):
    sweep = yaml.safe_load(path.read_text())
    args = {k: sample(v) for k, v in sweep["parameters"].items()}
    args.update(TINY[sweep["program"]], **{"hydra.run.dir": str(tmp_path / "run"),
                                           "paths.checkpoint_dir": str(tmp_path / "ckpt")})
    command = agent_command(sweep, args)
    assert command[:3] == ["/usr/bin/env", sys.executable, sweep["program"]]
    assert all("=" in a and not a.startswith("-") for a in command[3:])
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # the sweep's metric reached the (offline) W&B run the agent would read it from
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert runs, "no offline W&B run"
    logged = history_keys(runs[0])
    assert sweep["metric"]["name"] in logged, sorted(logged)


def history_keys(path: Path) -> set[str]:
    """Metric names logged to an offline ``run-*.wandb`` file.

    The file is W&B's record log: a 7-byte file header, then LevelDB-style 32 KiB blocks of
    records, each with a 7-byte header (crc32, little-endian length, type FULL/FIRST/MIDDLE/LAST)
    and a serialised ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a header: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    keys = set()
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return keys
