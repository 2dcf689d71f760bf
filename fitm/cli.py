"""The `fitm` command: a thin layer over fitm.commands and fitm.stages. Every error is one line on stderr and exit
code 2. Heavy modules (torch, timm) are imported only by the commands that run, so `fitm --help` is quick.

Under torchrun (`torchrun --nproc_per_node N -m fitm pipeline ...`) every process runs this same command as
one rank: `--class all` gives each rank its share of the classes when there are at least as many classes as
ranks, and otherwise (or with one class) all ranks work together on each class.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

import click

from fitm import __version__
from fitm.errors import FitmError


def _dataset_options(f):
    options = [
        click.option("--dataset", default=None, help="digits, cifar10, cifar100, mvtec or folder."),
        click.option("--config", "config_path", type=click.Path(), help="A config file instead of --dataset."),
        click.option("--class", "normal_class", default=None, help="The normal class: index or name, or all."),
        click.option("--data-root", type=click.Path(), help="Where the dataset lives."),
        click.option("--download", is_flag=True, help="Download the dataset (torchvision) when online."),
        click.option("--out", default="runs", show_default=True, type=click.Path(), help="Runs folder."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key."),
        click.option("--force", is_flag=True, help="Redo stages whose outputs are up to date."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _pretrained_option(f):
    return click.option("--pretrained", default=None,
                        help="Backbone weights: .npz/.pth/.safetensors path, timm name, or none.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, package_name="fitm")
def cli():
    """fitm: near-distribution novelty detection with fakes from an early-stopped score model (FITYMI)."""


def _config(dataset, config_path, data_root, download, overrides, pretrained=None, fakes=None,
            default_dataset=None):
    from fitm.commands import resolve_config

    if dataset and config_path:
        raise FitmError("--dataset and --config: give one, not both")
    if not dataset and not config_path:
        if default_dataset is None:
            raise FitmError("--dataset NAME or --config PATH is required")
        dataset = default_dataset
    settings = {"data.root": data_root, "data.download": True if download else None,
                "detector.pretrained": pretrained, "fakes.path": fakes}
    return resolve_config(dataset, config_path, overrides, {k: v for k, v in settings.items() if v is not None})


@cli.command()
@_dataset_options
def generate(dataset, config_path, normal_class, data_root, download, out, overrides, force, quiet):
    """Train a score model on the normal class and sample early-stopped fakes into the run directory."""
    from fitm import commands, stages

    config = _config(dataset, config_path, data_root, download, overrides)

    def work(task):
        fakes = stages.generate(task, force=force)
        if task.runtime.is_main:
            meta = task.run.fakes_meta() or {}
            click.echo(f"{len(fakes)} fakes written to {task.run.path('fakes.npy')} ({100 * meta.get('degenerate_fraction', 0):.1f}% "
                       f"degenerate; picture: {task.run.path('fakes.png')})")

    commands.run_classes(config, normal_class, out, quiet, work, needs_detector=False)


@cli.command()
@_dataset_options
@click.option("--fakes", "fakes_path", type=click.Path(), help="A .npy of uint8 NHWC fakes (default: the run's).")
@_pretrained_option
@click.option("--nnd", is_flag=True, help="CIFAR-10: also score against each CIFAR-100 fine class.")
@click.option("--fsde", type=click.Path(), help="The CIFAR-10-FSDE fakes .npy: score the normal class against it.")
def detect(dataset, config_path, normal_class, data_root, download, out, overrides, force, quiet,
           fakes_path, pretrained, nnd, fsde):
    """Fine-tune the backbone on normal vs fakes, score the test set by kNN, and report AUROC."""
    from fitm import commands, stages

    config = _config(dataset, config_path, data_root, download, overrides, pretrained, fakes_path)
    commands.check_evaluation(config, nnd, fsde)

    def work(task):
        model, summary = stages.detect(task, stages.run_fakes(task), force=force)
        result = stages.evaluate(task, model, summary, nnd=nnd, fsde=fsde)
        _print_result(task, result)
        return result

    _summary(commands.run_classes(config, normal_class, out, quiet, work, needs_generate=False))


@cli.command()
@_dataset_options
@_pretrained_option
def pipeline(dataset, config_path, normal_class, data_root, download, out, overrides, force, quiet, pretrained):
    """generate, then detect, for one class or `--class all`. With no options: the offline digits demo."""
    from fitm import commands, stages

    config = _config(dataset, config_path, data_root, download, overrides, pretrained, default_dataset="digits")

    def work(task):
        fakes = stages.run_fakes(task) if task.config.fakes.path else stages.generate(task, force)
        model, summary = stages.detect(task, fakes, force=force)
        result = stages.evaluate(task, model, summary)
        _print_result(task, result)
        return result

    _summary(commands.run_classes(config, normal_class, out, quiet, work, needs_generate=not config.fakes.path))


def _print_result(task, result):
    if not task.runtime.is_main:
        return
    line = f"{task.config.data.name}/{result['class']}: AUROC {100 * result['auroc']:.2f}"
    if "nnd" in result:
        line += f", NND min AUROC {100 * result['nnd']['min_auroc']:.2f} ({result['nnd']['min_class']})"
    if "fsde_auroc" in result:
        line += f", FSDE AUROC {100 * result['fsde_auroc']:.2f}"
    click.echo(f"{line}  (report: {task.run.path('report.html')})")


def _summary(table: str | None) -> None:
    if table:
        click.echo(table)


@cli.command()
@click.option("--run", "run_path", required=True, type=click.Path(), help="A run directory with a trained detector.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--threshold", type=float, default=None, help="Override the run's threshold.")
@click.option("--resize", is_flag=True, help="Resize and convert images to the run's size and channels.")
@click.option("--csv", "csv_path", type=click.Path(), default=None, help="Default: <run>/predictions.csv.")
@click.option("--maps", "maps_dir", type=click.Path(), default=None,
              help="Write each image's anomaly map here, as a heatmap PNG over the image.")
@click.option("--npy", is_flag=True, help="With --maps: also the raw map of each image as .npy (float32).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def predict(run_path, paths, threshold, resize, csv_path, maps_dir, npy, quiet):
    """Score new images (files or folders) with a trained run."""
    from fitm.predict import predict as run_predict

    rows, used = run_predict(Path(run_path), [Path(p) for p in paths], threshold, resize,
                             Path(csv_path) if csv_path else Path(run_path) / "predictions.csv", quiet,
                             Path(maps_dir) if maps_dir else None, npy)
    width = max(len(r["path"]) for r in rows)
    click.echo(f"{'path':<{width}}  {'score':>10}  verdict")
    for r in rows:
        click.echo(f"{r['path']:<{width}}  {r['score']:>10.4g}  {r['verdict']}")
    click.echo(f"threshold {used:.4g}; {sum(r['verdict'] == 'anomalous' for r in rows)} of {len(rows)} anomalous")
    if maps_dir:
        click.echo(f"heatmaps: {maps_dir}")


@cli.command("export")
@click.option("--run", "run_path", required=True, type=click.Path(), help="A run directory with a trained detector.")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--out", "out_path", type=click.Path(), default=None, help="Default: <run>/detector.onnx.")
def export(run_path, fmt, out_path):
    """One self-contained file (preprocessing, backbone, kNN bank, threshold): uint8 NHWC images in, scores out."""
    from fitm.api import Detector
    from fitm.export import export_onnx

    detector = Detector.load(run_path, quiet=True)
    path = export_onnx(detector, out_path or Path(run_path) / "detector.onnx", "--out")
    outputs = "'scores', 'anomalous'" + (", 'maps' (N x H x W)" if detector._patches is not None else "")
    click.echo(f"exported to {path} (input 'images': uint8 N x H x W x 3; outputs {outputs})")


@cli.command("report")
@click.argument("run_path", type=click.Path())
def report_command(run_path):
    """(Re)draw a run's pictures and report.html."""
    from fitm.predict import redraw_report

    click.echo(f"report: {redraw_report(Path(run_path))}")


def main(argv=None) -> None:
    """Entry point: click's usage errors and fitm's own errors both end as one line on stderr, exit 2; under
    torchrun, a rank whose peer stopped says so in one line and stops too (exit 2), instead of waiting."""
    code = 0
    console = _console_warnings()
    handlers = _stop_on_signals()
    try:
        try:
            code = cli.main(args=argv, standalone_mode=False)
        except BaseException:
            _ignore_stop_signals()  # the way out is not interrupted (torchrun SIGTERMs a rank whose peer failed)
            raise
    except Stopped as e:
        click.echo(f"Error: stopped by {e.signal.name}; every file written so far is whole, and the same command "
                   "resumes from it", err=True)
        code = 128 + e.signal
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        code = 130
    except click.ClickException as e:
        click.echo(f"Error: {e.format_message()}".replace("\n", " "), err=True)
        code = 2
    except FitmError as e:
        click.echo(f"Error: {e}".replace("\n", " "), err=True)
        code = 2
    except Exception as e:
        if not _peer_failure(e):
            raise
        click.echo(f"Error: rank {_rank()}: another process of this torchrun job stopped (its own error says why); "
                   f"stopping too ({type(e).__name__})", err=True)
        code = 2
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if console is not None:
            console.close()
            logging.getLogger("fitm").removeHandler(console)
        if "torch.distributed" in sys.modules:
            from fitm.runtime import shutdown

            shutdown()
    sys.exit(code if isinstance(code, int) else 0)


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived: raised where the program is, so that temporary files are removed on the way out
    (a BaseException, which no `except Exception` on the way takes for an error of its own)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signal = signal.Signals(signum)


def _stop_on_signals() -> dict:
    """SIGTERM and SIGINT end the command through Stopped; returns the handlers they had."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum, frame):
        _ignore_stop_signals()  # a second signal does not interrupt the way out
        raise Stopped(signum)

    return {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}


def _ignore_stop_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)


def _console_warnings() -> logging.Handler | None:
    """fitm's warnings on stderr while the command runs (the main rank's only); fitm.log gets them too."""
    if os.environ.get("RANK", "0") != "0":
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logging.getLogger("fitm").addHandler(handler)
    return handler


PEER_GONE = ("gloo/transport", "Connection reset by peer", "Connection closed by peer")


def _peer_failure(e: Exception) -> bool:
    """Whether `e` is a collective that failed because another rank went away: a DistError, a RuntimeError raised
    inside torch.distributed, or gloo's closed connection wherever it surfaces (DDP's gradient all-reduce fails
    inside loss.backward(), so no torch.distributed frame is on its traceback)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(e, dist.DistError):
        return True
    if not isinstance(e, RuntimeError):
        return False
    frames = traceback.extract_tb(e.__traceback__)
    in_distributed = bool(frames) and "torch/distributed" in frames[-1].filename.replace("\\", "/")
    return in_distributed or any(sign in str(e) for sign in PEER_GONE)


def _rank() -> str:
    return os.environ.get("RANK", "0")
