"""Pictures and tables a person opens first: image grids, ROC curve, score histogram, report.html."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fitm.detector.evaluate import roc_points  # noqa: E402
from fitm.detector.train import NEAR_CHANCE  # noqa: E402
from fitm.data.images import grid  # noqa: E402
from fitm.io import atomic_path, save_text  # noqa: E402
from fitm.run import Run  # noqa: E402
from fitm.runtime import log  # noqa: E402


def _save_figure(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def save_normal_vs_fakes(normal: np.ndarray, fakes: np.ndarray, path) -> None:
    """Normal images beside fakes, so a person sees how near the fakes are."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, images, title in ((axes[0], normal, f"normal ({len(normal)})"), (axes[1], fakes, f"fakes ({len(fakes)})")):
        ax.imshow(grid(images, nrow=8, max_images=64), interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    _save_figure(fig, path)


def save_roc(scores: np.ndarray, labels: np.ndarray, auroc: float, path) -> None:
    fpr, tpr, _ = roc_points(scores, labels)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {100 * auroc:.1f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, normal vs anomalous")
    ax.legend(loc="lower right")
    _save_figure(fig, path)


def save_histogram(scores: np.ndarray, labels: np.ndarray, threshold: float | None, path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bins = np.histogram_bin_edges(scores, bins=40)
    if scores.min() > 0 and scores.max() > 100 * scores.min():  # kNN distances are heavy-tailed
        bins = np.geomspace(scores.min(), scores.max(), 41)
        ax.set_xscale("log")
    for label, name in ((0, "normal test"), (1, "anomalous test")):
        chosen = scores[labels == label]
        ax.hist(chosen, bins=bins, alpha=0.6, label=name, weights=np.full(len(chosen), 1 / len(chosen)))
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label="predict threshold")
    ax.set(xlabel="anomaly score (kNN distance)", ylabel="fraction of images", title="Scores of the test images")
    ax.legend()
    _save_figure(fig, path)


def save_extremes(images: np.ndarray, scores: np.ndarray, labels: np.ndarray, path, n: int = 16) -> None:
    """The most and least anomalous test images, with score and true label."""
    order = np.argsort(scores)
    rows = (("most anomalous", order[::-1][:n]), ("least anomalous", order[:n]))
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 3.2), squeeze=False)
    for r, (title, picks) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(picks):
                i = picks[c]
                ax.imshow(images[i], interpolation="nearest")
                ax.set_title(f"{scores[i]:.3g}\n{'anom' if labels[i] else 'norm'}", fontsize=7,
                             color="tab:red" if labels[i] else "tab:green")
        axes[r, 0].text(-0.1, 0.5, title, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=9)
    _save_figure(fig, path)


def draw(run: Run, test_images: np.ndarray | None = None) -> list[Path]:
    """(Re)draw every picture of a run from its files; test images are needed for the extremes picture."""
    metrics = run.load_metrics()
    index, labels, scores = run.load_scores()
    save_roc(scores, labels, metrics["auroc"], run.path("roc.png"))
    save_histogram(scores, labels, metrics.get("threshold"), run.path("scores_hist.png"))
    if test_images is not None:
        save_extremes(test_images[index], scores, labels, run.path("extremes.png"))
    else:
        log.warning("report: no test images given; extremes.png not redrawn")
    write_html(run)
    return sorted(run.dir.glob("*.png"))


def _pictures(run: Run) -> list[tuple[str, str]]:
    named = [
        ("fakes.png", "Normal training images beside the fakes the detector learned to reject"),
        ("roc.png", "ROC curve"),
        ("scores_hist.png", "Anomaly scores of normal and anomalous test images"),
        ("extremes.png", "Most and least anomalous test images"),
    ]
    found = [(name, caption) for name, caption in named if run.path(name).exists()]
    found += [(str(run.sde.samples(step).relative_to(run.dir)), f"Score-model samples at iteration {step}")
              for step in run.sde.steps() if run.sde.samples(step).exists()]
    return found


# What report.html shows of fakes.json: how the fakes were made and whether they are near-misses or blanks.
_FAKES_FACTS = ("step", "sampler", "corrector", "steps", "nfe", "count", "degenerate_fraction",
                "normal_degenerate_fraction", "closeness", "coverage", "nearness")


def _table(items) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                               for k, v in items) + "</table>"


def warnings(metrics: dict) -> list[str]:
    """What a reader of the figures should know first: a detector that learned nothing, or raw pixels that do
    better than the whole method on this test set."""
    notes = []
    balanced = metrics.get("detector", {}).get("final_balanced_accuracy")
    if balanced is not None and balanced < NEAR_CHANCE:
        notes.append(f"The detector told normal from fake {balanced:.3f} of the time (balanced accuracy, last epoch): "
                     "near chance, so it learned little from these fakes and its kNN scores are about the "
                     "backbone's own. Start from pretrained weights (--pretrained), raise detector.min_steps or "
                     "detector.lr, or look at fakes.png.")
    auroc, pixel = metrics.get("auroc"), metrics.get("pixel_knn_auroc")
    if auroc is not None and pixel is not None and pixel > auroc:
        notes.append(f"kNN on the raw pixels scores higher on this test set (AUROC {pixel:.4f} against {auroc:.4f}): "
                     "the detector's features do not help here; a backbone without pretrained weights rarely does.")
    return notes


def write_html(run: Run) -> Path:
    """report.html: warnings first, the metrics, how the fakes were made, and every picture of the run."""
    metrics = run.load_metrics()
    notes = "".join(f'<p class="warn">{html.escape(note)}</p>' for note in warnings(metrics))
    fakes = run.fakes_meta() or {}
    fakes_table = (f"<h2>Fakes</h2>{_table((k, fakes[k]) for k in _FAKES_FACTS if k in fakes)}" if fakes else "")
    figures = "".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
        f"</figcaption></figure>"
        for src, caption in _pictures(run)
    )
    title = f"fitm report: {run.dir.parent.name}/{run.dir.name}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}figure{{display:inline-block;margin:1em;vertical-align:top}}
img{{max-width:560px;image-rendering:pixelated}}.warn{{background:#fff3cd;padding:6px 10px}}</style></head>
<body><h1>{html.escape(title)}</h1>{notes}<h2>Metrics</h2>{_table(metrics.items())}{fakes_table}
<h2>Pictures</h2>{figures}</body></html>
"""
    path = run.path("report.html")
    save_text(page, path)
    return path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)
