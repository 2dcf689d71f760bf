"""Score-model training: it learns, resumes bit-exactly (also after extending training), treats a damaged
checkpoint as missing, refuses bad input with clear messages, and keeps a grey class's samples grey."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

import fitm.run as run_mod
import fitm.sde.early_stop as early_stop
import fitm.sde.train as train_mod
from fitm.configs.digits import get_config
from fitm.errors import FitmError
from fitm.io import save_torch
from fitm.run import ScoreModelFiles, score_model_key
from fitm.runtime import Runtime
from fitm.sde import ema_model, generate_fakes, train_score_model

CPU = Runtime.local("cpu", quiet=True)


def digits(size: int, label: int = 0) -> np.ndarray:
    """One class of scikit-learn's digits, upscaled to size x size, as uint8 NHWC with 3 channels."""
    d = load_digits()
    x = torch.from_numpy(d.images[d.target == label] / 16.0).float()[:, None]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()


def is_grey(images: np.ndarray) -> bool:
    return images.shape[-1] == 3 and (images == images[..., :1]).all()


def tinted(images: np.ndarray) -> np.ndarray:
    """The same images in colour: red lifted, blue lowered."""
    out = images.astype(np.int16) + np.array([40, 0, -40])
    return np.clip(out, 0, 255).astype(np.uint8)


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
    files = ScoreModelFiles(tmp_path)
    assert train_score_model(digits(16), c, files, CPU) == [150]
    rows = np.genfromtxt(files.train_log, delimiter=",", names=True)
    assert list(rows["step"]) == [25, 50, 75, 100, 125, 150]
    assert rows["loss"][-1] < 0.3 * rows["loss"][0], rows["loss"]
    assert files.checkpoint(150).is_file() and files.samples(150).is_file()


def _same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    for k, state in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][k][name]) for name, v in state.items())
    assert torch.equal(a["rng"]["data"], b["rng"]["data"]) and torch.equal(a["loss_sum"], b["loss_sum"])


def test_resume_matches_an_uninterrupted_run(tmp_path):
    images = digits(8)
    a, b = ScoreModelFiles(tmp_path / "a"), ScoreModelFiles(tmp_path / "b")
    assert train_score_model(images, tiny_config(log_every=4), a, CPU) == [3, 6]
    # Stop after the first snapshot (and lose its sample grid, as a kill would), then carry on.
    train_score_model(images, tiny_config(n_iters=3, snapshots=(3,), log_every=4), b, CPU)
    b.samples(3).unlink()
    assert train_score_model(images, tiny_config(log_every=4), b, CPU) == [3, 6]
    _same_state(a.load_checkpoint(6), b.load_checkpoint(6))
    assert a.train_log.read_text() == b.train_log.read_text()
    assert b.load_checkpoint(6)["model"]["stem.weight"].shape[1] == 1  # digits are grey: a one-channel model resumed
    # weights moved: the comparison above is not between two untouched initialisations
    first, last = a.load_checkpoint(3), a.load_checkpoint(6)
    assert not all(torch.equal(first["model"][k], last["model"][k]) for k in last["model"])


def test_extending_n_iters_or_adding_snapshots_continues_from_the_newest_checkpoint(tmp_path, monkeypatch):
    images = digits(8)
    straight = ScoreModelFiles(tmp_path / "straight")
    train_score_model(images, tiny_config(n_iters=8, snapshots=(3, 5, 6)), straight, CPU)
    files = ScoreModelFiles(tmp_path / "grown")
    train_score_model(images, tiny_config(n_iters=6, snapshots=(3,)), files, CPU)
    steps = []
    real = train_mod.ScoreTrainer.step
    monkeypatch.setattr(train_mod.ScoreTrainer, "step", lambda self, i: steps.append(i) or real(self, i))
    # step 5 is a new snapshot before the newest checkpoint: training resumes at 3, the last before it
    assert train_score_model(images, tiny_config(n_iters=8, snapshots=(3, 5, 6)), files, CPU) == [3, 5, 6, 8]
    assert steps == [4, 5, 6, 7, 8]
    _same_state(straight.load_checkpoint(8), files.load_checkpoint(8))


def test_training_stops_at_until_and_resumes_exactly_past_it(tmp_path):
    """A fixed fakes.checkpoint trains only to its snapshot; asking for more later continues bit-exactly."""
    images = digits(8)
    straight, files = ScoreModelFiles(tmp_path / "straight"), ScoreModelFiles(tmp_path / "stopped")
    train_score_model(images, tiny_config(n_iters=8, snapshots=(3, 6)), straight, CPU)
    assert train_score_model(images, tiny_config(n_iters=8, snapshots=(3, 6)), files, CPU, until=3) == [3]
    assert files.steps() == [3] and not files.samples(6).exists()
    assert train_score_model(images, tiny_config(n_iters=8, snapshots=(3, 6)), files, CPU) == [3, 6, 8]
    _same_state(straight.load_checkpoint(8), files.load_checkpoint(8))


def test_after_snapshot_stops_training_and_sees_snapshots_already_on_disk(tmp_path, monkeypatch):
    images, files = digits(8), ScoreModelFiles(tmp_path)
    config = tiny_config(n_iters=8, snapshots=(2, 4, 6))
    seen = []
    assert train_score_model(images, config, files, CPU, after_snapshot=lambda s: seen.append(s) or s == 4) == [2, 4]
    assert seen == [2, 4] and files.steps() == [2, 4]
    # Run again (as after a kill): the snapshots on disk are shown again, in order, and nothing is trained.
    monkeypatch.setattr(train_mod, "dsm_loss", lambda *a, **k: pytest.fail("trained again"))
    seen.clear()
    assert train_score_model(images, config, files, CPU, after_snapshot=lambda s: seen.append(s) or s == 4) == [2, 4]
    assert seen == [2, 4]


def test_existing_snapshots_are_returned_without_training(tmp_path, monkeypatch):
    images, files = digits(8), ScoreModelFiles(tmp_path)
    train_score_model(images, tiny_config(n_iters=2, snapshots=(2,)), files, CPU)
    stamp = files.checkpoint(2).stat().st_mtime_ns
    monkeypatch.setattr(train_mod, "dsm_loss", lambda *a, **k: pytest.fail("trained again"))
    assert train_score_model(images, tiny_config(n_iters=2, snapshots=(2,)), files, CPU) == [2]
    assert files.checkpoint(2).stat().st_mtime_ns == stamp
    with pytest.raises(FitmError, match="other images"):
        train_score_model(images[::-1].copy(), tiny_config(n_iters=4, snapshots=(2,)), files, CPU)


def test_a_damaged_checkpoint_is_trained_again_from_the_one_before(tmp_path, caplog):
    images = digits(8)
    straight, files = ScoreModelFiles(tmp_path / "a"), ScoreModelFiles(tmp_path / "b")
    train_score_model(images, tiny_config(), straight, CPU)
    train_score_model(images, tiny_config(), files, CPU)
    files.checkpoint(6).write_bytes(files.checkpoint(6).read_bytes()[:100])  # truncated, as a full disk leaves it
    assert train_score_model(images, tiny_config(), files, CPU) == [3, 6]
    assert "ckpt_6.pt cannot be read" in caplog.text
    _same_state(straight.load_checkpoint(6), files.load_checkpoint(6))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = []
    real = train_mod.dsm_loss

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 5 else loss

    monkeypatch.setattr(train_mod, "dsm_loss", poisoned)
    files = ScoreModelFiles(tmp_path)
    with pytest.raises(FitmError, match=r"non-finite loss at step 5; last good checkpoint: .*ckpt_3\.pt"):
        train_score_model(digits(8), tiny_config(n_iters=8, snapshots=(3, 8), log_every=4), files, CPU)
    assert files.steps() == [3]


def test_ema_model_and_fakes(tmp_path):
    c, files = tiny_config(n_iters=2, snapshots=(2,)), ScoreModelFiles(tmp_path)
    train_score_model(digits(8), c, files, CPU)
    ckpt = files.load_checkpoint(2)
    model = ema_model(ckpt, c, "cpu")
    assert not model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in ckpt["ema"].items())
    fakes = generate_fakes(model, c, 7, seed=1, runtime=CPU)  # two batches of 5
    assert fakes.shape == (7, 8, 8, 3) and fakes.dtype == np.uint8
    assert np.array_equal(fakes, generate_fakes(model, c, 7, seed=1, runtime=CPU))
    assert not np.array_equal(fakes, generate_fakes(model, c, 7, seed=2, runtime=CPU))
    # batches are seeded by their index: the first batch does not depend on how many follow
    assert np.array_equal(fakes[:5], generate_fakes(model, c, 5, seed=1, runtime=CPU))


def test_bad_input_is_refused(tmp_path):
    c, files = tiny_config(), ScoreModelFiles(tmp_path)
    with pytest.raises(FitmError, match="at least 2 normal training images"):
        train_score_model(digits(8)[:1], c, files, CPU)
    with pytest.raises(FitmError, match="data.image_size=8"):
        train_score_model(digits(16), c, files, CPU)
    with pytest.raises(FitmError, match="uint8 NHWC"):
        train_score_model(digits(8).astype(np.float32), c, files, CPU)
    c.data.image_size, c.model.ch_mult = 6, (1, 2, 2)
    with pytest.raises(FitmError, match=r"data\.image_size=6.*model\.ch_mult"):
        train_score_model(digits(6), c, files, CPU)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # every refusal came before any work
    junk = ScoreModelFiles(tmp_path / "junk")
    junk.dir.mkdir()
    junk.checkpoint(1).write_bytes(b"not a checkpoint")
    assert junk.load_checkpoint(1) is None  # unreadable: treated as missing
    save_torch({"ema": {"nonsense": torch.zeros(1)}, "step": 1}, junk.checkpoint(1))
    with pytest.raises(FitmError, match="EMA weights"):
        ema_model(junk.load_checkpoint(1), tiny_config(), "cpu")


def test_a_grey_class_trains_a_one_channel_model_whose_samples_are_grey(tmp_path):
    c, files = tiny_config(n_iters=2, snapshots=(2,)), ScoreModelFiles(tmp_path)
    train_score_model(digits(8), c, files, CPU)
    ckpt = files.load_checkpoint(2)
    assert ckpt["ema"]["stem.weight"].shape[1] == ckpt["model"]["head.2.weight"].shape[0] == 1
    model = ema_model(ckpt, c, "cpu")
    fakes = generate_fakes(model, c, 7, seed=1, runtime=CPU)
    assert fakes.shape == (7, 8, 8, 3) and fakes.dtype == np.uint8 and is_grey(fakes)
    assert fakes.std() > 0  # not a blank grey: the test above could not pass on zeros alone
    grid = np.asarray(Image.open(files.samples(2)).convert("RGB"))
    assert is_grey(grid)


def test_a_colour_class_keeps_a_three_channel_model(tmp_path):
    c, files = tiny_config(n_iters=2, snapshots=(2,)), ScoreModelFiles(tmp_path)
    train_score_model(tinted(digits(8)), c, files, CPU)
    ckpt = files.load_checkpoint(2)
    assert ckpt["ema"]["stem.weight"].shape[1] == 3
    fakes = generate_fakes(ema_model(ckpt, c, "cpu"), c, 5, seed=1, runtime=CPU)
    assert fakes.shape == (5, 8, 8, 3) and not is_grey(fakes)


def test_three_channel_checkpoints_of_a_grey_class_are_trained_again(tmp_path, monkeypatch, caplog):
    """3-channel checkpoints of a grey class, keyed by its images alone: ema_model still reads them as what they
    are, resuming from them is refused in one line, and the stages discard them and train a one-channel model."""
    images, c, files = digits(8), tiny_config(n_iters=2, snapshots=(2,)), ScoreModelFiles(tmp_path)
    with monkeypatch.context() as three_channels:
        three_channels.setattr(train_mod, "score_channels", lambda images: 3)
        three_channels.setattr(run_mod, "is_grayscale", lambda images: False)
        files.prepare(score_model_key(c, images))
        train_score_model(images, c, files, CPU)
    old = files.load_checkpoint(2)
    assert old["ema"]["stem.weight"].shape[1] == 3 and ema_model(old, c, "cpu").channels == 3
    with pytest.raises(FitmError, match="other images"):  # resuming from it is refused in one line
        train_score_model(images, tiny_config(n_iters=4, snapshots=(2,)), files, CPU)
    with caplog.at_level("INFO", logger="fitm"):
        files.prepare(score_model_key(c, images))
    assert "discarding score-model checkpoints" in caplog.text and files.steps() == []
    assert train_score_model(images, c, files, CPU) == [2]
    assert files.load_checkpoint(2)["ema"]["stem.weight"].shape[1] == 1


def test_auto_measures_a_grey_class_on_grey_probes(tmp_path, monkeypatch):
    c, files = tiny_config(n_iters=2, snapshots=(2,)), ScoreModelFiles(tmp_path)
    images = digits(8)
    train_score_model(images, c, files, CPU)
    probes = []
    monkeypatch.setattr(early_stop, "generate_fakes",
                        lambda *args, **kwargs: probes.append(generate_fakes(*args, **kwargs)) or probes[-1])
    early_stop.AutoChoice(files, images, c, CPU).observe(2)
    assert len(probes) == 1 and probes[0].shape[1:] == (8, 8, 3) and is_grey(probes[0])
