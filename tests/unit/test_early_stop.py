"""The 'auto' early-stop rule: its nearness signal and its choice."""

import numpy as np
import pytest
import torch

import fitm.sde.early_stop as early_stop
from fitm.configs.digits import get_config
from fitm.errors import FitmError

CPU = torch.device("cpu")


def normal_images(n=300, seed=0):
    """Smooth random images: a class with real spread, so kNN distances between normals are informative."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 215, (n, 4, 4, 3))
    return np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2).astype(np.uint8)


def test_fakes_drawn_like_normals_are_near_and_others_are_not():
    normal, held_out, like_normal = normal_images(), normal_images(80, seed=1), normal_images(80, seed=2)
    near = early_stop.nearness(normal, like_normal, held_out, CPU)
    assert near["closeness"] == pytest.approx(1, abs=0.1) and near["coverage"] == pytest.approx(1, abs=0.1)

    noise = np.random.default_rng(3).integers(0, 256, like_normal.shape, dtype=np.uint8)
    assert early_stop.nearness(normal, noise, held_out, CPU)["closeness"] > 1.5

    # The same few normal-looking images, over and over: each is close, most normals stay uncovered.
    collapsed = np.concatenate([normal_images(4, seed=4)] * 20)
    signal = early_stop.nearness(normal, collapsed, held_out, CPU)
    assert signal["closeness"] == pytest.approx(1, abs=0.15)
    assert signal["coverage"] > 1.2 * near["coverage"]


@pytest.mark.parametrize("values, factor, expected", [([3.0, 1.5, 1.05, 1.0], 1.1, 2), ([3.0, 1.5, 1.2, 1.0], 1.1, 3),
                                                      ([3.0, 1.2, 1.05, 1.0], 1.25, 1), ([1.0, 2.0], 1.1, 0)])
def test_the_earliest_snapshot_within_the_factor_is_chosen(values, factor, expected):
    assert early_stop.earliest_near(values, factor) == expected


def test_choose_auto_probes_every_snapshot_with_normal_data_only(tmp_path, monkeypatch):
    normal = normal_images()
    fakes_by_step = {100: np.zeros_like(normal), 200: normal_images(seed=5), 300: normal_images(seed=6)}
    monkeypatch.setattr(early_stop, "generate_fakes",
                        lambda path, config, count, seed, device: fakes_by_step[int(path.stem.split("_")[1])][:count])
    checkpoints = [tmp_path / f"ckpt_{step}.pt" for step in fakes_by_step]
    chosen, table = early_stop.choose_auto(checkpoints, normal, get_config(), CPU)
    assert chosen == checkpoints[1]
    assert [row["step"] for row in table] == [100, 200, 300] and [row["chosen"] for row in table] == [0, 1, 0]
    assert table[0]["nearness"] > 1.5 * table[1]["nearness"]

    with pytest.raises(FitmError, match="at least 6 normal"):
        early_stop.choose_auto(checkpoints, normal[:5], get_config(), CPU)
