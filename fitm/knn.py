"""kNN anomaly scores: FITYMI's sum of squared L2 distances to the k nearest normal training features."""

from __future__ import annotations

import torch

from fitm.errors import FitmError


def pixel_vectors(images, device: torch.device | str) -> torch.Tensor:
    """uint8 NHWC images as (N, H*W*C) float32 rows in [0, 1]: the raw-pixel space of the baselines."""
    return torch.from_numpy(images.reshape(len(images), -1)).to(device, torch.float32) / 255


def knn_scores(queries: torch.Tensor, bank: torch.Tensor, k: int = 2, query_chunk: int = 1024,
               bank_chunk: int = 65536) -> torch.Tensor:
    """(Q,) float32 scores on the queries' device: the sum of the k smallest squared distances."""
    return knn_distances(queries, bank, k, query_chunk, bank_chunk).sum(1)


def leave_one_out_scores(bank: torch.Tensor, k: int = 2) -> torch.Tensor:
    """Each bank feature's kNN score against the rest of the bank: what a new normal image would score,
    without holding any normal image out of the bank (its own zero distance is the nearest, dropped)."""
    if not 1 <= k < bank.shape[0]:
        raise FitmError(f"detector.k={k}: expected 1..{bank.shape[0] - 1} (the number of normal training features "
                        "less one, for the leave-one-out threshold)")
    return knn_distances(bank, bank, k + 1)[:, 1:].sum(1)


def knn_distances(queries: torch.Tensor, bank: torch.Tensor, k: int = 2, query_chunk: int = 1024,
                  bank_chunk: int = 65536) -> torch.Tensor:
    """(Q, k) squared L2 distances to the k nearest bank features, ascending, on the queries' device.

    Distances come in blocks of query_chunk x bank_chunk (256 MiB of float32 at the defaults) as
    ||q||^2 + ||b||^2 - 2 q.b; each bank block keeps its own k best, and the k best of those are kept.
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise FitmError(
            f"kNN: expected (Q, D) queries and (B, D) bank features, got {tuple(queries.shape)} and "
            f"{tuple(bank.shape)}")
    if not 1 <= k <= bank.shape[0]:
        raise FitmError(f"detector.k={k}: expected 1..{bank.shape[0]} (the number of normal training features)")
    device = queries.device
    # Distances do not change under a shift; centring on the bank's mean shrinks the norms, and with them the
    # float32 cancellation in ||q||^2 + ||b||^2 - 2 q.b for near neighbours.
    bank = bank.to(device=device, dtype=torch.float32)
    centre = bank.mean(0)
    queries, bank = queries.float() - centre, bank - centre
    bank_sq = bank.square().sum(1)
    nearest = torch.empty(queries.shape[0], k, device=device)
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
        nearest[qs:qs + query_chunk] = best.topk(k, dim=1, largest=False, sorted=True).values
    return nearest
