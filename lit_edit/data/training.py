"""Training data for learned editors (MEND, KE): edits paired with locality inputs.

A learned editor's training step needs three things per edit: the edit itself (prompt ->
``target_new``), an *equivalent* input the edit should generalise to (a rephrase; MEND's
``edit_outer``) and an *unrelated* input whose predictions must not move (MEND's ``loc``,
KE's "other inputs" of the KL constraint). :class:`EditExample` holds those three as text;
the editor tokenizes them, because the tokenizer belongs to the base model.

A batch (:class:`EditBatch`) is a set of edits applied *together* in one step: with
``edits_per_batch > 1`` the editor learns batch editing (MEND's ``n_edits``).

Sources (``lit_edit.data.registry.read_requests``): ZsRE train (``zsre_train``, which has no
validation split of its own, so ``val_size`` records are held out of it, seeded) and
CounterFact train/val (``counterfact_train`` with ``val_name=counterfact_val``). The ZsRE
*eval* file is never used here: it is what ``edit.py`` measures on.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Sequence

import lightning as L
from torch.utils.data import DataLoader, Dataset

from lit_edit.data.registry import check_limit, read_requests
from lit_edit.data.resumable import ResumableShuffle, batches_per_epoch, resume_position
from lit_edit.data.schema import EditRequest

log = logging.getLogger(__name__)


@dataclass
class EditExample:
    """One training edit: the request, the rephrase its edit loss may use, one locality probe."""

    request: EditRequest
    rephrase: str
    loc_prompt: str
    loc_answer: str


@dataclass
class EditBatch:
    """Edits applied together in one training/validation step (plain text, no tensors)."""

    examples: list[EditExample]

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def requests(self) -> list[EditRequest]:
        return [e.request for e in self.examples]


def _first_locality(request: EditRequest) -> tuple[str, str] | None:
    for probes in request.locality.values():
        for probe in probes:
            return probe.prompt, probe.answer
    return None


def make_examples(requests: Sequence[EditRequest], where: str = "") -> list[EditExample]:
    """Pair every request with its first rephrase and its first locality probe.

    A request without a rephrase uses its own prompt (counted and logged); one without a
    locality probe borrows the next request's (cyclically), since any unrelated fact serves
    as a locality input. A dataset with no locality probe at all is an error: the locality
    term of the objective would be undefined.
    """
    locs = [_first_locality(r) for r in requests]
    if requests and not any(locs):
        raise ValueError(f"{where or 'dataset'}: no request has a locality probe; learned editors need "
                         "locality inputs for the KL term (choose a dataset with `loc`/`locality_prompt`)")
    examples, no_rephrase, borrowed = [], 0, 0
    for i, request in enumerate(requests):
        loc = locs[i]
        j = i
        while loc is None:
            j = (j + 1) % len(requests)
            loc = locs[j]
            borrowed += loc is not None
        rephrase = request.rephrase_prompts[0] if request.rephrase_prompts else request.prompt
        no_rephrase += not request.rephrase_prompts
        examples.append(EditExample(request, rephrase, loc[0], loc[1]))
    if no_rephrase or borrowed:
        log.warning("%s: %d request(s) without a rephrase use their prompt; %d borrowed another record's "
                    "locality probe", where or "dataset", no_rephrase, borrowed)
    return examples


class _Examples(Dataset[EditExample]):
    def __init__(self, examples: Sequence[EditExample]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> EditExample:
        return self.examples[index]


def collate_edits(examples: list[EditExample]) -> EditBatch:
    return EditBatch(list(examples))


class EditTrainingDataModule(L.LightningDataModule):
    """Train/validation edits for a learned editor.

    Args:
        name, split, path, data_root: the training records (registry names, as ``configs/data``).
        limit: keep at most this many training records (after the validation hold-out).
        seed: seeds the hold-out split and the training order of every epoch.
        edits_per_batch: edits applied together per step (batch editing when > 1).
        val_name, val_split, val_path: a separate validation set (``counterfact_val``); when
            ``val_name`` is None, ``val_size`` records of the training file are held out instead.
        val_size: size of that hold-out (ignored with ``val_name``); 0 disables validation.
        val_limit: keep at most this many validation records.
        num_workers: DataLoader workers (0: in the training process).
    """

    def __init__(
        self,
        name: str,
        split: str | None = None,
        path: str | None = None,
        limit: int | None = None,
        data_root: str | None = None,
        seed: int = 0,
        edits_per_batch: int = 1,
        val_name: str | None = None,
        val_split: str | None = None,
        val_path: str | None = None,
        val_size: int = 100,
        val_limit: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if edits_per_batch < 1:
            raise ValueError(f"edits_per_batch must be >= 1, got {edits_per_batch}")
        check_limit(limit)
        check_limit(val_limit)
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        # not sent to the logger: train.py logs the whole config, and the editor's `name` would clash
        self.save_hyperparameters(logger=False)
        self.train_examples: list[EditExample] | None = None
        self.val_examples: list[EditExample] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples is not None:
            return
        hp = self.hparams
        records = read_requests(hp.name, path=hp.path, split=hp.split, data_root=hp.data_root)
        if hp.val_name is not None:
            val = read_requests(hp.val_name, path=hp.val_path, split=hp.val_split, data_root=hp.data_root)
            train = list(records)
        else:
            if hp.val_size >= len(records):
                raise ValueError(f"val_size={hp.val_size} leaves no training records: {hp.name} has {len(records)}")
            order = list(range(len(records)))
            random.Random(hp.seed).shuffle(order)
            val = [records[i] for i in sorted(order[: hp.val_size])]
            train = [records[i] for i in sorted(order[hp.val_size :])]
        train = train[: hp.limit] if hp.limit is not None else train
        val = val[: hp.val_limit] if hp.val_limit is not None else val
        if not train:
            raise ValueError(f"no training records left in {hp.name} (limit={hp.limit})")
        self.train_examples = make_examples(train, f"{hp.name} (train)")
        self.val_examples = make_examples(val, f"{hp.val_name or hp.name} (validation)") if val else []
        log.info("learned-editor data: %d train / %d validation edits, %d per step",
                 len(self.train_examples), len(self.val_examples), hp.edits_per_batch)

    def train_dataloader(self) -> DataLoader:
        """Shuffled per epoch by ``seed``, so a run resumed mid-epoch continues the same order
        (:mod:`lit_edit.data.resumable`); under DDP each process takes its share."""
        self.setup("fit")
        assert self.train_examples is not None
        hp, trainer = self.hparams, self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        examples = _Examples(self.train_examples)
        epoch, done = resume_position(trainer, batches_per_epoch(len(examples), hp.edits_per_batch, world))
        order = ResumableShuffle(examples, hp.edits_per_batch, num_replicas=world, rank=rank, seed=hp.seed,
                                 epoch=epoch, batches_done=done)
        return DataLoader(examples, batch_size=hp.edits_per_batch, sampler=order, collate_fn=collate_edits,
                          num_workers=hp.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches, or an empty list (Lightning then skips validation)."""
        self.setup("fit")
        if not self.val_examples:
            return []
        return DataLoader(_Examples(self.val_examples), batch_size=self.hparams.edits_per_batch, shuffle=False,
                          collate_fn=collate_edits, num_workers=self.hparams.num_workers)
