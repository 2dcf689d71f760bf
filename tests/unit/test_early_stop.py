"""The 'auto' early-stop rule: its nearness signal and its choice."""

import numpy as np
import pytest
import torch

import fitm.sde.early_stop as early_stop
from fitm.configs.digits import get_config
from fitm.errors import FitmError
from fitm.runtime import Runtime

CPU = torch.device("cpu")
RUNTIME = Runtime.local("cpu", quiet=True)


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


def stub_snapshots(monkeypatch, fakes_by_step):
    """Snapshots whose 'model' is its step and whose fakes are given: AutoChoice without a score model."""
    monkeypatch.setattr(early_stop, "ema_model", lambda ckpt, config, device: ckpt["step"])
    monkeypatch.setattr(early_stop, "generate_fakes",
                        lambda step, config, count, seed, runtime: fakes_by_step[step][:count])
    files = type("Files", (), {"load_checkpoint": lambda self, step: {"step": step}})()
    return files, list(fakes_by_step)


def choose_auto(files, steps, normal, config, runtime):
    """'auto' over every snapshot (whatever patience says): the chosen step and the table of all of them."""
    auto = early_stop.AutoChoice(files, normal, config, runtime)
    for step in steps:
        auto.observe(step)
    return auto.step, auto.rows(steps)


def test_choose_auto_probes_every_snapshot_with_normal_data_only(monkeypatch):
    normal = normal_images()
    noise = np.random.default_rng(7).integers(0, 256, normal.shape, dtype=np.uint8)
    files, steps = stub_snapshots(monkeypatch, {100: noise, 200: normal_images(seed=5), 300: normal_images(seed=6)})
    chosen, table = choose_auto(files, steps, normal, get_config(), RUNTIME)
    assert chosen == 200
    assert [row["step"] for row in table] == [100, 200, 300] and [row["chosen"] for row in table] == [False, True, False]
    assert table[0]["nearness"] > 1.5 * table[1]["nearness"]
    assert all(row["degenerate"] == 0 for row in table)

    with pytest.raises(FitmError, match="at least 6 normal"):
        choose_auto(files, steps, normal[:5], get_config(), RUNTIME)


def test_a_mostly_degenerate_snapshot_is_never_chosen(monkeypatch):
    """Flat grey squares sit near the middle of smooth normals in pixels, so by nearness alone they would be
    chosen; being mostly degenerate, they are passed over."""
    normal = normal_images()
    rng = np.random.default_rng(8)
    flat = np.clip(127 + rng.normal(0, 3, normal.shape), 0, 255).astype(np.uint8)
    flat[::3] = normal_images(seed=8)[::3]  # a third of them are not flat
    noise = rng.integers(0, 256, normal.shape, dtype=np.uint8)
    files, steps = stub_snapshots(monkeypatch, {100: noise, 200: flat, 300: normal_images(seed=6)})
    chosen, table = choose_auto(files, steps, normal, get_config(), RUNTIME)
    assert table[1]["degenerate"] > 0.5 and table[2]["degenerate"] == 0
    assert early_stop.earliest_near([row["nearness"] for row in table], 1.1) == 1  # what nearness alone picks
    assert chosen == 300
    assert early_stop.earliest_near([3.0, 1.0, 2.0], 1.1, usable=[True, False, True]) == 2
    assert early_stop.earliest_near([3.0, 1.0], 1.1, usable=[False, False]) == 1  # none usable: all count


@pytest.mark.parametrize("patience, settled_at", [(1, 300), (2, 400)])
def test_auto_settles_once_its_choice_survives_patience_snapshots(monkeypatch, patience, settled_at):
    """Noise, then near fakes at 200 that no later snapshot beats: the choice is settled `patience` snapshots
    after 200, and the rows say which snapshots were never trained."""
    normal = normal_images()
    noise = np.random.default_rng(7).integers(0, 256, normal.shape, dtype=np.uint8)
    steps = [100, 200, 300, 400, 500]
    files, _ = stub_snapshots(monkeypatch, {100: noise, 200: normal_images(seed=5), 300: normal_images(seed=6),
                                            400: normal_images(seed=9), 500: normal_images(seed=10)})
    config = get_config()
    config.fakes.patience = patience
    auto = early_stop.AutoChoice(files, normal, config, RUNTIME)
    settled = next(step for step in steps if auto.observe(step))
    assert settled == settled_at and auto.step == 200
    rows = auto.rows(steps)
    assert [row["trained"] for row in rows] == [step <= settled_at for step in steps]
    assert [row["chosen"] for row in rows] == [step == 200 for step in steps]
    assert rows[-1]["nearness"] == ""


def test_auto_waits_while_every_snapshot_is_degenerate(monkeypatch):
    normal = normal_images()
    flat = np.full_like(normal, 127)
    files, steps = stub_snapshots(monkeypatch, {100: flat, 200: flat, 300: normal_images(seed=6)})
    auto = early_stop.AutoChoice(files, normal, get_config(), RUNTIME)
    assert [auto.observe(step) for step in steps] == [False, False, False]
    assert auto.step == 300
