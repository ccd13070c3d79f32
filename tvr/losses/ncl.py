"""NCL: normalised contrastive learning (docs/behaviour.md §8; Park et al., EMNLP 2022, arXiv
2212.11790).

NCL adds instance-wise biases to the scores so that the summed retrieval probability of every
target is the same. For a query set of size Q and a target set of size V with scores
``S`` (Q x V), the Sinkhorn-Knopp algorithm finds positive scalings r (per query) and c (per
target) such that ``diag(r) K diag(c)``, ``K = exp(S / tau)``, has row sums 1/Q and column sums
1/V. The target bias is ``b_j = tau * log c_j`` and the normalised score ``S_ij + b_j``.

Direction convention: rows are queries, columns are targets. Text->video biases (one per
video) come from the texts x videos matrix; video->text biases (one per text) from its
transpose. GARE's score is not a dot product, so every function here takes score matrices
that the caller computed with the model's own similarity.
"""

from __future__ import annotations

import math

import torch

from tvr.losses.contrastive import symmetric_info_nce

__all__ = [
    "FeatureQueue",
    "ncl_batch_biases",
    "ncl_info_nce",
    "sinkhorn_log_scalings",
    "target_biases",
]


def sinkhorn_log_scalings(
    scores: torch.Tensor, tau: float | torch.Tensor, iters: int = 10, tol: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-domain Sinkhorn-Knopp scalings of ``K = exp(scores / tau)`` (docs/behaviour.md §8).

    ``scores`` is Q x V (queries x targets). Starting from ``log c = 0``, each iteration sets::

        log r_i = -log Q - logsumexp_j(S_ij / tau + log c_j)     (rows sum to 1/Q)
        log c_j = -log V - logsumexp_i(S_ij / tau + log r_i)     (columns sum to 1/V)

    After an iteration the column sums are exact; the row-sum error is measured (for free)
    by the next row update as ``max_i |log(row sum_i) + log Q|`` and the loop stops early
    once it is below ``tol`` (so ``tol`` is about the largest relative row-sum error;
    ``tol <= 0`` always runs ``iters`` iterations). The stopping test reads one scalar per
    iteration. Returns ``(log_r, log_c)`` of shapes (Q,) and (V,); (r, c) are unique up to
    r·k, c/k, and this iteration fixes that constant deterministically.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be a Q x V matrix, got shape {tuple(scores.shape)}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    logits = scores / tau
    n_q, n_v = logits.shape
    log_row_mass = -math.log(n_q)
    log_col_mass = -math.log(n_v)
    log_r = logits.new_zeros(n_q)
    log_c = logits.new_zeros(n_v)
    for step in range(iters):
        row_lse = torch.logsumexp(logits + log_c.unsqueeze(0), dim=1)
        if step > 0 and tol > 0:
            row_error = (log_r + row_lse - log_row_mass).abs().max()
            if row_error.item() < tol:
                break
        log_r = log_row_mass - row_lse
        log_c = log_col_mass - torch.logsumexp(logits + log_r.unsqueeze(1), dim=0)
    return log_r, log_c


def target_biases(
    scores: torch.Tensor, tau: float | torch.Tensor, iters: int = 10, tol: float = 1e-4
) -> torch.Tensor:
    """NCL target biases ``b_j = tau * log c_j`` (docs/behaviour.md §8), one per column of
    ``scores``.

    ``scores`` is queries x targets; computed without gradient. Adding ``b`` to every row of
    a score matrix over the same targets gives NCL's normalised scores.
    """
    with torch.no_grad():
        _, log_c = sinkhorn_log_scalings(scores.detach(), tau, iters, tol)
        return tau * log_c


def _stack_queries(batch: torch.Tensor, bank: torch.Tensor | None) -> torch.Tensor:
    if bank is None or bank.shape[0] == 0:
        return batch
    if bank.dim() != 2 or bank.shape[1] != batch.shape[1]:
        raise ValueError(
            f"bank scores {tuple(bank.shape)} must have {batch.shape[1]} target columns"
        )
    return torch.cat([batch, bank.to(batch.dtype)], dim=0)


def ncl_batch_biases(
    scores: torch.Tensor,
    query_bank_scores_t2v: torch.Tensor | None,
    query_bank_scores_v2t: torch.Tensor | None,
    tau: float | torch.Tensor,
    iters: int = 10,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time NCL biases for a batch (docs/behaviour.md §8, "Training"), without gradient.

    ``scores`` is the B_t x B_v batch matrix (texts x videos). ``query_bank_scores_t2v``
    (N_t x B_v) holds the queued texts' scores against the batch videos and
    ``query_bank_scores_v2t`` (N_v x B_t) the queued videos' scores against the batch texts
    (rows = queries in both); either may be ``None`` or empty. Returns
    ``(video_bias, text_bias)``: Sinkhorn on ``[scores; bank_t2v]`` (queries = batch texts
    and queued texts) gives one bias per batch video, Sinkhorn on ``[scores^T; bank_v2t]``
    one bias per batch text.
    """
    detached = scores.detach()
    video_bias = target_biases(_stack_queries(detached, query_bank_scores_t2v), tau, iters, tol)
    text_bias = target_biases(_stack_queries(detached.t(), query_bank_scores_v2t), tau, iters, tol)
    return video_bias, text_bias


def ncl_info_nce(
    scores: torch.Tensor,
    logit_scale: torch.Tensor | float,
    query_bank_scores_t2v: torch.Tensor | None = None,
    query_bank_scores_v2t: torch.Tensor | None = None,
    tau: float | torch.Tensor | None = None,
    iters: int = 10,
    tol: float = 1e-4,
) -> torch.Tensor:
    """NCL training loss: symmetric InfoNCE on NCL-biased scores (docs/behaviour.md §8).

    Biases come from :func:`ncl_batch_biases` (no gradient; bank shapes documented there)
    and enter :func:`~tvr.losses.contrastive.symmetric_info_nce` in score units, so the
    text->video logits are ``exp(logit_scale) * (s_ab + video_bias_b)`` and the
    video->text logits ``exp(logit_scale) * (s_ab + text_bias_a)``. ``tau=None`` uses the
    contrastive temperature ``1 / exp(logit_scale)`` (detached), so that the Sinkhorn
    normalises the very retrieval probabilities the loss uses.
    """
    if tau is None:
        raw = torch.as_tensor(logit_scale, dtype=scores.dtype, device=scores.device)
        tau = raw.detach().neg().exp()
    biases = ncl_batch_biases(
        scores, query_bank_scores_t2v, query_bank_scores_v2t, tau, iters, tol
    )
    return symmetric_info_nce(scores, logit_scale, biases)


class FeatureQueue:
    """Fixed-capacity FIFO of detached tensors, e.g. past queries for NCL (docs/behaviour.md §8).

    Each :meth:`enqueue` call takes one or more tensors sharing their leading (batch) size N,
    e.g. ``enqueue(text_emb)`` with (N, d) or ``enqueue(frames, frame_mask)`` with (N, F, d)
    and (N, F). Storage is allocated on the first call with those trailing shapes, dtypes and
    that device; later calls must match the shapes and are moved to the storage device. When
    more than ``capacity`` items have been enqueued the oldest are overwritten (a batch
    larger than the capacity keeps its last ``capacity`` items). Writes and reads are single
    indexed copies, with no Python loop over items.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._buffers: list[torch.Tensor] | None = None
        self._next = 0  # slot the next item goes to
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def reset(self) -> None:
        """Empty the queue (the storage is kept)."""
        self._next = 0
        self._size = 0

    def enqueue(self, *tensors: torch.Tensor) -> None:
        """Append a batch (the first dimension of every tensor) at the tail of the queue."""
        if not tensors:
            raise ValueError("enqueue needs at least one tensor")
        n = tensors[0].shape[0]
        if any(t.dim() == 0 or t.shape[0] != n for t in tensors):
            raise ValueError("all enqueued tensors need the same leading size")
        if self._buffers is None:
            self._buffers = [
                torch.empty((self.capacity, *t.shape[1:]), dtype=t.dtype, device=t.device)
                for t in tensors
            ]
        if len(tensors) != len(self._buffers) or any(
            t.shape[1:] != b.shape[1:] for t, b in zip(tensors, self._buffers)
        ):
            raise ValueError(
                "enqueued tensors do not match the queue's trailing shapes "
                f"{[tuple(b.shape[1:]) for b in self._buffers]}"
            )
        if n == 0:
            return
        if n > self.capacity:
            tensors = tuple(t[n - self.capacity :] for t in tensors)
            self._next = (self._next + n - self.capacity) % self.capacity
            n = self.capacity
        device = self._buffers[0].device
        slots = (self._next + torch.arange(n, device=device)) % self.capacity
        for buffer, t in zip(self._buffers, tensors):
            buffer[slots] = t.detach().to(device=device, dtype=buffer.dtype)
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def contents(self) -> tuple[torch.Tensor, ...]:
        """The stored items, oldest first, as one tensor per enqueued field (copies).

        Before the first enqueue there is no field to return, so the result is ``()``.
        """
        if self._buffers is None:
            return ()
        device = self._buffers[0].device
        start = (self._next - self._size) % self.capacity
        order = (start + torch.arange(self._size, device=device)) % self.capacity
        return tuple(buffer[order] for buffer in self._buffers)
