"""The run directory of one dataset and normal class: the one place that knows its layout, reads and writes its
artifacts, and says what each stage's outputs were made from (its cache key).

    runs/<dataset>/<class>/
      config.json  fitm.log
      sde/inputs.json  sde/ckpt_<step>.pt  sde/samples_<step>.png  sde/train_log.csv  sde/auto_checkpoint.csv
      fakes.npy  fakes.json  fakes.png
      detector/model.pt  detector/bank.pt  detector/patches.pt  detector/train_log.csv
      scores.csv  metrics.json  durations.json  nnd.csv  roc.png  scores_hist.png  extremes.png  heatmaps.png
      wrong.png  report.html  predictions.csv  detector.onnx  .fitm.lock

Every write goes to a temporary name and is renamed into place (fitm.io); an artifact that cannot be read is
treated as missing, with one log line, so the stage that owns it makes it again. A Run made with
`writer=False` (the other ranks of a torchrun job) reads but never writes. A writing Run holds the folder's lock
file while it is open, so that two processes never write one run at once.
"""

from __future__ import annotations

import csv
import fcntl
import os
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from ml_collections import ConfigDict

from fitm.config import load_config, save_config, section
from fitm.data import Split, canonical_class, is_grayscale, validate_images
from fitm.errors import FitmError
from fitm.io import fingerprint, load_json, save_csv, save_json, save_npy, save_torch
from fitm.runtime import log

# Bumped when a change makes earlier score-model checkpoints a different model (2: the mean-reduced loss).
SCORE_MODEL_FORMAT = 2
# Training keys that change neither the weights nor the draws of a step: a run may extend n_iters or add
# snapshot_iters and continue, and compile/channels_last/log_every are how it runs, not what it makes.
_TRAINING_NOT_IN_CHECKPOINTS = ("n_iters", "snapshot_iters", "log_every", "compile", "channels_last")
# Detector keys that only change scoring or speed: a new k or threshold re-scores, it does not retrain.
_DETECTOR_SCORING_ONLY = ("k", "threshold_quantile", "feature_batch_size", "compile", "maps")
_CHECKPOINT = re.compile(r"ckpt_(\d+)\.pt")

# What Detector.save writes and Detector.load reads.
SAVED = ("config.json", "detector/model.pt", "detector/bank.pt", "detector/patches.pt")
# Made from a saved detector by `fitm predict` and `fitm export`: they describe the model they were made from.
DERIVED = ("predictions.csv", "detector.onnx")
# What only the stages write (sde/ too): a folder holding any of them holds a run, not only a saved detector.
STAGE_OUTPUTS = ("fakes.npy", "fakes.json", "fakes.png", "detector/train_log.csv", "scores.csv", "metrics.json",
                 "durations.json", "nnd.csv", "roc.png", "scores_hist.png", "extremes.png", "heatmaps.png", "wrong.png",
                 "report.html")
LOG, LOCK = "fitm.log", ".fitm.lock"
_held_locks: dict[Path, int] = {}  # run folder -> the file descriptor of its lock, for the runs this process writes


def artifact_of(path: str | Path) -> tuple[Path, str] | None:
    """(run folder, name in it) when `path` is one of a run's or saved detector's own files, else None."""
    path = Path(path).expanduser().resolve()  # a link or '..' to config.json is config.json
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.json").is_file() or (folder / "detector" / "bank.pt").is_file():
            name = path.relative_to(folder).as_posix()
            if name in SAVED + DERIVED + STAGE_OUTPUTS + (LOG, LOCK) or name.startswith("sde/"):
                return folder, name
    return None


def refuse_artifact(path: str | Path, option: str, own: tuple[str, ...] = ()) -> None:
    """Refuse to write `path` when it is a run's own file, unless its name is in `own` (the command's own output,
    e.g. predictions.csv for predict)."""
    found = artifact_of(path)
    if found is not None and found[1] not in own:
        raise FitmError(f"{option} {path}: is the {found[1]} of the run {found[0]}; writing there would destroy the "
                        "run (expected a path outside it" + (f", or its {' or '.join(own)})" if own else ")"))


def summary_path(out: str | Path, dataset: str) -> Path:
    """summary.csv of `--class all`: one row per class, beside the class folders."""
    return Path(out) / dataset / "summary.csv"


def _without(d: dict, keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


# --- cache keys -------------------------------------------------------------------------------------------

def score_model_key(config: ConfigDict, normal_train: np.ndarray) -> str:
    """What the score model's checkpoints are made from. A grey class's key also says that its model has one
    channel (fitm.sde.train.score_channels): 3-channel checkpoints keyed by the same grey images alone are then
    discarded and trained again, never loaded into it."""
    training = _without(config.training.to_dict(), _TRAINING_NOT_IN_CHECKPOINTS)
    one_channel = ("one-channel score model",) if is_grayscale(normal_train) else ()
    return fingerprint(SCORE_MODEL_FORMAT, section(config, "seed", "sde", "model"), training, normal_train,
                       *one_channel)


def fakes_key(config: ConfigDict, split: Split) -> str:
    """What fakes.npy is made from: the checkpoints, which of them, and how they were sampled."""
    fakes = _without(config.fakes.to_dict(), ("path", "degenerate"))
    fakes["count"] = min(fakes["count"], len(split.normal_train))  # the count used: see config.fakes_count
    snapshots = (config.training.n_iters, tuple(config.training.snapshot_iters))
    return fingerprint(score_model_key(config, split.normal_train), section(config, "sampling"), fakes, snapshots)


def detector_key(config: ConfigDict, split: Split, fakes: np.ndarray) -> str:
    """What the fine-tuned detector is made from: its training settings, the normal images and the fakes."""
    detector = _without(config.detector.to_dict(), _DETECTOR_SCORING_ONLY)
    return fingerprint(config.seed, detector, split.normal_train, fakes)


# --- the score model's folder -----------------------------------------------------------------------------

class ScoreModelFiles:
    """sde/: checkpoints at their training steps, a sample grid per checkpoint, the training log, and the key
    of what they were trained from."""

    def __init__(self, folder: str | Path, writer: bool = True):
        self.dir = Path(folder)
        self.writer = writer

    def checkpoint(self, step: int) -> Path:
        return self.dir / f"ckpt_{step}.pt"

    def samples(self, step: int) -> Path:
        return self.dir / f"samples_{step}.png"

    @property
    def train_log(self) -> Path:
        return self.dir / "train_log.csv"

    @property
    def auto_table(self) -> Path:
        return self.dir / "auto_checkpoint.csv"

    def steps(self) -> list[int]:
        """The steps of the checkpoints present, ascending."""
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := _CHECKPOINT.fullmatch(p.name)))

    def save_checkpoint(self, step: int, state: dict) -> Path:
        path = self.checkpoint(step)
        if self.writer:
            save_torch(state, path)
        return path

    def load_checkpoint(self, step: int, mmap: bool = True) -> dict | None:
        """The checkpoint of `step`, or None (with a log line) when its file cannot be read: it is then made again.

        mmap reads only the tensors used (the EMA weights); resuming needs them all, copied."""
        path = self.checkpoint(step)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            if not isinstance(state, dict) or "ema" not in state or "step" not in state:
                raise ValueError("not a score-model checkpoint")
            return state
        except Exception as e:  # torch raises many types for a truncated or foreign file
            log.warning("score model: %s cannot be read (%s); it is treated as missing and trained again",
                        path, _first_line(e))
            return None

    def prepare(self, key: str) -> None:
        """Keep the checkpoints if they were made from `key`, else remove them: they belong to another model.
        Without a readable record (inputs.json), the newest readable checkpoint's own key decides: hours of
        training are not thrown away for a damaged small file."""
        marker = self.dir / "inputs.json"
        recorded = (_read_json(marker, "score model") or {}).get("inputs")
        if recorded is None:
            readable = (self.load_checkpoint(step) for step in reversed(self.steps()))
            recorded = next((ckpt.get("fingerprint") for ckpt in readable if ckpt is not None), None)
        if self.steps() and recorded != key:
            log.info("generate: discarding score-model checkpoints made from other inputs in %s", self.dir)
            if self.writer:
                for step in self.steps():
                    self.checkpoint(step).unlink(missing_ok=True)
                    self.samples(step).unlink(missing_ok=True)
                self.train_log.unlink(missing_ok=True)
                self.auto_table.unlink(missing_ok=True)
        if self.writer:
            save_json({"inputs": key}, marker)

    def discard(self) -> None:
        """Forget every checkpoint (`--force`)."""
        self.prepare("")


# --- the run ----------------------------------------------------------------------------------------------

class Run:
    """One dataset and one normal class: its folder and every artifact in it."""

    def __init__(self, folder: str | Path, writer: bool = True):
        self.dir = Path(folder)
        self.writer = writer
        self.sde = ScoreModelFiles(self.dir / "sde", writer)

    @classmethod
    def of(cls, out: str | Path, config: ConfigDict, writer: bool = True) -> "Run":
        return cls(Path(out) / config.data.name / canonical_class(config.data), writer)

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    def path(self, name: str) -> Path:
        """A file of the run by its name in the layout above (pictures, report.html, nnd.csv, ...)."""
        return self.dir / name

    def open(self) -> "Run":
        """Make the folder, take its lock (refused while another process holds it) and clear temporary files that
        a killed write left behind. The lock is kept until close(), or the end of the process; `with run:` does
        both."""
        if not self.writer:
            return self
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FitmError(f"--out: cannot make the run folder {self.dir} ({e.strerror or e})") from None
        if not self.dir.is_dir():
            raise FitmError(f"--out: {self.dir} is not a folder")
        self._lock()
        for tmp in list(self.dir.glob(".*.tmp*")) + list(self.dir.glob("*/.*.tmp*")):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted write", tmp)
        return self

    def close(self) -> None:
        """Release the folder's lock."""
        fd = _held_locks.pop(self.dir.resolve(), None)
        if fd is not None:
            os.close(fd)  # closing the file releases its flock

    def __enter__(self) -> "Run":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _lock(self) -> None:
        """An exclusive flock on .fitm.lock, which holds the PID of its holder. The kernel releases it when the
        holder ends, however it ends: the lock of a killed process is free again, with no stale file to clear."""
        key = self.dir.resolve()
        if key in _held_locks:
            return
        path = self.dir / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise FitmError(f"--out: cannot write in the run folder {self.dir} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FitmError(f"{self.dir}: another fitm process (PID {holder}) is writing this run; wait for it to "
                            "end, or stop it, then run the same command again") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # a full disk: the lock holds without the PID, and the first artifact written says "no space"
        _held_locks[key] = fd

    def holds_run(self) -> list[str]:
        """The files that only the stages write, present here: a folder with any holds a run."""
        found = [name for name in STAGE_OUTPUTS if (self.dir / name).is_file()]
        return found + (["sde/"] if self.sde.dir.is_dir() else [])

    def clear_derived(self) -> None:
        """Remove what a previous detector saved here left (its predictions, its ONNX file): they describe it."""
        for name in DERIVED:
            (self.dir / name).unlink(missing_ok=True)

    # --- config -------------------------------------------------------------------------------------------

    def save_config(self, config: ConfigDict) -> None:
        if self.writer:
            save_config(config, self.dir / "config.json")

    def load_config(self) -> ConfigDict:
        """The run's config; a missing folder, a file, and a folder above the runs are each said as such."""
        path = self.dir / "config.json"
        if not self.dir.exists():
            raise FitmError(f"{self.dir}: no such folder (expected a run folder, runs/<dataset>/<class>, or a folder "
                            "written by Detector.save)")
        if not self.dir.is_dir():
            raise FitmError(f"{self.dir}: is a file (expected a run folder, runs/<dataset>/<class>, or a folder "
                            "written by Detector.save)")
        if not path.is_file():
            below = sorted({p.parent for pattern in ("*/config.json", "*/*/config.json")
                            for p in self.dir.glob(pattern)})
            hint = (f"; the runs below it: {', '.join(str(p.relative_to(self.dir)) for p in below[:5])}"
                    f"{' ...' if len(below) > 5 else ''} (pass one of them)" if below else
                    "; make one with `fitm pipeline` or Detector.save")
            raise FitmError(f"{self.dir}: holds no fitm run (no config.json){hint}")
        return load_config(path=str(path))

    @property
    def log_file(self) -> Path:
        return self.dir / "fitm.log"

    # --- fakes --------------------------------------------------------------------------------------------

    def save_fakes(self, fakes: np.ndarray, meta: dict) -> None:
        if self.writer:
            save_npy(fakes, self.dir / "fakes.npy")
            save_json(meta, self.dir / "fakes.json")

    def fakes_meta(self) -> dict | None:
        return _read_json(self.dir / "fakes.json", "fakes")

    def load_fakes(self, key: str | None = None) -> np.ndarray | None:
        """fakes.npy when it was made from `key` (any key when None), else None; an unreadable file is missing."""
        path = self.dir / "fakes.npy"
        if not path.is_file():
            return None
        meta = self.fakes_meta()
        if key is not None and (meta or {}).get("inputs") != key:
            return None
        try:
            return validate_images(np.load(path, allow_pickle=False), str(path))
        except (OSError, ValueError, EOFError, FitmError) as e:
            log.warning("fakes: %s cannot be read (%s); it is treated as missing", path, _first_line(e))
            return None

    # --- detector -----------------------------------------------------------------------------------------

    @property
    def detector_log(self) -> Path:
        return self.dir / "detector" / "train_log.csv"

    def save_detector(self, state_dict: dict, key: str, summary: dict) -> None:
        """The fine-tuned weights, what they were made from, and the end-of-training figures."""
        if self.writer:
            save_torch({"state_dict": state_dict, "inputs": key, "summary": summary}, self.dir / "detector" / "model.pt")

    def load_detector(self, key: str | None = None) -> dict | None:
        """{'state_dict', 'inputs', 'summary'} when made from `key` (any key when None), else None."""
        path = self.dir / "detector" / "model.pt"
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
                raise ValueError("not a fitm detector")
        except Exception as e:
            log.warning("detect: %s cannot be read (%s); it is treated as missing", path, _first_line(e))
            return None
        return saved if key is None or saved.get("inputs") == key else None

    def save_bank(self, features: torch.Tensor, threshold: float, image_shape: tuple[int, ...]) -> None:
        if self.writer:
            save_torch({"features": features.cpu(), "threshold": float(threshold),
                        "image_shape": torch.tensor(image_shape)}, self.dir / "detector" / "bank.pt")

    def load_bank(self) -> dict:
        """{'features', 'threshold', 'image_shape'} of a finished run."""
        path = self.dir / "detector" / "bank.pt"
        try:
            bank = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(bank, dict) or not {"features", "threshold", "image_shape"} <= set(bank):
                raise ValueError("not a fitm feature bank")
        except FileNotFoundError:
            raise FitmError(f"{self.dir}: no feature bank (detector/bank.pt is missing); run `fitm detect` "
                            "or `fitm pipeline` first") from None
        except Exception as e:
            raise FitmError(f"{self.dir}: detector/bank.pt cannot be read ({_first_line(e)}); run "
                            "`fitm detect` again to remake it") from None
        return bank

    def save_patch_bank(self, patches: torch.Tensor | None) -> None:
        """The normal images' patch tokens that anomaly maps are scored against (none: no map for this backbone)."""
        path = self.dir / "detector" / "patches.pt"
        if self.writer and patches is None:
            path.unlink(missing_ok=True)
        elif self.writer:
            save_torch({"features": patches.cpu()}, path)

    def load_patch_bank(self) -> torch.Tensor | None:
        """The patch bank, or None when the run has none (a backbone without patch tokens, an older fitm)."""
        path = self.dir / "detector" / "patches.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)["features"]
        except Exception as e:
            raise FitmError(f"{self.dir}: detector/patches.pt cannot be read ({_first_line(e)}); run "
                            "`fitm detect` again to remake it") from None

    # --- results ------------------------------------------------------------------------------------------

    def record_duration(self, stage: str, seconds: float) -> None:
        """durations.json: how long each stage took when it last ran (a stage found up to date keeps its entry)."""
        if self.writer:
            durations = self.durations()
            durations[stage] = {"seconds": round(seconds, 2), "finished": datetime.now().isoformat(sep=" ", timespec="seconds")}
            save_json(durations, self.dir / "durations.json")

    def durations(self) -> dict:
        return _read_json(self.dir / "durations.json", "durations") or {}

    def save_results(self, metrics: dict, scores: list[dict]) -> None:
        if self.writer:
            save_csv(scores, self.dir / "scores.csv")
            save_json(metrics, self.dir / "metrics.json")

    def load_metrics(self) -> dict:
        metrics = _read_json(self.dir / "metrics.json", "results")
        if metrics is None:
            raise FitmError(f"{self.dir}: no readable metrics.json; run `fitm detect` or `fitm pipeline` first")
        return metrics

    def load_scores(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(test index, label, score) of every test image in scores.csv."""
        path = self.dir / "scores.csv"
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            index = np.array([int(r["index"]) for r in rows])
            labels = np.array([int(r["label"]) for r in rows])
            scores = np.array([float(r["score"]) for r in rows])
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise FitmError(f"{self.dir}: scores.csv cannot be read ({_first_line(e)}); run `fitm detect` "
                            "again to remake it") from None
        expected = self.load_metrics().get("n_test")
        if expected is not None and len(rows) != expected:
            raise FitmError(f"{self.dir}: scores.csv holds {len(rows)} rows but metrics.json counts "
                            f"{expected} test images (a damaged file); run `fitm detect` again to remake it")
        return index, labels, scores

    def score_rows(self) -> list[dict]:
        """scores.csv as read: index, group, label, score and path (strings) of every test image."""
        try:
            with open(self.dir / "scores.csv", newline="") as f:
                return list(csv.DictReader(f))
        except OSError as e:
            raise FitmError(f"{self.dir}: scores.csv cannot be read ({_first_line(e)}); run `fitm detect` "
                            "again to remake it") from None

    def save_table(self, rows: list[dict], name: str) -> None:
        if self.writer:
            save_csv(rows, self.dir / name)


def _read_json(path: Path, what: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = load_json(path)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value
    except (OSError, ValueError) as e:
        log.warning("%s: %s cannot be read (%s); it is treated as missing", what, path, _first_line(e))
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

