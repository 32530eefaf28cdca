"""Metric definitions: one function or class per metric, nothing evaluated twice.

Per-probe functions take the tensors of a padded, teacher-forced batch (``N`` probes, ``T``
positions, vocabulary ``V``) that the scorer has already aligned so that position ``t`` of the
logits / predictions scores ``label_ids[:, t]``; ``mask`` is True exactly on the answer
(target) positions. They are pure, vectorised and work on any device.

The torchmetrics classes aggregate per-probe values over a run and sync under DDP.
Aggregation is *per edit*: probes are first averaged within their edit, then edits are
averaged, so an edit with ten neighbourhood probes weighs the same as an edit with one.
An aggregate that never received a value is NaN (reported as null), never 0.
"""

from __future__ import annotations

import re
import string

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "token_accuracy",
    "token_agreement",
    "mean_token_nll",
    "kl_divergence",
    "normalize_answer",
    "exact_match",
    "PerEditMean",
    "ProbabilityComparison",
    "MeanValue",
]


# ---------------------------------------------------------------------------------------------
# per-probe values
# ---------------------------------------------------------------------------------------------
def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values[i, t]`` over ``t`` with ``mask[i, t]``; float ``[N]``.

    Values at unmasked positions are never read (they may be inf/NaN, e.g. at padding).
    Raises ValueError for a row without any masked position.
    """
    if values.shape != mask.shape or mask.dim() != 2:
        raise ValueError(f"expected matching [N, T] tensors, got {tuple(values.shape)} and mask {tuple(mask.shape)}")
    mask = mask.bool()
    counts = mask.sum(dim=-1)
    if (counts == 0).any():
        rows = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"probe rows {rows} have no answer positions in the mask (a bug upstream)")
    values = torch.where(mask, values.float(), torch.zeros((), dtype=torch.float32, device=values.device))
    return values.sum(dim=-1) / counts


def token_accuracy(pred_ids: Tensor, label_ids: Tensor, mask: Tensor) -> Tensor:
    """Teacher-forced token accuracy per probe (reliability / generalization / portability).

    ``acc[i] = sum_t mask[i,t] * [pred_ids[i,t] == label_ids[i,t]] / sum_t mask[i,t]``,
    i.e. the share of the probe's answer tokens whose argmax prediction equals the label.
    Padding and prompt positions (mask False) never count, even where pred == label.

    Args: ``pred_ids``, ``label_ids``: long ``[N, T]``; ``mask``: bool ``[N, T]``.
    Returns: float ``[N]`` in [0, 1]. Raises ValueError if a row has an empty mask.
    """
    if pred_ids.shape != label_ids.shape:
        raise ValueError(f"pred_ids {tuple(pred_ids.shape)} and label_ids {tuple(label_ids.shape)} differ in shape")
    return _masked_mean(pred_ids == label_ids, mask)


def token_agreement(pre_ids: Tensor, post_ids: Tensor, mask: Tensor) -> Tensor:
    """Locality per probe: share of answer positions whose post-edit argmax equals the
    pre-edit argmax of the same model on the same probe.

    ``agree[i] = sum_t mask[i,t] * [post_ids[i,t] == pre_ids[i,t]] / sum_t mask[i,t]``.
    Same shapes, range and empty-mask error as :func:`token_accuracy`.
    """
    return token_accuracy(post_ids, pre_ids, mask)


def mean_token_nll(logits: Tensor, label_ids: Tensor, mask: Tensor) -> Tensor:
    """Mean negative log-likelihood (nats) of the labels over the answer positions.

    ``nll[i] = -sum_t mask[i,t] * log softmax(logits[i,t])[label_ids[i,t]] / sum_t mask[i,t]``
    with ``logits[:, t]`` already predicting ``label_ids[:, t]``. Computed in float32; labels
    at unmasked positions may hold anything (e.g. -100). CounterFact's probability comparison
    P(new) > P(true) is ``nll_new < nll_true`` (ROME compares mean per-token NLL).

    Args: ``logits``: float ``[N, T, V]``; ``label_ids``: long ``[N, T]``; ``mask``: bool ``[N, T]``.
    Returns: float ``[N]``, >= 0.
    """
    if logits.dim() != 3 or logits.shape[:2] != label_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match label_ids {tuple(label_ids.shape)}")
    labels = label_ids.masked_fill(~mask.bool(), 0)
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    return _masked_mean(nll.view_as(labels), mask)


def kl_divergence(pre_logits: Tensor, post_logits: Tensor, mask: Tensor) -> Tensor:
    """ConvSent locality: mean over answer positions of KL(pre || post), in nats.

    ``kl[i] = sum_t mask[i,t] * sum_v p_pre(v) (log p_pre(v) - log p_post(v)) / sum_t mask[i,t]``
    where ``p = softmax(logits[i, t])``, computed in float32.

    Args: ``pre_logits``, ``post_logits``: float ``[N, T, V]``; ``mask``: bool ``[N, T]``.
    Returns: float ``[N]``, >= 0 (0 when the distributions are identical).
    """
    if pre_logits.shape != post_logits.shape or pre_logits.dim() != 3:
        raise ValueError(f"pre_logits {tuple(pre_logits.shape)} and post_logits {tuple(post_logits.shape)} differ")
    log_pre = pre_logits.float().log_softmax(dim=-1)
    log_post = post_logits.float().log_softmax(dim=-1)
    kl = F.kl_div(log_post, log_pre, reduction="none", log_target=True).sum(dim=-1)
    return _masked_mean(kl, mask)


_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop ASCII punctuation, drop the articles a/an/the,
    collapse whitespace (in that order, as in the SQuAD v1.1 evaluation script)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(generated: list[str], answers: list[list[str]]) -> Tensor:
    """Exact match of generations against answer aliases (alternative protocol).

    ``em[i] = 1`` if for some alias ``a`` of ``answers[i]``, with ``g = normalize_answer(generated[i])``
    and ``a' = normalize_answer(a)`` non-empty: ``g == a'`` or ``g`` starts with ``a' + " "``
    (the generation begins with the whole alias as complete words; what follows is ignored, as a
    greedy generation runs past the answer). So "Paris, France." matches "paris" but
    "Parisian" does not. An alias that normalises to "" (e.g. "The") never matches.

    Returns: float ``[N]`` of 0/1 on the CPU.
    """
    if len(generated) != len(answers):
        raise ValueError(f"{len(generated)} generations but {len(answers)} answer lists")

    def matches(text: str, aliases: list[str]) -> bool:
        g = normalize_answer(text)
        norm = (normalize_answer(a) for a in aliases)
        return any(a and (g == a or g.startswith(a + " ")) for a in norm)

    return torch.tensor([float(matches(g, a)) for g, a in zip(generated, answers)])


# ---------------------------------------------------------------------------------------------
# aggregates (torchmetrics)
# ---------------------------------------------------------------------------------------------
class PerEditMean(Metric):
    """Mean over distinct edits of the mean of that edit's probe values.

    ``compute() = mean_e ( mean_{j: edit_ids[j] == e} values[j] )`` over all edits seen (on all
    ranks). NaN if nothing was ever added. One instance per metric (reliability,
    generalization, locality, portability, portability/<group>, ...).

    States are concatenated lists (``dist_reduce_fx="cat"``); the same edit id on several ranks
    is one edit. Edit ids are kept in the metric's float dtype, so that a rank with no data
    (which torchmetrics fills with an empty float tensor) gathers with the same dtype; they must
    therefore be integers exactly representable in it (|id| <= 2**24 for float32).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("edit_ids", default=[], dist_reduce_fx="cat")

    def update(self, values: Tensor, edit_ids: Tensor) -> None:
        """Add per-probe ``values`` (float ``[N]``) of the edits ``edit_ids`` (long ``[N]``)."""
        values, edit_ids = torch.as_tensor(values).detach().flatten(), torch.as_tensor(edit_ids).flatten()
        if values.shape != edit_ids.shape:
            raise ValueError(f"{values.numel()} values but {edit_ids.numel()} edit ids")
        if edit_ids.numel() and edit_ids.abs().max() > 2 / torch.finfo(self.dtype).eps:
            raise ValueError(f"edit ids beyond {2 / torch.finfo(self.dtype).eps:.0f} are not exact in {self.dtype}")
        self.values.append(values.to(device=self.device, dtype=self.dtype))
        self.edit_ids.append(edit_ids.to(device=self.device, dtype=self.dtype))

    def _edit_means(self) -> Tensor:
        """One value per distinct edit (empty when nothing was added)."""
        if len(self.values) == 0:  # an empty list, or an empty tensor after a DDP sync
            return torch.zeros(0, dtype=self.dtype, device=self.device)
        values, edit_ids = dim_zero_cat(self.values), dim_zero_cat(self.edit_ids)
        if values.numel() == 0:
            return values
        _, group = torch.unique(edit_ids, return_inverse=True)
        n_edits = int(group.max()) + 1
        sums = torch.zeros(n_edits, dtype=values.dtype, device=values.device).index_add_(0, group, values)
        counts = torch.bincount(group, minlength=n_edits)
        return sums / counts

    def _mean_and_error_of(self, means: Tensor) -> tuple[Tensor, Tensor]:
        """The mean of per-edit ``means`` (NaN if none) and its standard error (NaN below two)."""
        nan = torch.tensor(float("nan"), device=self.device)
        mean = means.mean() if means.numel() else nan
        error = means.std(unbiased=True) / means.numel() ** 0.5 if means.numel() >= 2 else nan
        return mean, error

    def compute(self) -> Tensor:
        return self._mean_and_error_of(self._edit_means())[0]

    def standard_error(self) -> Tensor:
        """Standard error of :meth:`compute`'s mean: the sample standard deviation of the per-edit
        means over sqrt(number of edits); NaN below two edits.

        A score over 100 ZsRE records moves by about this much when another 100 are drawn
        (locality ~0.018, generalization ~0.03 for MEMIT on SmolLM2), so a reader comparing a
        score with a floor or with another run needs it. It is sampling error over records only;
        in a batch edit each edit's probes also depend on the rest of the batch. Gathered from
        every rank, as :meth:`compute` is.
        """
        return self.mean_and_error()[1]

    def mean_and_error(self) -> tuple[Tensor, Tensor]:
        """(:meth:`compute`, :meth:`standard_error`) from one gather across ranks: a summary
        wants both, and each gather is a collective call on every rank."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync):
            means = self._edit_means()
        return self._mean_and_error_of(means)


class ProbabilityComparison(PerEditMean):
    """CounterFact score: per edit, the share of probes with ``nll_a < nll_b`` (i.e. P(a) > P(b)
    under ROME's mean per-token NLL); then the mean over edits. NaN if nothing was added.

    Efficacy / paraphrase: a = new target, b = true target. Neighbourhood: a = true, b = new.
    """

    def update(self, nll_a: Tensor, nll_b: Tensor, edit_ids: Tensor) -> None:  # type: ignore[override]
        super().update((torch.as_tensor(nll_a) < torch.as_tensor(nll_b)).float(), edit_ids)


class MeanValue(Metric):
    """Plain mean of all values added (fluency, seconds per edit, KL); NaN if none were."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: Tensor | float) -> None:
        """Add a float or a tensor of floats (every element counts once)."""
        values = torch.as_tensor(values, device=self.device).detach()
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), device=self.device)
        return (self.total / self.count).float()
