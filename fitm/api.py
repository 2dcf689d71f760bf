"""fitm from Python: `Detector` fits on normal images, then scores and predicts new ones, and saves and loads
itself (a run folder of the `fitm` command loads the same way)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from fitm.commands import check_split, resolve_config
from fitm.config import finite_number, has_key, load_config, validate_config
from fitm.errors import FitmError


class Detector:
    """fitm from Python: fit on normal images (a uint8 NHWC array or a folder), then score and predict new ones.

        model = fitm.Detector.from_config("digits", detector__epochs=5)   # '__' stands for '.' in config keys
        model.fit(normal_images)             # trains the score model, samples fakes, fine-tunes the detector
        scores = model.score(images)         # kNN anomaly scores, higher = more anomalous
        scores, anomalous = model.predict(images)
        maps = model.anomaly_map(images)     # where: (N, H, W), higher = more anomalous
        model.save("my_detector"); same = fitm.Detector.load("my_detector")

    A run folder of the `fitm` command (runs/<dataset>/<class>) loads the same way. Its work happens in
    `workdir` (a temporary folder unless given): the score model's checkpoints, the fakes and their pictures.
    """

    def __init__(self, config: ConfigDict, workdir: str | Path | None = None, quiet: bool = False):
        import tempfile

        self.config = validate_config(config, "Detector config")
        self.quiet = quiet
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fitm-"))
        self._model = self._bank = self._threshold = self._image_shape = self._patches = None

    @classmethod
    def from_config(cls, config: str = "digits", pretrained: str | None = None, workdir: str | Path | None = None,
                    quiet: bool = False, **overrides) -> "Detector":
        """A built-in dataset's config by name, or a config file's path; `pretrained` sets detector.pretrained
        and every keyword `section__key=value` sets `section.key` (e.g. detector__epochs=5)."""
        dataset, path = (None, config) if Path(config).suffix in (".py", ".json") else (config, None)
        settings = {key.replace("__", "."): value for key, value in overrides.items()}
        if pretrained is not None:
            settings["detector.pretrained"] = pretrained
        defaults = load_config(dataset, path)
        unknown = [key for key in settings if not has_key(defaults, key)]
        if unknown:
            raise FitmError(f"Detector.from_config: unknown config key {unknown[0]!r} (keyword "
                            f"{unknown[0].replace('.', '__')})")
        return cls(resolve_config(dataset, path, (), settings), workdir, quiet)

    # --- fitting ------------------------------------------------------------------------------------------

    def fit(self, normal, fakes=None) -> "Detector":
        """Learn what normal looks like from `normal` (uint8 NHWC array, or a folder of images): generate fakes
        (unless given, as a uint8 NHWC array or a .npy path), fine-tune the detector, and keep the kNN bank."""
        from fitm import stages
        from fitm.data import Split, load_fakes, validate_images
        from fitm.run import Run

        images = self._images(normal, "normal images", resize=True)
        if len(images) < 2:
            raise FitmError(f"normal images: got {len(images)}, expected at least 2")
        empty = np.empty((0, *images.shape[1:]), np.uint8)
        split = Split(normal_train=images, test_images=empty, test_labels=np.empty(0, np.int64),
                      test_groups=np.empty(0, str), test_paths=None, class_name="normal")
        check_split(self.config, split)
        task = stages.Task(run=Run(self.workdir), config=self.config, split=split, runtime=self._runtime())
        with task.run, task.runtime.log_file(task.run.log_file):
            if fakes is None:
                fakes = stages.generate(task)
            elif isinstance(fakes, (str, Path)):
                fakes = load_fakes(fakes)
            else:
                fakes = validate_images(fakes, "fakes")
            model, _ = stages.detect(task, fakes)
            bank, threshold = stages.fit_bank(task, model)
            self._patches = stages.fit_patch_bank(task, model)
            task.run.save_config(self.config)
        self._model, self._bank, self._threshold = model, bank, threshold["threshold"]
        self._image_shape = tuple(images.shape[1:])
        return self

    # --- using it -----------------------------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        """Scores above it are anomalous: the quantile detector.threshold_quantile of normal scores."""
        self._require_fitted()
        if not np.isfinite(self._threshold):
            raise FitmError(f"{self.workdir}: the detector has no threshold (made by an older fitm); pass one "
                            "(--threshold)")
        return self._threshold

    def score(self, images, resize: bool = False) -> np.ndarray:
        """Anomaly scores (float32, higher = more anomalous) of a uint8 NHWC array, a folder or a list of image
        files; images must have the detector's size unless `resize`."""
        from fitm.detector.train import extract_features
        from fitm.knn import knn_scores

        self._require_fitted()
        batch = self._images(images, "images", resize)
        runtime = self._runtime()
        features = extract_features(self._model, batch, self.config.detector, runtime)
        scores = knn_scores(features, self._bank.to(runtime.device), self.config.detector.k).cpu().numpy()
        if not np.isfinite(scores).all():
            raise FitmError("score: the detector gives non-finite scores (damaged weights); fit it again")
        return scores

    def anomaly_map(self, images, resize: bool = False) -> np.ndarray:
        """(N, H, W) float32 anomaly maps at the detector's image size (H = W): the kNN distance of each patch to
        the normal training images' patches, upsampled and smoothed; higher = more anomalous."""
        from fitm.detector.maps import anomaly_maps

        self._require_fitted()
        if self._patches is None:
            raise FitmError(f"anomaly maps: {self.workdir} has no patch bank (detector/patches.pt): its backbone has "
                            "no patch tokens, or an older fitm made it (run `fitm detect` again)")
        batch = self._images(images, "images", resize)
        maps = anomaly_maps(self._model, batch, self._patches, self.config.detector, self._runtime())
        if not np.isfinite(maps).all():
            raise FitmError("anomaly maps: the detector gives non-finite values (damaged weights); fit it again")
        return maps

    def predict(self, images, threshold: float | None = None, resize: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, anomalous): the scores and whether each exceeds the threshold (the fitted one by default)."""
        threshold = self.threshold if threshold is None else finite_number(threshold, "predict: threshold")
        scores = self.score(images, resize)
        return scores, scores > threshold

    # --- saving -------------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """config.json, detector/model.pt and detector/bank.pt in `folder`: what Detector.load needs. A detector
        saved there before is replaced with what it left (its predictions.csv, its detector.onnx); a folder that
        holds a run (fakes, scores, a report: files that would describe another model) is refused."""
        from fitm.run import Run

        self._require_fitted()
        run = Run(folder)
        if run.dir.exists() and not run.dir.is_dir():
            raise FitmError(f"save: folder={str(folder)!r} is a file (expected a folder to save the detector in)")
        if run.dir.resolve() == self.workdir.resolve():
            return run.dir  # this detector's own folder (fit's workdir, load's folder) holds it already
        if found := run.holds_run():
            raise FitmError(f"save: folder={str(folder)!r} holds a fitm run ({', '.join(found[:3])}), whose files "
                            "would then describe another model (expected a new or empty folder, or one written by "
                            "Detector.save)")
        with run:
            run.save_config(self.config)
            run.save_detector(self._model.state_dict(), "saved", {})
            run.save_bank(self._bank, self._threshold, self._image_shape)
            run.save_patch_bank(self._patches)
            run.clear_derived()
        return run.dir

    @classmethod
    def load(cls, folder: str | Path, quiet: bool = False) -> "Detector":
        """A saved detector, or the run folder of a finished `fitm detect` / `fitm pipeline`."""
        from fitm.detector.backbone import create_architecture
        from fitm.run import Run

        run = Run(folder, writer=False)
        config = run.load_config()
        saved = run.load_detector()
        if saved is None:
            raise FitmError(f"{run.dir}: no readable trained detector (detector/model.pt); run `fitm detect` or "
                            "`fitm pipeline` first, or Detector.save")
        bank = run.load_bank()
        detector = cls(config, workdir=run.dir, quiet=quiet)
        model = create_architecture(config.detector)
        model.load_state_dict(saved["state_dict"])
        detector._model, detector._bank = model.eval(), bank["features"]
        detector._threshold = float(bank["threshold"])
        detector._image_shape = tuple(int(v) for v in bank["image_shape"])
        detector._patches = run.load_patch_bank()
        return detector

    # --- helpers ------------------------------------------------------------------------------------------

    def _runtime(self):
        from fitm.runtime import Runtime

        return Runtime.local(self.config.device, quiet=self.quiet)

    def _require_fitted(self) -> None:
        if self._model is None:
            raise FitmError("this Detector is not fitted: call fit(normal_images) or Detector.load(folder) first")

    def _images(self, images, what: str, resize: bool) -> np.ndarray:
        """uint8 NHWC with 3 channels at the detector's image size, from an array, a folder or image files."""
        from fitm.data import list_images, read_images, resize_images, validate_images
        from fitm.data.images import read_image

        size = self._image_shape[0] if self._image_shape else self.config.data.image_size
        if isinstance(images, (str, Path)) or (isinstance(images, (list, tuple)) and images
                                               and isinstance(images[0], (str, Path))):
            paths = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
            files = [f for p in paths for f in (list_images(p) if p.is_dir() else [p])]
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise FitmError(f"{missing[0]}: no such file or folder")
            if resize:
                return read_images(files, size)
            arrays = [read_image(f) for f in files]
            for f, a in zip(files, arrays):
                if a.shape[:2] != (size, size):
                    raise FitmError(f"{f}: {a.shape[0]}x{a.shape[1]}, but this detector's images are {size}x{size} "
                                    "(pass --resize / resize=True to resize them)")
            return np.stack(arrays)
        array = validate_images(images, what)
        if array.shape[1:3] != (size, size):
            if not resize:
                raise FitmError(f"{what}: {array.shape[1]}x{array.shape[2]}, but this detector's images are "
                                f"{size}x{size} (pass resize=True to resize them)")
            array = resize_images(array, size)
        return np.ascontiguousarray(array)
