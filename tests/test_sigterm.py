"""A SIGTERM (a scheduler's stop, a preemption) ends edit.py and train.py with status 1 and a
message saying how far the run got and what it kept, instead of Lightning's bare stop, which
exits 0 as if the run had finished; edit.py's kept records are what ``resume=`` continues from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _support.signals import terminate
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lit_edit.cli.edit import run_edit
from lit_edit.cli.train import run_train
from lit_edit.editors.ft import FineTuneEditor
from lit_edit.utils.signals import Interrupted

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config(name: str, monkeypatch, *overrides: str):
    monkeypatch.setenv("PROJECT_ROOT", str(CONFIGS.parent))
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=["model=tiny_llama", "logger=none", *overrides])


def stopped(run, *args) -> str:
    """The message of the run's stop, checked to be a SystemExit whose code is that message (status 1)."""
    with pytest.raises(Interrupted) as stop:
        run(*args)
    assert stop.value.code == str(stop.value) and str(stop.value)
    return str(stop.value)


@pytest.mark.parametrize("mode", ["single", "sequential"])
def test_a_stopped_edit_run_exits_non_zero_and_says_what_it_kept(mode, tmp_path, shared_data, monkeypatch, caplog):
    real, calls = FineTuneEditor.edit, []

    def terminated_after_two(self, *args, **kwargs):
        handle = real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # Lightning acts on it after this batch
            terminate()
        return handle

    monkeypatch.setattr(FineTuneEditor, "edit", terminated_after_two)
    cfg = config("edit", monkeypatch, "editor=ft_m", "editor.num_steps=1", "data=zsre", "data.limit=5",
                 "eval.fluency=false", f"eval.mode={mode}")
    message = stopped(run_edit, cfg, tmp_path)
    assert len(calls) == 2, "the edits went on after the SIGTERM"
    assert f"stopped after 2 of 5 edits ({mode} mode)" in message and "no summary was written" in message
    assert message in caplog.text  # also in the run's log file, beside the records it explains
    assert not (tmp_path / "summary.json").exists()
    records = tmp_path / "records.jsonl"
    if mode == "single":  # each edit's record is written once scored: both are kept
        assert f"{records} holds the 2 records scored so far" in message
        assert len(records.read_text().splitlines()) == 2
    else:  # its state is saved every eval.state_every (50) edits: none yet
        assert "saved none yet" in message and "none were written" in message and not records.exists()
        assert "a new hydra.run.dir" in message and not (tmp_path / "sequential_state.pt").exists()


_FT_EDIT = FineTuneEditor.edit


def stop_after(monkeypatch, n: int | None) -> list:
    """FT-M's edits send SIGTERM after the ``n``-th (None: never); returns the list of calls made."""
    calls = []

    def edit(self, *args, **kwargs):
        handle = _FT_EDIT(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == n:
            terminate()
        return handle

    monkeypatch.setattr(FineTuneEditor, "edit", edit)
    return calls


EDIT = ("editor=ft_m", "editor.num_steps=3", "editor.lr=3e-2", "data=zsre", "data.limit=6", "eval.fluency=false")


def edit_run(monkeypatch, run_dir: Path, *overrides: str):
    """run_edit as edit.py runs it, with the config saved where Hydra saves it (resume reads it)."""
    cfg = config("edit", monkeypatch, *EDIT, *overrides)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return cfg


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_a_stopped_edit_run_resumes_to_the_numbers_of_an_uninterrupted_one(mode, tmp_path, shared_data,
                                                                          monkeypatch):
    extra = ("eval=batch", "eval.batch_size=2") if mode == "batch" else ()
    whole = run_edit(edit_run(monkeypatch, tmp_path / "whole", *extra), tmp_path / "whole")
    calls = stop_after(monkeypatch, 2)
    message = stopped(run_edit, edit_run(monkeypatch, tmp_path / "stopped", *extra), tmp_path / "stopped")
    assert f"resume={tmp_path / 'stopped'} continues it" in message
    kept = (tmp_path / "stopped" / "records.jsonl").read_text().splitlines()
    assert len(kept) == (2 if mode == "single" else 4)

    calls = stop_after(monkeypatch, None)
    resumed_dir = tmp_path / "resumed"
    summary = run_edit(edit_run(monkeypatch, resumed_dir, *extra, f"resume={tmp_path / 'stopped'}"), resumed_dir)
    assert len(calls) == (4 if mode == "single" else 1), "edits the stopped run had made were made again"
    assert summary["n_edits"] == 6 and summary["resumed_edits"] == len(kept)
    for key in ("reliability", "generalization", "locality", "portability", "reliability_se", "locality_se"):
        assert summary[key] == pytest.approx(whole[key], abs=1e-6), key
    records = (resumed_dir / "records.jsonl").read_text().splitlines()
    assert records[: len(kept)] == kept and [json.loads(r)["edit"] for r in records] == list(range(6))
    assert (tmp_path / "stopped" / "records.jsonl").read_text().splitlines() == kept  # only read


SEQUENTIAL = ("eval.every_n=2", "eval.state_every=2", "eval.perplexity=true", "eval.perplexity_tokens=256",
              "eval.perplexity_window=64")


@pytest.mark.parametrize("mode,prune,eval_at", [("sequential", False, "every_n"), ("sequential", True, "every_n"),
                                                ("sequential_batch", False, "every_n"), ("sequential", False, "each_edit")])
def test_a_stopped_sequential_run_resumes_from_its_saved_state_to_the_numbers_of_an_uninterrupted_one(
        mode, prune, eval_at, tmp_path, shared_data, monkeypatch):
    extra = (f"eval.mode={mode}", f"eval.eval_at={eval_at}", *SEQUENTIAL,
             *(("eval.batch_size=2",) if mode == "sequential_batch" else ()),
             *(("editor.prune.enabled=true",) if prune else ()))  # PRUNE in place: the saved weights are restrained
    whole = run_edit(edit_run(monkeypatch, tmp_path / "whole", *extra), tmp_path / "whole")
    assert not (tmp_path / "whole" / "sequential_state.pt").exists()  # removed once the summary is written
    # the state is saved after edits 2 and 4. sequential: stopped after edit 3, which is lost; sequential_batch
    # (batches of 2): stopped after the first batch
    stopped_at, saved_at = (3, 2) if mode == "sequential" else (1, 2)
    stop_after(monkeypatch, stopped_at)
    message = stopped(run_edit, edit_run(monkeypatch, tmp_path / "stopped", *extra), tmp_path / "stopped")
    state = tmp_path / "stopped" / "sequential_state.pt"
    assert f"{state} holds the state after {saved_at} edits" in message
    assert f"resume={tmp_path / 'stopped'} continues it" in message
    before = state.read_bytes()

    # resumed and stopped again after one edit (batch): its own directory holds the state it resumed from,
    # or the one it saved since
    stop_after(monkeypatch, 1)
    again = tmp_path / "again"
    message = stopped(run_edit, edit_run(monkeypatch, again, *extra, f"resume={tmp_path / 'stopped'}"), again)
    saved_at = 2 if mode == "sequential" else 4
    assert f"{again / 'sequential_state.pt'} holds the state after {saved_at} edits" in message

    calls = stop_after(monkeypatch, None)
    resumed_dir = tmp_path / "resumed"
    summary = run_edit(edit_run(monkeypatch, resumed_dir, *extra, f"resume={again}"), resumed_dir)
    assert len(calls) == (4 if mode == "sequential" else 1), "edits the saved state holds were made again"
    assert summary["n_edits"] == 6 and summary["resumed_edits"] == saved_at
    compared = [k for k, v in whole.items() if isinstance(v, float) and k.split("@")[0].split("_se")[0] in
                ("reliability", "generalization", "locality", "portability", "perplexity", "update_sigma_max",
                 "update_sigma_max_before_prune", "cond_edited_max")]
    assert ("update_sigma_max_before_prune" in compared) == prune
    if eval_at == "every_n":  # a curve, with the model's perplexity at each point
        assert {"locality", "reliability_se", "perplexity@after_2", "perplexity@after_4", "perplexity@end"} <= set(compared)
        curves = [json.loads((d / "summary.json").read_text())["tables"]["edits over time"] for d in
                  (tmp_path / "whole", resumed_dir)]
        assert [p["n_edits"] for p in curves[1]] == [2, 4, 6] and "reliability" in curves[1][0]
        for theirs, mine in zip(*curves):
            assert mine == pytest.approx(theirs, abs=1e-6)
    else:  # each edit scored as it was made: the stopped run's scores come back from the state's records
        assert {"reliability@each_edit", "locality@each_edit", "reliability@end", "perplexity@end"} <= set(compared)
    for key in compared:
        assert summary[key] == pytest.approx(whole[key], abs=1e-6), key
    whole_records = [json.loads(r) for r in (tmp_path / "whole" / "records.jsonl").read_text().splitlines()]
    records = [json.loads(r) for r in (resumed_dir / "records.jsonl").read_text().splitlines()]
    assert [r["edit"] for r in records] == list(range(6))
    for mine, theirs in zip(records, whole_records):
        assert mine["reliability@end"] == pytest.approx(theirs["reliability@end"], abs=1e-6)
    assert state.read_bytes() == before  # the stopped run's state is only read
    assert not (resumed_dir / "sequential_state.pt").exists()


def test_resume_refuses_another_experiment_its_own_directory_a_finished_run_and_no_records(tmp_path, shared_data, monkeypatch):
    stop_after(monkeypatch, 2)
    stopped(run_edit, edit_run(monkeypatch, tmp_path / "stopped"), tmp_path / "stopped")
    resume = f"resume={tmp_path / 'stopped'}"
    with pytest.raises(ValueError, match=r"another experiment; these settings differ: editor.lr: 0.03 then"):
        run_edit(edit_run(monkeypatch, tmp_path / "a", resume, "editor.lr=1e-2"), tmp_path / "a")
    with pytest.raises(ValueError, match=r"these settings differ: eval.mode: 'single' then, 'sequential' now"):
        run_edit(edit_run(monkeypatch, tmp_path / "b", resume, "eval.mode=sequential"), tmp_path / "b")
    stop_after(monkeypatch, 2)  # a sequential run stopped before its first state save: nothing to resume
    stopped(run_edit, edit_run(monkeypatch, tmp_path / "seq", "eval.mode=sequential"), tmp_path / "seq")
    with pytest.raises(FileNotFoundError, match="no sequential_state.pt there"):
        run_edit(edit_run(monkeypatch, tmp_path / "d", f"resume={tmp_path / 'seq'}", "eval.mode=sequential"),
                 tmp_path / "d")
    with pytest.raises(ValueError, match="is this run's own directory"):
        run_edit(edit_run(monkeypatch, tmp_path / "stopped", resume), tmp_path / "stopped")
    (tmp_path / "stopped" / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="that run finished"):
        run_edit(edit_run(monkeypatch, tmp_path / "c", resume), tmp_path / "c")


def test_a_stopped_training_run_saves_the_step_it_stopped_at_and_says_how_to_resume(tmp_path, shared_data,
                                                                                     monkeypatch):
    ckpts = tmp_path / "ckpt"
    cfg = config("train", monkeypatch, "editor=mend", f"paths.checkpoint_dir={ckpts}", "trainer.max_steps=50",
                 "data.limit=8", "train_data.val_size=2", "trainer.accumulate_grad_batches=1",
                 "trainer.val_check_interval=2", "callbacks.latest_checkpoint.every_n_train_steps=100",
                 "callbacks.progress_bar=null", "callbacks.early_stopping=null",
                 "+callbacks.stop._target_=_support.signals.TerminateAtStep", "+callbacks.stop.step=3")
    message = stopped(run_train, cfg, tmp_path / "run")
    latest = ckpts / "mend-tiny_llama-step3.ckpt"  # saved at the stop, not at every_n_train_steps (100)
    assert message == f"train.py: training stopped at step 3; ckpt_path={latest} resumes it"
    assert torch.load(latest, weights_only=True)["global_step"] == 3
