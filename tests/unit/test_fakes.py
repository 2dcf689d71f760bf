import pickle

import numpy as np
import pytest

from fitm.data import load_fakes, slice_class, validate_images
from fitm.errors import FitmError


def authors_layout(num_classes=10, per_class=3, channels=3):
    """All classes concatenated in class order; every pixel of class k's images is k."""
    return np.repeat(np.arange(num_classes, dtype=np.uint8), per_class)[:, None, None, None] \
        * np.ones((1, 4, 4, channels), np.uint8)


def test_load_whole_file(tmp_path):
    fakes = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "f.npy", fakes)
    loaded = load_fakes(tmp_path / "f.npy")
    assert (loaded == fakes).all()
    assert type(loaded) is np.ndarray and loaded.flags.writeable  # in memory, not a map of the file


def test_one_channel_repeated(tmp_path):
    np.save(tmp_path / "g.npy", authors_layout(2, 2, channels=1))
    loaded = load_fakes(tmp_path / "g.npy")
    assert loaded.shape == (4, 4, 4, 3) and (loaded[:2] == 0).all() and (loaded[2:] == 1).all()


def test_authors_layout_sliced_by_class(tmp_path):
    np.save(tmp_path / "all.npy", authors_layout())
    for k in (0, 4, 9):
        part = load_fakes(tmp_path / "all.npy", class_index=k, num_classes=10)
        assert part.shape == (3, 4, 4, 3) and (part == k).all()
    assert len(load_fakes(tmp_path / "all.npy")) == 30  # no class given: the whole file is one class
    assert len(load_fakes(tmp_path / "all.npy", class_index=2, num_classes=1)) == 30


def test_slice_class_fsde_layout():
    fsde = authors_layout(10, 1000)
    assert (slice_class(fsde, 7, 10, "fsde") == 7).all() and len(slice_class(fsde, 7, 10, "fsde")) == 1000
    with pytest.raises(FitmError, match="fsde: 9999 images do not split into 10 equal classes"):
        slice_class(fsde[:9999], 0, 10, "fsde")
    with pytest.raises(FitmError, match="fsde: class index 10 is out of range"):
        slice_class(fsde, 10, 10, "fsde")


def test_not_divisible(tmp_path):
    np.save(tmp_path / "odd.npy", authors_layout()[:29])
    with pytest.raises(FitmError, match=f"--fakes {tmp_path / 'odd.npy'}: 29 images do not split into 10"):
        load_fakes(tmp_path / "odd.npy", class_index=0, num_classes=10)


@pytest.mark.parametrize("array, got", [
    (np.zeros((2, 4, 4, 3), np.float32), "float32 of shape (2, 4, 4, 3)"),
    (np.zeros((2, 3, 4, 4), np.uint8), "uint8 of shape (2, 3, 4, 4)"),  # NCHW
    (np.zeros((4, 4, 3), np.uint8), "uint8 of shape (4, 4, 3)"),
    (np.zeros((2, 4, 4, 2), np.uint8), "uint8 of shape (2, 4, 4, 2)"),
])
def test_bad_arrays(tmp_path, array, got):
    np.save(tmp_path / "bad.npy", array)
    message = f"--fakes {tmp_path / 'bad.npy'}: expected a uint8 NHWC array with 1 or 3 channels, got {got}"
    with pytest.raises(FitmError) as e:
        load_fakes(tmp_path / "bad.npy")
    assert str(e.value) == message


def test_validate_images():
    assert validate_images(np.zeros((1, 2, 2, 1), np.uint8), "x").shape == (1, 2, 2, 3)
    with pytest.raises(FitmError, match="x: holds no images"):
        validate_images(np.zeros((0, 2, 2, 3), np.uint8), "x")
    with pytest.raises(FitmError, match="x: expected a uint8 NHWC array .* got list"):
        validate_images([[1]], "x")


def test_unreadable_files(tmp_path):
    with pytest.raises(FitmError, match=f"--fakes {tmp_path / 'none.npy'}: no such file"):
        load_fakes(tmp_path / "none.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(FitmError, match="junk.npy: is not a .npy file"):
        load_fakes(tmp_path / "junk.npy")
    (tmp_path / "text.npy").write_text("1 2 3\n4 5 6\n")  # a text file is named as such, not as pickled data
    with pytest.raises(FitmError, match=r"text.npy: is not a .npy file \(expected a .npy of uint8 NHWC"):
        load_fakes(tmp_path / "text.npy")
    with open(tmp_path / "obj.npy", "wb") as f:  # an object array needs pickle, which stays off
        np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FitmError, match="obj.npy: holds Python objects, which fitm never loads"):
        load_fakes(tmp_path / "obj.npy")
    truncated = tmp_path / "cut.npy"
    np.save(truncated, authors_layout())
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(FitmError, match="cut.npy: not a readable .npy file"):
        load_fakes(truncated)
    np.savez(tmp_path / "z.npz", fakes=authors_layout())
    with pytest.raises(FitmError, match="z.npz: is an .npz archive"):
        load_fakes(tmp_path / "z.npz")
    (tmp_path / "p.npy").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(FitmError, match="p.npy: is not a .npy file"):
        load_fakes(tmp_path / "p.npy")
