import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image
from sklearn.datasets import load_digits

import fitm.data.images
from fitm.data import (
    canonical_class, cifar100_fine_test, class_names, is_grayscale, list_images, load_split, read_images,
    resize_images,
)
from fitm.data.cifar import CIFAR100_COARSE_CLASSES, CIFAR100_FINE_TO_COARSE, CIFAR10_CLASSES
from fitm.data.mvtec import CATEGORIES
from fitm.errors import FitmError


def cfg(name, normal_class="0", root="", image_size=32, download=False):
    return ConfigDict(dict(name=name, normal_class=normal_class, root=str(root), download=download,
                           image_size=image_size))


def check_split(split, size):
    assert split.normal_train.dtype == split.test_images.dtype == np.uint8
    assert split.normal_train.shape[1:] == split.test_images.shape[1:] == (size, size, 3)
    assert split.normal_train.flags.c_contiguous and split.test_images.flags.c_contiguous
    assert split.test_labels.dtype == np.int64
    assert len(split.test_labels) == len(split.test_groups) == len(split.test_images)
    assert (split.test_labels == (split.test_groups != split.test_groups[split.test_labels == 0][0])).all()


# digits

def test_digits_split_is_fixed_stratified_and_one_vs_all():
    split = load_split(cfg("digits", "3", image_size=8))
    check_split(split, 8)
    _, y = load_digits(return_X_y=True)
    assert len(split.test_images) == 899 and len(split.normal_train) in (91, 92)  # 183 threes, halved
    assert split.class_name == "3" and split.test_paths is None
    assert (split.test_labels == 0).sum() == (y == 3).sum() - len(split.normal_train)
    assert set(split.test_groups[split.test_labels == 1]) == set("012456789")
    assert split.normal_train.max() == 255 and (split.normal_train[..., 0] == split.normal_train[..., 2]).all()
    again = load_split(cfg("digits", "3", image_size=8))
    assert (again.test_images == split.test_images).all()
    # Pixels 0..16 map to 0..255 with no resize at 8 px; training threes are all threes.
    x, _ = load_digits(return_X_y=True)
    threes = {r.tobytes() for r in np.rint(x[y == 3] * 255 / 16).astype(np.uint8)}
    assert all(img[..., 0].tobytes() in threes for img in split.normal_train)


def test_digits_upscaled():
    small = load_split(cfg("digits", "7", image_size=8))
    big = load_split(cfg("digits", "7", image_size=16))
    check_split(big, 16)
    assert (big.test_labels == small.test_labels).all()
    # Upscaling keeps each image's content: its brightness, and its shape once averaged back to 8 px.
    assert np.abs(big.test_images.mean((1, 2, 3)) - small.test_images.mean((1, 2, 3))).max() < 4
    back = big.test_images.reshape(-1, 8, 2, 8, 2, 3).mean((2, 4))
    assert np.corrcoef(back.ravel(), small.test_images.ravel())[0, 1] > 0.9


# class names and validation

def test_canonical_class_by_name_index_and_case():
    assert canonical_class(cfg("cifar10", "3")) == "cat"
    assert canonical_class(cfg("cifar10", "CAT")) == "cat"
    assert canonical_class(cfg("cifar100", "19")) == "vehicles_2"
    assert canonical_class(cfg("mvtec", "Metal_Nut")) == "metal_nut"
    assert canonical_class(cfg("mvtec", "0")) == "bottle"
    assert canonical_class(cfg("digits", "9")) == "9"


@pytest.mark.parametrize("name, normal, words", [
    ("cifar10", "10", ["'10' is not a CIFAR-10 class", "0-9", "airplane", "truck"]),
    ("cifar100", "20", ["CIFAR-100 superclass", "0-19", "vehicles_2"]),
    ("digits", "dog", ["'dog' is not a digits class"]),
    ("mvtec", "bottel", ["'bottel' is not an MVTec AD category", "bottle, cable, capsule", "wood, zipper"]),
    ("cifar10", "-1", ["'-1'"]),
])
def test_bad_class_lists_valid_ones(name, normal, words):
    with pytest.raises(FitmError) as e:
        canonical_class(cfg(name, normal))
    assert str(e.value).startswith("--class:") and "\n" not in str(e.value)
    for word in words:
        assert word in str(e.value)


def test_unknown_dataset_lists_valid_names():
    for call in (load_split, class_names, canonical_class):
        with pytest.raises(FitmError, match="unknown dataset 'svhn'.*digits, cifar10, cifar100, mvtec, folder"):
            call(cfg("svhn"))


@pytest.mark.parametrize("size", [0, -4, 3.5, "32", True])
def test_bad_image_size(size):
    with pytest.raises(FitmError, match="data.image_size"):
        load_split(cfg("digits", image_size=size))


def test_class_names():
    assert class_names(cfg("cifar10")) == list(CIFAR10_CLASSES)
    assert len(class_names(cfg("cifar100"))) == 20
    assert class_names(cfg("digits")) == [str(d) for d in range(10)]
    assert class_names(cfg("mvtec")) == list(CATEGORIES) and len(CATEGORIES) == 15


def test_cifar100_fine_to_coarse_has_five_fine_classes_per_superclass():
    assert len(CIFAR100_FINE_TO_COARSE) == 100 and len(CIFAR100_COARSE_CLASSES) == 20
    assert (np.bincount(CIFAR100_FINE_TO_COARSE, minlength=20) == 5).all()
    # Spot checks against the published table: apple -> fruit_and_vegetables, whale -> aquatic_mammals,
    # worm -> non-insect_invertebrates, lawn_mower -> vehicles_2.
    for fine, coarse in ((0, "fruit_and_vegetables"), (95, "aquatic_mammals"), (99, "non-insect_invertebrates"),
                         (41, "vehicles_2")):
        assert CIFAR100_COARSE_CLASSES[CIFAR100_FINE_TO_COARSE[fine]] == coarse


# CIFAR through torchvision

def test_cifar10_one_vs_all(cifar10_root):
    split = load_split(cfg("cifar10", "cat", cifar10_root))
    check_split(split, 32)
    assert split.class_name == "cat" and split.test_paths is None
    assert len(split.normal_train) == 10 and len(split.test_images) == 30
    assert (split.normal_train[..., 0] == 3).all() and (split.normal_train[..., 2] == 7).all()  # class, RGB order
    assert (split.test_labels == (split.test_images[:, 0, 0, 0] != 3)).all()
    assert (split.test_groups == np.array(CIFAR10_CLASSES)[split.test_images[:, 0, 0, 0]]).all()


def test_cifar10_resized(cifar10_root):
    split = load_split(cfg("cifar10", "1", cifar10_root, image_size=16))
    check_split(split, 16)
    assert (split.normal_train[..., 0] == 1).all() and (split.test_images[..., 2] == 7).all()


def test_cifar100_coarse_superclass(cifar100_root):
    split = load_split(cfg("cifar100", "people", cifar100_root))
    check_split(split, 32)
    people = [f for f in range(100) if CIFAR100_FINE_TO_COARSE[f] == 14]
    assert sorted(split.normal_train[:, 0, 0, 0]) == people
    assert sorted(split.test_images[split.test_labels == 0][:, 0, 0, 0]) == people
    assert set(split.test_groups) == set(CIFAR100_COARSE_CLASSES)


def test_cifar100_fine_test(cifar100_root):
    images, labels, names = cifar100_fine_test(str(cifar100_root), download=False)
    assert images.shape == (100, 32, 32, 3) and labels.dtype == np.int64
    assert (images[:, 0, 0, 0] == labels).all() and names[5] == "fine05"
    assert cifar100_fine_test(str(cifar100_root), False, image_size=8)[0].shape == (100, 8, 8, 3)


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_root(tmp_path, name, folder):
    with pytest.raises(FitmError, match=f"--data-root {tmp_path}: no CIFAR-.* found there .*{folder}.*--download"):
        load_split(cfg(name, "0", tmp_path))
    with pytest.raises(FitmError, match="--data-root DIR"):
        load_split(cfg(name, "0", ""))


def test_cifar_corrupt_files(cifar10_root, monkeypatch):
    monkeypatch.undo()  # torchvision's md5 check is back, and the synthetic files fail it
    with pytest.raises(FitmError, match="could not read CIFAR-10 from cifar-10-batches-py/ .*corrupted"):
        load_split(cfg("cifar10", "0", cifar10_root))


def test_cifar10_jpeg_tree(cifar10_jpeg_root):
    split = load_split(cfg("cifar10", "Dog", cifar10_jpeg_root))
    check_split(split, 32)
    assert split.class_name == "dog" and len(split.normal_train) == 2 and len(split.test_images) == 10
    assert list(split.test_groups) == list(CIFAR10_CLASSES)
    assert split.test_paths[5].endswith("test/dog/000.jpg") and split.test_labels[5] == 0
    assert split.test_labels.sum() == 9
    original = np.asarray(Image.open(split.test_paths[5]).convert("RGB"))
    assert (split.test_images[5] == original).all()  # no resize at 32 px: decoded pixels as they are


# MVTec AD

def test_mvtec_split(mvtec_root):
    split = load_split(cfg("mvtec", "Bottle", mvtec_root, image_size=8))
    check_split(split, 8)
    assert split.class_name == "bottle" and len(split.normal_train) == 4
    assert list(split.test_groups) == ["bent", "broken", "broken", "good", "good"]
    assert list(split.test_labels) == [1, 1, 1, 0, 0]
    assert all("/bottle/test/" in p for p in split.test_paths)  # ground_truth masks are not test images


def test_mvtec_masks_are_read_and_resized_with_the_images(mvtec_root):
    split = load_split(cfg("mvtec", "bottle", mvtec_root, image_size=10))  # 20 px files: half size, nearest
    assert split.test_masks.shape == (5, 10, 10) and split.test_masks.dtype == np.uint8
    assert not split.test_masks[split.test_labels == 0].any()  # good images: all zero, no file needed
    expected = np.zeros((10, 10), np.uint8)
    expected[3:5, 3:5] = 1  # broken/001: rows and columns 6..10 of 20
    assert (split.test_masks[2] == expected).all()  # groups sorted: bent/000, broken/000, broken/001, good, good


def test_mvtec_without_ground_truth_has_no_masks(mvtec_root):
    import shutil

    shutil.rmtree(mvtec_root / "bottle" / "ground_truth")
    assert load_split(cfg("mvtec", "bottle", mvtec_root, image_size=10)).test_masks is None


def test_mvtec_grayscale_category_becomes_rgb(mvtec_root):
    split = load_split(cfg("mvtec", "grid", mvtec_root, image_size=20))
    check_split(split, 20)
    assert (split.test_images[..., 0] == split.test_images[..., 1]).all()
    assert (split.test_images[0, ..., 0] == np.asarray(Image.open(split.test_paths[0]))).all()


def test_mvtec_class_names_and_missing(mvtec_root):
    assert class_names(cfg("mvtec", root=mvtec_root)) == ["bottle", "grid"]
    with pytest.raises(FitmError, match="no MVTec AD category 'cable' there .*cable/train/good"):
        load_split(cfg("mvtec", "cable", mvtec_root))
    with pytest.raises(FitmError, match="--data-root DIR"):
        load_split(cfg("mvtec", "bottle", ""))


def test_mvtec_extra_category_in_same_layout(mvtec_root, make_image_tree):
    make_image_tree(mvtec_root / "widget", {"train/good": 1, "test/good": 1, "test/scratch": 1})
    assert canonical_class(cfg("mvtec", "widget", mvtec_root)) == "widget"
    assert canonical_class(cfg("mvtec", "15", mvtec_root)) == "widget"  # after the 15 official ones


# folder

def test_folder_split(tmp_path, make_image_tree):
    written = make_image_tree(tmp_path, {"train/parts": 3, "test/parts": 2, "test/scratched": 2, "test/dented": 1},
                              size=(16, 16))
    split = load_split(cfg("folder", "", tmp_path, image_size=16))
    check_split(split, 16)
    assert split.class_name == "parts"
    assert (split.normal_train == written["train/parts"]).all()  # PNG at native size: exact pixels
    assert list(split.test_groups) == ["dented", "parts", "parts", "scratched", "scratched"]
    assert list(split.test_labels) == [1, 0, 0, 1, 1]
    assert (split.test_images[1:3] == written["test/parts"]).all()


def test_folder_masks_layout(tmp_path, make_image_tree, write_image):
    make_image_tree(tmp_path, {"train/parts": 3, "test/parts": 2, "test/scratched": 1}, size=(16, 16))
    assert load_split(cfg("folder", "", tmp_path, image_size=16)).test_masks is None  # no masks/ folder
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 2:6] = 255
    write_image(tmp_path / "masks" / "scratched" / "000.png", mask)
    split = load_split(cfg("folder", "", tmp_path, image_size=16))
    assert (split.test_masks[2] == (mask > 0)).all() and not split.test_masks[:2].any()
    (tmp_path / "masks" / "scratched" / "000.png").unlink()
    with pytest.raises(FitmError, match=r"masks/scratched/000.png: no such mask .*test/scratched/000.png"):
        load_split(cfg("folder", "", tmp_path, image_size=16))


def test_folder_errors(tmp_path, make_image_tree):
    with pytest.raises(FitmError, match="--data-root DIR"):
        load_split(cfg("folder", "", ""))
    with pytest.raises(FitmError, match="no class folders under"):
        class_names(cfg("folder", "", tmp_path))
    make_image_tree(tmp_path, {"train/a": 1, "train/b": 1, "test/b": 1})
    assert class_names(cfg("folder", "", tmp_path)) == ["a", "b"]
    with pytest.raises(FitmError, match=r"'' is not a class folder under .*/train \(expected .*a, b\)"):
        canonical_class(cfg("folder", "", tmp_path))
    with pytest.raises(FitmError, match="test/a: no such folder"):
        load_split(cfg("folder", "a", tmp_path))
    with pytest.raises(FitmError, match="only the normal folder b/"):
        load_split(cfg("folder", "b", tmp_path))


# image files

def test_list_images_filters_and_sorts(tmp_path, write_image):
    pixels = np.zeros((4, 4, 3), np.uint8)
    for name in ("b.PNG", "a.jpg", "c.Tiff", "d.webp", "e.bmp", "f.jpeg", "._g.png"):
        write_image(tmp_path / name, pixels)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.Tiff", "d.webp", "e.bmp", "f.jpeg"]


def test_list_images_missing_or_empty(tmp_path):
    with pytest.raises(FitmError, match=f"{tmp_path / 'nope'}: no such folder"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FitmError, match=f"{tmp_path / 'empty'}: no images there"):
        list_images(tmp_path / "empty")


@pytest.mark.parametrize("chunk", [1000, 2])  # one call, and the thread pool over chunks of 2 files
def test_read_images(tmp_path, make_image_tree, write_image, monkeypatch, chunk):
    monkeypatch.setattr(fitm.data.images, "_READ_CHUNK", chunk)
    written = make_image_tree(tmp_path, {"rgb": 3, "gray": 2}, size=(8, 8))
    make_image_tree(tmp_path, {"gray": 2}, size=(8, 8), gray=True, seed=1)
    write_image(tmp_path / "wide" / "0.png", np.full((10, 30, 3), 200, np.uint8))
    paths = list_images(tmp_path / "rgb") + list_images(tmp_path / "gray") + list_images(tmp_path / "wide")
    images = read_images(paths, 8)
    assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
    assert (images[:3] == written["rgb"]).all()
    assert (images[3:5, ..., 0] == images[3:5, ..., 2]).all()
    assert (read_images(paths[-1:], 5) == 200).all()  # non-square: squashed to a square


def test_read_images_corrupt_file_is_named(tmp_path, make_image_tree, monkeypatch):
    monkeypatch.setattr(fitm.data.images, "_READ_CHUNK", 2)
    make_image_tree(tmp_path, {"x": 5})
    bad = tmp_path / "x" / "003.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    with pytest.raises(FitmError, match=f"{bad}: not a readable image"):
        read_images(list_images(tmp_path / "x"), 12)
    bad.write_bytes(b"garbage")
    with pytest.raises(FitmError, match=f"{bad}: not a readable image"):
        read_images([bad], 12)


def test_resize_images_matches_pil_antialiased_resize():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    ours = resize_images(images, 8).astype(int)
    pil = np.stack([np.asarray(Image.fromarray(i).resize((8, 8), Image.Resampling.BILINEAR)) for i in images])
    assert ours.shape == (3, 8, 8, 3) and np.abs(ours - pil).max() <= 2
    naive = images[:, 1::3, 1::3].astype(int)  # no antialias: would keep the noise
    assert ours.std() < naive.std() / 2
    assert resize_images(images, 24) is images


def test_is_grayscale_needs_r_g_b_equal_in_every_pixel_of_every_image():
    grey = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 1), dtype=np.uint8).repeat(3, axis=3)
    assert is_grayscale(grey) and is_grayscale(resize_images(grey, 9))  # resizing keeps grey grey
    for channel in (1, 2):
        one_off = grey.copy()
        one_off[4, 5, 5, channel] ^= 1
        assert not is_grayscale(one_off)
    split = load_split(cfg("digits", image_size=16))
    assert is_grayscale(split.normal_train)  # the digits demo is a grey class
