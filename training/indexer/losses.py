"""The losses of GSID 2.2: query-item alignment (InfoNCE + code KL) and code commitment, plus
Sinkhorn-balanced code targets (GenRet / SwAV) against collapse."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def multi_positive_nce(
    q: torch.Tensor, d: torch.Tensor, positive: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric in-batch InfoNCE where a row may have several positives (log of the summed
    positive probability). q: (Bq, D), d: (Bd, D) unit vectors; positive: (Bq, Bd) bool."""
    logits = q @ d.T / temperature
    neg_inf = torch.finfo(logits.dtype).min
    q2d = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, neg_inf), 1)
    has = positive.any(0)
    lt = logits.T[has]
    d2q = torch.logsumexp(lt, 1) - torch.logsumexp(lt.masked_fill(~positive.T[has], neg_inf), 1)
    return (q2d.mean() + d2q.mean()) / 2


def code_kl(logits_q: torch.Tensor, logits_d: torch.Tensor) -> torch.Tensor:
    """Symmetric KL between the query's and its item's code distributions, mean over pairs."""
    lq, ld = F.log_softmax(logits_q, -1), F.log_softmax(logits_d, -1)
    kl_qd = (lq.exp() * (lq - ld)).sum(-1)
    kl_dq = (ld.exp() * (ld - lq)).sum(-1)
    return ((kl_qd + kl_dq) / 2).mean()


def commitment(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy keeping an already fixed level on its assigned code."""
    return F.cross_entropy(logits, codes)


@torch.no_grad()
def sinkhorn_targets(cosines: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """(B, K) cosine similarities -> (B, K) soft code targets whose column sums are equal: each
    row sums to 1 and every code gets the same share of the batch (Sinkhorn-Knopp, as SwAV).

    Rows that would pick the same code are spread over their next-best codes, so items of a
    batch (with prefix-grouped batches: siblings) do not all land on one code.
    """
    q = (cosines / epsilon).double()
    q = (q - q.max()).exp().T  # (K, B)
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True).clamp_min(1e-300) * k
        q /= q.sum(dim=0, keepdim=True) * b
    return (q / q.sum(dim=0, keepdim=True)).T.to(cosines.dtype)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets, mean over rows."""
    return -(targets * F.log_softmax(logits, -1)).sum(-1).mean()
