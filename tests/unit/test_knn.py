import pytest
import torch

from fitm.knn import knn_scores
from fitm.errors import FitmError


def brute_force(queries, bank, k):
    return torch.cdist(queries.double(), bank.double()).square().topk(k, dim=1, largest=False).values.sum(1)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("query_chunk,bank_chunk", [(1024, 65536), (8, 10), (5, 1), (37, 53), (36, 52)])
def test_matches_brute_force_across_chunk_boundaries(k, query_chunk, bank_chunk):
    g = torch.Generator().manual_seed(k)
    queries = torch.randn(37, 16, generator=g) * 3 + 1
    bank = torch.randn(53, 16, generator=g) * 3 + 1
    scores = knn_scores(queries, bank, k=k, query_chunk=query_chunk, bank_chunk=bank_chunk)
    assert scores.dtype == torch.float32 and scores.shape == (37,)
    torch.testing.assert_close(scores.double(), brute_force(queries, bank, k), rtol=1e-4, atol=1e-3)


def test_query_in_bank_scores_zero_not_negative():
    bank = torch.randn(20, 32, generator=torch.Generator().manual_seed(0)) * 10
    scores = knn_scores(bank[:5], bank, k=1, query_chunk=2, bank_chunk=7)
    assert (scores >= 0).all() and scores.max() < 1e-2
    torch.testing.assert_close(knn_scores(bank[:5], bank, k=2).double(), brute_force(bank[:5], bank, 2),
                               rtol=1e-4, atol=1e-2)


def test_bad_k_or_shapes_raise():
    bank = torch.randn(3, 4)
    with pytest.raises(FitmError, match=r"detector\.k=4"):
        knn_scores(torch.randn(2, 4), bank, k=4)
    with pytest.raises(FitmError, match="expected"):
        knn_scores(torch.randn(2, 5), bank)


def test_leave_one_out_scores_each_bank_feature_against_the_rest():
    from fitm.knn import leave_one_out_scores

    bank = torch.randn(30, 8, generator=torch.Generator().manual_seed(3)) * 2
    loo = leave_one_out_scores(bank, k=2)
    rest = [brute_force(bank[i:i + 1], torch.cat([bank[:i], bank[i + 1:]]), 2) for i in range(len(bank))]
    torch.testing.assert_close(loo.double(), torch.cat(rest), rtol=1e-4, atol=1e-3)
    with pytest.raises(FitmError, match=r"detector\.k=30"):
        leave_one_out_scores(bank, k=30)


@pytest.mark.parametrize("world, n", [(1, 7), (2, 7), (3, 10), (4, 2)])
def test_shares_of_ranks_cover_every_item_once_in_order(world, n):
    from fitm.runtime import Runtime

    shares = [Runtime(device=torch.device("cpu"), rank=r, world_size=world).share(n) for r in range(world)]
    items = [i for s in shares for i in range(n)[s]]
    assert items == list(range(n))
    sizes = [len(range(n)[s]) for s in shares]
    assert max(sizes) - min(sizes) <= 1
