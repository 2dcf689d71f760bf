"""Pictures and tables a person opens first: image grids, ROC curve, score histogram, report.html."""

from __future__ import annotations

import html
import json
import textwrap
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fitm import __version__  # noqa: E402
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


def overlay(image: np.ndarray, anomaly_map: np.ndarray, low: float, high: float, alpha: float = 0.5) -> np.ndarray:
    """uint8 HxWx3: the map in the 'jet' colours (blue low, red high on the scale low..high) blended over the image."""
    scaled = np.clip((anomaly_map - low) / max(high - low, 1e-12), 0, 1)
    colours = matplotlib.colormaps["jet"](scaled)[..., :3] * 255
    return np.rint((1 - alpha) * image + alpha * colours).astype(np.uint8)


def save_heatmaps(rows: list[tuple[str, np.ndarray]], images: np.ndarray, maps: dict, masks: np.ndarray | None,
                  scores: np.ndarray, groups: np.ndarray, path, n: int = 8) -> None:
    """One row of map overlays per (title, test indices); all on one colour scale, the masks' outlines in white."""
    rows = [(title, picks[:n]) for title, picks in rows if len(picks)]
    shown = np.stack([maps[i] for _, picks in rows for i in picks])
    low, high = float(shown.min()), float(shown.max())
    fig, axes = plt.subplots(len(rows), n, figsize=(1.35 * n + 1.2, 1.75 * len(rows)), squeeze=False)
    for r, (title, picks) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(picks):
                i = picks[c]
                ax.imshow(overlay(images[i], maps[i], low, high), interpolation="nearest")
                if masks is not None and masks[i].any():
                    ax.contour(masks[i], levels=[0.5], colors="white", linewidths=0.8)
                ax.set_title(f"{scores[i]:.3g}\n{groups[i]}", fontsize=7)
        axes[r, 0].text(-0.12, 0.5, textwrap.fill(title, 14), transform=axes[r, 0].transAxes, ha="right",
                        va="center", fontsize=9)
    mappable = plt.cm.ScalarMappable(cmap="jet", norm=matplotlib.colors.Normalize(low, high))
    fig.colorbar(mappable, ax=axes, fraction=0.02, pad=0.01, label="anomaly map (patch kNN distance)")
    _save_figure(fig, path)


def _map_rows(scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> dict[str, list]:
    """Which test images the two map pictures show, worst first."""
    order = np.argsort(-scores, kind="stable")
    anomalies, normals = order[labels[order] == 1], order[labels[order] == 0]
    picked = {"heatmaps.png": [("anomalies scored highest", anomalies), ("anomalies scored lowest", anomalies[::-1]),
                               ("normal images scored highest", normals)]}
    if threshold is not None:
        picked["wrong.png"] = [("normal images called anomalous", normals[scores[normals] > threshold]),
                               ("anomalies called normal", anomalies[::-1][scores[anomalies[::-1]] <= threshold])]
    return picked


def draw(run: Run, test_images: np.ndarray | None = None, maps_of=None, masks: np.ndarray | None = None,
         config=None) -> list[Path]:
    """(Re)draw every picture of a run from its files. Test images are needed for the extremes picture, and with
    `maps_of` (test indices -> their anomaly maps) for the map overlays; `masks` outlines the ground truth."""
    metrics = run.load_metrics()
    index, labels, scores = run.load_scores()
    save_roc(scores, labels, metrics["auroc"], run.path("roc.png"))
    save_histogram(scores, labels, metrics.get("threshold"), run.path("scores_hist.png"))
    if test_images is not None:
        save_extremes(test_images[index], scores, labels, run.path("extremes.png"))
    else:
        log.warning("report: no test images given; extremes.png not redrawn")
    if test_images is not None and maps_of is not None:
        groups = np.array([row["group"] for row in run.score_rows()])
        pictures = _map_rows(scores, labels, metrics.get("threshold"))
        needed = sorted({int(i) for rows in pictures.values() for _, picks in rows for i in picks[:8]})
        maps = dict(zip(needed, maps_of(index[needed]))) if needed else {}
        for name, rows in pictures.items():
            if any(len(picks) for _, picks in rows):
                save_heatmaps(rows, test_images[index], maps, None if masks is None else masks[index], scores,
                              groups, run.path(name))
            else:
                run.path(name).unlink(missing_ok=True)  # nothing wrongly called: no stale picture
    write_html(run, config)
    return sorted(run.dir.glob("*.png"))


def _pictures(run: Run) -> list[tuple[str, str]]:
    named = [
        ("heatmaps.png", "Where the anomaly is: the anomaly maps of the anomalies scored highest and lowest and of the "
                         "normal images scored highest (ground truth outlined in white; score and group above each)"),
        ("wrong.png", "The images wrongly called at the threshold, with their anomaly maps"),
        ("roc.png", "ROC curve"),
        ("scores_hist.png", "Anomaly scores of normal and anomalous test images"),
        ("extremes.png", "Most and least anomalous test images"),
        ("fakes.png", "Normal training images beside the fakes the detector learned to reject"),
    ]
    found = [(name, caption) for name, caption in named if run.path(name).exists()]
    found += [(str(run.sde.samples(step).relative_to(run.dir)), f"Score-model samples at iteration {step}")
              for step in run.sde.steps() if run.sde.samples(step).exists()]
    return found


# What report.html shows of fakes.json: how the fakes were made and whether they are near-misses or blanks.
_FAKES_FACTS = ("source", "noise_std", "blur_sigma", "step", "trained_steps", "snapshots_not_trained", "sampler", "corrector", "steps", "nfe", "count", "degenerate_fraction",
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


_STAGES = ("generate", "detect", "evaluate")
# The headline figures, in this order; the rest of metrics.json follows them.
_HEADLINE = ("auroc", "pixel_auroc", "aupro", "aupr", "fpr95", "pixel_knn_auroc", "n_train", "n_test")
# Files of the run that report.html links to, when present.
_FILES = ("scores.csv", "metrics.json", "durations.json", "config.json", "fitm.log", "detector/train_log.csv",
          "nnd.csv", "predictions.csv", "fakes.json", "sde/train_log.csv", "sde/auto_checkpoint.csv")
_NAMES = {"auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO (FPR up to 0.3)",
          "aupr": "AUPR (anomalies positive)", "fpr95": "FPR at 95% TPR", "pixel_knn_auroc": "raw-pixel kNN AUROC",
          "n_train": "normal training images (bank)", "n_test": "test images"}


def _confusion_table(metrics: dict) -> str:
    counts = metrics.get("confusion")
    if not counts:
        return ""
    threshold = f"{metrics['threshold']:.4g}" if "threshold" in metrics else "?"
    cell = lambda key: f"<td>{counts[key]}</td>"
    return (f"<h2>At the threshold</h2><p>An image is called anomalous when its score exceeds {threshold} "
            f"({html.escape(str(metrics.get('threshold_from', '')))}, quantile "
            f"{metrics.get('threshold_quantile', '?')}).</p><table><tr><th></th><th>called normal</th>"
            f"<th>called anomalous</th></tr><tr><th>normal</th>{cell('tn')}{cell('fp')}</tr><tr><th>anomalous</th>"
            f"{cell('fn')}{cell('tp')}</tr></table>")


def _per_defect_table(metrics: dict, rows: list[dict]) -> str:
    per = metrics.get("auroc_per_defect")
    if not per:
        return ""
    counts = {}
    for row in rows:
        counts[row["group"]] = counts.get(row["group"], 0) + 1
    body = "".join(f"<tr><td>{html.escape(g)}</td><td>{counts.get(g, '')}</td><td>{_fmt(v)}</td></tr>"
                   for g, v in sorted(per.items(), key=lambda item: item[1]))
    return ("<h2>Image AUROC per defect type</h2><p>Each anomalous group against all normal test images, worst "
            f"first.</p><table><tr><th>group</th><th>images</th><th>AUROC</th></tr>{body}</table>")


def _wrong_table(metrics: dict, rows: list[dict], limit: int = 50) -> str:
    if "threshold" not in metrics or not rows:
        return ""
    threshold = metrics["threshold"]
    wrong = [r for r in rows if (float(r["score"]) > threshold) != (r["label"] == "1")]
    wrong.sort(key=lambda r: -abs(float(r["score"]) - threshold))
    if not wrong:
        return "<h2>Images wrongly called</h2><p>None: every test image is called right at the threshold.</p>"
    body = "".join(f"<tr><td>{html.escape(r['index'])}</td><td>{html.escape(r['group'])}</td><td>"
                   f"{'anomalous' if r['label'] == '1' else 'normal'}</td><td>{float(r['score']):.4g}</td><td>"
                   f"{html.escape(r.get('path') or '')}</td></tr>" for r in wrong[:limit])
    more = f" ({limit} shown, farthest from the threshold first)" if len(wrong) > limit else ""
    return (f"<h2>Images wrongly called</h2><p>{len(wrong)} of {len(rows)} test images{more}.</p><table><tr>"
            f"<th>index</th><th>group</th><th>truth</th><th>score</th><th>file</th></tr>{body}</table>")


def _durations_table(run: Run) -> str:
    durations = run.durations()
    if not durations:
        return ""
    body = "".join(f"<tr><th>{html.escape(stage)}</th><td>{_duration(d['seconds'])}</td><td>{html.escape(d['finished'])}"
                   "</td></tr>" for stage, d in sorted(durations.items(), key=lambda item: _STAGES.index(item[0])
                                                       if item[0] in _STAGES else len(_STAGES)))
    return ("<h2>Stages</h2><p>How long each stage took when it last ran (a stage found up to date keeps the time of "
            f"the run that made its outputs).</p><table><tr><th>stage</th><th>duration</th><th>finished</th></tr>"
            f"{body}</table>")


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def write_html(run: Run, config=None) -> Path:
    """report.html: warnings first, the threshold and what it calls, the metrics (per defect type too), where the
    anomalies are, the images wrongly called, every picture, the stages' durations, the config and the files."""
    metrics = run.load_metrics()
    rows = run.score_rows() if run.path("scores.csv").is_file() else []
    notes = "".join(f'<p class="warn">{html.escape(note)}</p>' for note in warnings(metrics))
    headline = [(_NAMES[k], metrics[k]) for k in _HEADLINE if k in metrics]
    rest = [(k, v) for k, v in metrics.items() if k not in _HEADLINE and k not in ("confusion", "auroc_per_defect")]
    fakes = run.fakes_meta() or {}
    fakes_table = (f"<h2>Fakes</h2>{_table((k, fakes[k]) for k in _FAKES_FACTS if k in fakes)}" if fakes else "")
    figures = "".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
        f"</figcaption></figure>"
        for src, caption in _pictures(run)
    )
    if config is None and run.path("config.json").is_file():
        config = run.load_config()
    config_html = ("<h2>Config</h2><details><summary>the resolved config</summary><pre>"
                   f"{html.escape(json.dumps(config.to_dict(), indent=1, default=str))}</pre></details>"
                   if config is not None else "")
    links = " · ".join(f'<a href="{name}">{name}</a>' for name in _FILES if run.path(name).is_file())
    title = f"fitm report: {run.dir.parent.name}/{run.dir.name}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin-bottom:1em}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}figure{{display:inline-block;margin:1em;vertical-align:top}}
img{{max-width:1100px;image-rendering:pixelated}}.warn{{background:#fff3cd;padding:6px 10px}}.meta{{color:#555}}
pre{{background:#f6f6f6;padding:8px;font-size:12px}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class="meta">fitm {html.escape(__version__)} · written {datetime.now().isoformat(sep=" ", timespec="seconds")} ·
files: {links}</p>{notes}
<h2>Metrics</h2>{_table(headline)}{_confusion_table(metrics)}{_per_defect_table(metrics, rows)}
<h2>Pictures</h2>{figures}{_wrong_table(metrics, rows)}{_durations_table(run)}
<h2>Everything in metrics.json</h2>{_table(rest)}{fakes_table}{config_html}</body></html>
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
