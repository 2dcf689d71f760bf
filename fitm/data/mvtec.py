"""MVTec AD: <root>/<category>/train/good/ normal, <root>/<category>/test/<defect>/ with 'good' normal, and the
masks of the defective test images in <root>/<category>/ground_truth/<defect>/<name>_mask.png (a category without
ground_truth/ is scored per image only)."""

from __future__ import annotations

from pathlib import Path

from fitm.data import Split
from fitm.data.folder import read_image_tree, subfolders
from fitm.data.masks import read_masks
from fitm.errors import FitmError

CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)


def categories_present(root: str) -> list[str]:
    """Folders under root in the MVTec layout (those with a train/ inside), sorted."""
    if not root or not Path(root).is_dir():
        return []
    return [name for name in subfolders(Path(root)) if (Path(root) / name / "train").is_dir()]


def valid_categories(root: str) -> list[str]:
    """The 15 official categories first (so an index means the same everywhere), then any other
    category in the same layout under root."""
    return list(CATEGORIES) + [name for name in categories_present(root) if name not in CATEGORIES]


def load_split(data_cfg, category: str) -> Split:
    if not data_cfg.root:
        raise FitmError("--data-root DIR: MVTec AD needs a root holding <category>/train/good/")
    folder = Path(data_cfg.root) / category
    if not folder.is_dir():
        raise FitmError(f"--data-root {data_cfg.root}: no MVTec AD category {category!r} there "
                        f"(expected {folder}/train/good/)")
    split = read_image_tree(folder, "good", data_cfg.image_size, class_name=category)
    if (folder / "ground_truth").is_dir():
        split.test_masks = read_masks(folder / "ground_truth", "_mask", split.test_paths, split.test_labels,
                                      split.test_groups, data_cfg.image_size)
    return split
