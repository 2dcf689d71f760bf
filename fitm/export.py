"""A fitted detector as one self-contained ONNX file: uint8 NHWC images in, (scores, anomalous) out, and the anomaly
maps (N x H x W) as a third output when the detector has a patch bank; with the preprocessing (resize, centre crop,
normalisation), the fine-tuned backbone, the kNN banks and the threshold inside. It runs wherever onnxruntime does,
without PyTorch or fitm."""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fitm.detector.maps import MapGeometry, spatial_tokens
from fitm.detector.transforms import NORMALIZE
from fitm.errors import FitmError
from fitm.io import atomic_path
from fitm.run import refuse_artifact

OPSET = 18  # Resize with antialiasing, as the detector's own transform does


class ScoringGraph(nn.Module):
    """What `Detector.predict` computes, as one module that export can trace."""

    def __init__(self, model: nn.Module, bank: torch.Tensor, threshold: float, det_cfg, image_size: int,
                 patches: torch.Tensor | None = None):
        super().__init__()
        self.model = model.eval()
        self.resize, self.size, self.k = int(det_cfg.resize), int(det_cfg.img_size), int(det_cfg.k)
        self.needs_resize = image_size != self.resize
        self.offset = int(round((self.resize - self.size) / 2.0))  # the eval transform's centre crop
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZE[det_cfg.normalize])
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.bank = _Bank(bank, self.k)
        self.patches = None if patches is None else _Bank(patches, int(det_cfg.maps.k))
        self.geometry = MapGeometry(det_cfg, image_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = images.permute(0, 3, 1, 2).float()
        if self.needs_resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False, antialias=True)
        c = self.offset
        x = x[:, :, c:c + self.size, c:c + self.size] * self.scale + self.shift
        tokens = self.model.forward_features(x)
        scores = self.bank(self.model.forward_head(tokens, pre_logits=True))
        if self.patches is None:
            return scores, scores > self.threshold
        grid = spatial_tokens(self.model, tokens)
        n, h, w, dim = grid.shape
        maps = self.geometry(self.patches(grid.reshape(n * h * w, dim)).reshape(n, h, w))
        return scores, scores > self.threshold, maps


class _Bank(nn.Module):
    """fitm.knn's score against a fixed bank, as plain tensor operations: the sum of the k smallest squared L2
    distances, computed about the bank's mean for float32 accuracy."""

    def __init__(self, bank: torch.Tensor, k: int):
        super().__init__()
        bank = bank.float().cpu()
        self.k = k
        self.register_buffer("centre", bank.mean(0))
        self.register_buffer("bank", bank - bank.mean(0))
        self.register_buffer("bank_sq", (bank - bank.mean(0)).square().sum(1))

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        q = queries - self.centre
        d = (q.square().sum(1, keepdim=True) + self.bank_sq - 2.0 * q @ self.bank.T).clamp(min=0)
        return d.topk(self.k, dim=1, largest=False).values.sum(1)


def export_onnx(detector, path: str | Path, what: str = "export: path") -> Path:
    """Write `detector` (a fitted fitm.Detector) to `path` as ONNX (into it as detector.onnx when `path` is a
    folder); the batch size is free, the image size is the detector's. The threshold and k are also in the file's
    metadata. A run's own files are never written over; the file appears whole or not at all, and nothing else
    is left beside it (the exporter's side files are made in a temporary folder of their own)."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise FitmError("fitm export: needs the onnx and onnxscript packages (pip install -e '.[export]')") from None
    detector._require_fitted()
    path = Path(path)
    if path.is_dir():
        path = path / "detector.onnx"
    refuse_artifact(path, what, own=("detector.onnx",))
    size = detector._image_shape[0]
    patches = detector._patches
    graph = ScoringGraph(detector._model.cpu(), detector._bank, detector.threshold, detector.config.detector, size,
                         patches)
    outputs = ["scores", "anomalous"] + (["maps"] if patches is not None else [])
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with tempfile.TemporaryDirectory(prefix="fitm-export-") as scratch, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        traced = Path(scratch) / "detector.onnx"
        warnings.simplefilter("ignore")  # the tracer's notes on timm's shape checks, which hold for this size
        try:
            torch.onnx.export(graph, (example,), str(traced), input_names=["images"], output_names=outputs,
                              opset_version=OPSET, dynamo=True, dynamic_axes={name: {0: "batch"} for name in
                                                                              ["images", *outputs]})
        except Exception as e:  # the exporter raises many types for an operator it cannot express
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FitmError(f"fitm export: this detector could not be exported to ONNX ({first})") from None
        model = onnx.load(str(traced))  # the weights the exporter wrote beside it, read in: one file
        for key, value in (("fitm.threshold", detector.threshold), ("fitm.k", detector.config.detector.k),
                           ("fitm.image_size", size), ("fitm.input", "uint8 NHWC images, 3 channels"),
                           ("fitm.outputs", ", ".join(outputs))):
            model.metadata_props.add(key=key, value=str(value))
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
    return path
