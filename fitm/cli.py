"""The `fitm` command: a thin layer over fitm.stages. Every error is one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from fitm import stages
from fitm.config import apply_overrides, load_config
from fitm.data import canonical_class, class_names, load_fakes, load_split
from fitm.errors import FitmError
from fitm.runtime import add_log_file, log, resolve_device, seed_everything, set_quiet


def _dataset_options(f):
    options = [
        click.option("--dataset", default=None, help="digits, cifar10, cifar100, mvtec or folder."),
        click.option("--config", "config_path", type=click.Path(), help="A config file instead of --dataset."),
        click.option("--class", "normal_class", default=None, help="The normal class: index or name."),
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


def _config(dataset, config_path, normal_class, data_root, download, overrides, default_dataset=None):
    if dataset and config_path:
        raise FitmError("--dataset and --config: give one, not both")
    if not dataset and not config_path:
        if default_dataset is None:
            raise FitmError("--dataset NAME or --config PATH is required")
        dataset = default_dataset
    config = load_config(dataset, config_path)
    if normal_class is not None:
        config.data.normal_class = str(normal_class)
    if data_root is not None:
        config.data.root = str(data_root)
    if download:
        config.data.download = True
    return apply_overrides(config, overrides)


def _open_run(config, out, quiet) -> stages.Run:
    set_quiet(quiet)
    device = resolve_device(config.device)
    run_dir = stages.run_dir(out, config)
    add_log_file(run_dir / "fitm.log")
    seed_everything(config.seed)
    split = load_split(config.data)
    run = stages.Run(dir=run_dir, config=config, split=split, device=device)
    stages.save_run_config(run)
    log.info("run %s: %d normal training images, %d test images, device %s",
             run_dir, len(split.normal_train), len(split.test_images), device)
    return run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fitm")
def cli():
    """fitm: near-distribution novelty detection with fakes from an early-stopped score model (FITYMI)."""


@cli.command()
@_dataset_options
def generate(dataset, config_path, normal_class, data_root, download, out, overrides, force, quiet):
    """Train a score model on the normal class and sample early-stopped fakes into the run directory."""
    config = _config(dataset, config_path, normal_class, data_root, download, overrides)
    run = _open_run(config, out, quiet)
    fakes = stages.generate(run, force=force)
    click.echo(f"{len(fakes)} fakes written to {run.dir / 'fakes.npy'} (picture: {run.dir / 'fakes.png'})")


def _pretrained(config, pretrained):
    if pretrained is not None:
        config.detector.pretrained = pretrained


@cli.command()
@_dataset_options
@click.option("--fakes", "fakes_path", type=click.Path(), help="A .npy of uint8 NHWC fakes (default: the run's).")
@click.option("--pretrained", default=None, help="ViT weights: .npz/.pth/.safetensors path, timm name, or none.")
@click.option("--nnd", is_flag=True, help="CIFAR-10: also score against each CIFAR-100 fine class.")
@click.option("--fsde", type=click.Path(), help="The CIFAR-10-FSDE fakes .npy: score the normal class against it.")
def detect(dataset, config_path, normal_class, data_root, download, out, overrides, force, quiet,
           fakes_path, pretrained, nnd, fsde):
    """Fine-tune the ViT on normal vs fakes, score the test set by kNN, and report AUROC."""
    config = _config(dataset, config_path, normal_class, data_root, download, overrides)
    _pretrained(config, pretrained)
    if fakes_path:
        config.fakes.path = str(fakes_path)
    run = _open_run(config, out, quiet)
    if config.fakes.path:
        fakes = stages.external_fakes(run, config.fakes.path)
    elif (run.dir / "fakes.npy").exists():
        fakes = load_fakes(run.dir / "fakes.npy")
    else:
        raise FitmError(f"no fakes: pass --fakes PATH, or run `fitm generate` first to write {run.dir / 'fakes.npy'}")
    model = stages.detect(run, fakes, force=force)
    result = stages.evaluate(run, model, nnd=nnd, fsde=fsde)
    _print_result(run, result)


def _print_result(run, result):
    line = f"{run.config.data.name}/{result['class']}: AUROC {100 * result['auroc']:.2f}"
    if "nnd" in result:
        line += f", NND min AUROC {100 * result['nnd']['min_auroc']:.2f} ({result['nnd']['min_class']})"
    if "fsde_auroc" in result:
        line += f", FSDE AUROC {100 * result['fsde_auroc']:.2f}"
    click.echo(f"{line}  (report: {run.dir / 'report.html'})")


@cli.command()
@_dataset_options
@click.option("--pretrained", default=None, help="ViT weights: .npz/.pth/.safetensors path, timm name, or none.")
def pipeline(dataset, config_path, normal_class, data_root, download, out, overrides, force, quiet, pretrained):
    """generate -> detect -> evaluate for one class or `--class all`. With no options: the offline digits demo."""
    config = _config(dataset, config_path, None, data_root, download, overrides, default_dataset="digits")
    _pretrained(config, pretrained)
    classes = class_names(config.data) if normal_class == "all" else [normal_class or config.data.normal_class]
    results = []
    for name in classes:
        config.data.normal_class = str(name)
        canonical_class(config.data)
        run = _open_run(config.copy_and_resolve_references(), out, quiet)
        fakes = stages.external_fakes(run, config.fakes.path) if config.fakes.path else stages.generate(run, force)
        model = stages.detect(run, fakes, force=force)
        result = stages.evaluate(run, model)
        _print_result(run, result)
        results.append(result)
    if normal_class == "all":
        summary = stages.write_summary(Path(out) / config.data.name, results)
        click.echo(summary)


@cli.command()
@click.option("--run", "run_path", required=True, type=click.Path(), help="A run directory with a trained detector.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--threshold", type=float, default=None, help="Override the run's threshold.")
@click.option("--resize", is_flag=True, help="Resize and convert images to the run's size and channels.")
@click.option("--csv", "csv_path", type=click.Path(), default=None, help="Default: <run>/predictions.csv.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def predict(run_path, paths, threshold, resize, csv_path, quiet):
    """Score new images (files or folders) with a trained run."""
    from fitm.predict import predict as run_predict

    set_quiet(quiet)
    rows, used = run_predict(Path(run_path), [Path(p) for p in paths], threshold, resize,
                             Path(csv_path) if csv_path else Path(run_path) / "predictions.csv")
    width = max(len(r["path"]) for r in rows)
    click.echo(f"{'path':<{width}}  {'score':>10}  verdict")
    for r in rows:
        click.echo(f"{r['path']:<{width}}  {r['score']:>10.4g}  {r['verdict']}")
    click.echo(f"threshold {used:.4g}; {sum(r['verdict'] == 'anomalous' for r in rows)} of {len(rows)} anomalous")


@cli.command("report")
@click.argument("run_path", type=click.Path())
def report_command(run_path):
    """(Re)draw a run's pictures and report.html."""
    from fitm.predict import redraw_report

    html_path = redraw_report(Path(run_path))
    click.echo(f"report: {html_path}")


def main(argv=None) -> None:
    """Entry point: click's usage errors and fitm's own errors both end as one line on stderr, exit 2."""
    try:
        code = cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"Error: {e.format_message()}".replace("\n", " "), err=True)
        sys.exit(2)
    except FitmError as e:
        click.echo(f"Error: {e}".replace("\n", " "), err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
