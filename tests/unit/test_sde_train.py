"""Score-model training: it learns, resumes bit-exactly, and refuses bad input with clear messages."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import fitm.sde.train as train_mod
from fitm.configs.digits import get_config
from fitm.errors import FitmError
from fitm.io import save_torch
from fitm.sde import generate_fakes, load_ema_model, train_score_model



def digits(size: int, label: int = 0) -> np.ndarray:
    """One class of scikit-learn's digits, upscaled to size x size, as uint8 NHWC with 3 channels."""
    d = load_digits()
    x = torch.from_numpy(d.images[d.target == label] / 16.0).float()[:, None]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()


def tiny_config(size=8, n_iters=6, snapshots=(3, 6), **training):
    c = get_config()
    c.data.image_size = size
    c.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1, ema_rate=0.99)
    c.training.update(dict(dict(batch_size=8, n_iters=n_iters, snapshot_iters=snapshots, lr=1e-3, warmup=2,
                                log_every=2), **training))
    c.sampling.update(method="ddim", steps=2, batch_size=5)
    return c


def test_loss_falls_on_digits(tmp_path):
    c = tiny_config(size=16, n_iters=150, snapshots=(150,), batch_size=16, log_every=25, warmup=10, lr=2e-3)
    c.model.dropout = 0.0
    (ckpt,) = train_score_model(digits(16), c, tmp_path, "cpu")
    rows = np.genfromtxt(tmp_path / "train_log.csv", delimiter=",", names=True)
    assert list(rows["step"]) == [25, 50, 75, 100, 125, 150]
    assert rows["loss"][-1] < 0.3 * rows["loss"][0], rows["loss"]
    assert ckpt == tmp_path / "ckpt_150.pt" and (tmp_path / "samples_150.png").is_file()


def test_resume_matches_an_uninterrupted_run(tmp_path):
    images = digits(8)
    straight = train_score_model(images, tiny_config(log_every=4), tmp_path / "a", "cpu")
    # Stop after the first snapshot (and lose its sample grid, as a kill would), then carry on.
    train_score_model(images, tiny_config(n_iters=3, snapshots=(3,), log_every=4), tmp_path / "b", "cpu")
    (tmp_path / "b" / "samples_3.png").unlink()
    resumed = train_score_model(images, tiny_config(log_every=4), tmp_path / "b", "cpu")
    assert [p.name for p in straight] == [p.name for p in resumed] == ["ckpt_3.pt", "ckpt_6.pt"]
    a, b = (torch.load(p[-1], weights_only=True) for p in (straight, resumed))
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    for k, state in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][k][name]) for name, v in state.items())
    assert torch.equal(a["rng"]["data"], b["rng"]["data"]) and torch.equal(a["loss_sum"], b["loss_sum"])
    assert (tmp_path / "a" / "train_log.csv").read_text() == (tmp_path / "b" / "train_log.csv").read_text()
    assert (tmp_path / "b" / "samples_3.png").is_file()
    # weights moved: the comparison above is not between two untouched initialisations
    first = torch.load(straight[0], weights_only=True)
    assert not all(torch.equal(first["model"][k], a["model"][k]) for k in a["model"])


def test_existing_snapshots_are_returned_without_training(tmp_path, monkeypatch):
    images = digits(8)
    paths = train_score_model(images, tiny_config(n_iters=2, snapshots=(2,)), tmp_path, "cpu")
    stamp = paths[0].stat().st_mtime_ns
    monkeypatch.setattr(train_mod, "dsm_loss", lambda *a, **k: pytest.fail("trained again"))
    assert train_score_model(images, tiny_config(n_iters=2, snapshots=(2,)), tmp_path, "cpu") == paths
    assert paths[0].stat().st_mtime_ns == stamp
    with pytest.raises(FitmError, match="other images"):
        train_score_model(images[::-1].copy(), tiny_config(n_iters=2, snapshots=(2,)), tmp_path, "cpu")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = []
    real = train_mod.dsm_loss

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 5 else loss

    monkeypatch.setattr(train_mod, "dsm_loss", poisoned)
    with pytest.raises(FitmError, match=r"non-finite loss at step 5; last good checkpoint: .*ckpt_3\.pt"):
        train_score_model(digits(8), tiny_config(n_iters=8, snapshots=(3, 8), log_every=4), tmp_path, "cpu")
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == ["ckpt_3.pt"]


def test_ema_model_and_fakes(tmp_path):
    c = tiny_config(n_iters=2, snapshots=(2,))
    (ckpt,) = train_score_model(digits(8), c, tmp_path, "cpu")
    model = load_ema_model(ckpt, c, "cpu")
    saved = torch.load(ckpt, weights_only=True)["ema"]
    assert not model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())
    fakes = generate_fakes(ckpt, c, 7, seed=1, device="cpu")  # two batches of 5
    assert fakes.shape == (7, 8, 8, 3) and fakes.dtype == np.uint8
    assert np.array_equal(fakes, generate_fakes(ckpt, c, 7, seed=1, device="cpu"))
    assert not np.array_equal(fakes, generate_fakes(ckpt, c, 7, seed=2, device="cpu"))


def test_bad_input_is_refused(tmp_path):
    c = tiny_config()
    with pytest.raises(FitmError, match="at least 2 normal training images"):
        train_score_model(digits(8)[:1], c, tmp_path, "cpu")
    with pytest.raises(FitmError, match="data.image_size=8"):
        train_score_model(digits(16), c, tmp_path, "cpu")
    with pytest.raises(FitmError, match="uint8 NHWC"):
        train_score_model(digits(8).astype(np.float32), c, tmp_path, "cpu")
    c.data.image_size, c.model.ch_mult = 6, (1, 2, 2)
    with pytest.raises(FitmError, match=r"data\.image_size=6.*model\.ch_mult"):
        train_score_model(digits(6), c, tmp_path, "cpu")
    with pytest.raises(FitmError, match="training.snapshot_iters"):
        train_score_model(digits(8), tiny_config(n_iters=4, snapshots=(3, 6)), tmp_path, "cpu")
    assert not list(tmp_path.iterdir())  # every refusal came before any work
    missing = tmp_path / "nowhere" / "ckpt_5.pt"
    with pytest.raises(FitmError, match=str(missing)):
        load_ema_model(missing, c, "cpu")
    junk = tmp_path / "ckpt_1.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FitmError, match="not a readable"):
        generate_fakes(junk, tiny_config(), 3, 0, "cpu")
    save_torch({"ema": {"nonsense": torch.zeros(1)}}, junk)
    with pytest.raises(FitmError, match="EMA weights"):
        load_ema_model(junk, tiny_config(), "cpu")
