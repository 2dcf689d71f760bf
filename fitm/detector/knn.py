"""kNN anomaly scores: FITYMI's sum of squared L2 distances to the k nearest normal training features."""

from __future__ import annotations

import torch

from fitm.errors import FitmError


def pixel_vectors(images, device: torch.device | str) -> torch.Tensor:
    """uint8 NHWC images as (N, H*W*C) float32 rows in [0, 1]: the raw-pixel space of the baselines."""
    return torch.from_numpy(images.reshape(len(images), -1)).to(device, torch.float32) / 255


def knn_scores(queries: torch.Tensor, bank: torch.Tensor, k: int = 2, query_chunk: int = 1024,
               bank_chunk: int = 65536) -> torch.Tensor:
    """(Q,) float32 scores on the queries' device.

    Distances come in blocks of query_chunk x bank_chunk (256 MiB of float32 at the defaults) as
    ||q||^2 + ||b||^2 - 2 q.b; each bank block keeps its own k best, and the k best of those are summed.
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise FitmError(
            f"kNN: expected (Q, D) queries and (B, D) bank features, got {tuple(queries.shape)} and "
            f"{tuple(bank.shape)}")
    if not 1 <= k <= bank.shape[0]:
        raise FitmError(f"detector.k={k}: expected 1..{bank.shape[0]} (the number of normal training features)")
    device = queries.device
    queries = queries.float()
    bank = bank.to(device=device, dtype=torch.float32)
    bank_sq = bank.square().sum(1)
    scores = torch.empty(queries.shape[0], device=device)
    for qs in range(0, queries.shape[0], query_chunk):
        q = queries[qs:qs + query_chunk]
        q_sq = q.square().sum(1, keepdim=True)
        best = []
        for bs in range(0, bank.shape[0], bank_chunk):
            b = bank[bs:bs + bank_chunk]
            d = torch.addmm(bank_sq[bs:bs + bank_chunk].unsqueeze(0), q, b.T, alpha=-2.0)
            d.add_(q_sq).clamp_(min=0)
            best.append(d.topk(min(k, d.shape[1]), dim=1, largest=False).values)
        best = torch.cat(best, dim=1)
        scores[qs:qs + query_chunk] = best.topk(k, dim=1, largest=False).values.sum(1)
    return scores
