"""What a hostile user tries next: a run's own files as an output target, NaN thresholds, weight files that are not
weights, library warnings, and the faults of the machine: two writers of one run, a full disk, a read-only file
system, SIGTERM/SIGINT, and kill -9 at every stage boundary (a torchrun rank killed: test_distributed.py). Each ends
in one line, and nothing already written is lost; a rerun resumes."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fitm
from fitm.errors import FitmError
from fitm.run import SAVED

TINY = str(Path(__file__).parents[1] / "configs" / "tiny_digits.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PIPELINE = ["pipeline", "--config", TINY, "--class", "3", "--quiet"]
TIMEOUT = 300


def fitm_process(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fitm", *args], capture_output=True, text=True, timeout=TIMEOUT,
                          env=ENV)


def one_line(err: str, *words: str) -> None:
    assert err.count("\n") == 1 and err.startswith("Error: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


def snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name not in ("fitm.log", ".fitm.lock")}


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny digits run, made by a process as a user's is (also the reference of the kill -9 test)."""
    out = tmp_path_factory.mktemp("runs")
    done = fitm_process(*PIPELINE, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    images = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return {"out": out, "run": out / "digits" / "3", "images": images}


@pytest.fixture
def run_copy(finished, tmp_path):
    out = tmp_path / "runs"
    shutil.copytree(finished["out"], out)
    return out / "digits" / "3"


# --- 1. a run's own files are never an output target -------------------------------------------------------

@pytest.mark.parametrize("command, target", [
    ("predict", "config.json"), ("predict", "metrics.json"), ("predict", "detector/model.pt"),
    ("export", "config.json"), ("export", "detector/bank.pt"), ("export", "scores.csv"), ("export", "sde/ckpt_10.pt"),
])
def test_a_run_file_as_csv_or_out_is_refused_and_the_run_kept(run_copy, finished, cli, command, target):
    before = snapshot(run_copy)
    option = "--csv" if command == "predict" else "--out"
    args = [str(finished["images"])] if command == "predict" else []
    code, _, err = cli(command, "--run", str(run_copy), *args, option, str(run_copy / target))
    assert code == 2
    one_line(err, option, target, "would destroy the run")
    assert snapshot(run_copy) == before


def test_export_into_an_existing_folder_writes_detector_onnx_and_leaves_no_temporary_file(run_copy, tmp_path, cli):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    folder = tmp_path / "exports"
    folder.mkdir()
    code, out, err = cli("export", "--run", str(run_copy), "--out", str(folder))
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["detector.onnx"]
    code, _, err = cli("export", "--run", str(run_copy))  # the default: into the run
    assert code == 0, err
    assert (run_copy / "detector.onnx").is_file() and leftovers(run_copy) == []
    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    scores = ort.InferenceSession(str(folder / "detector.onnx")).run(["scores"], {"images": images})[0]
    assert scores == pytest.approx(fitm.Detector.load(run_copy).score(images), rel=1e-4)


def test_save_replaces_a_saved_detector_with_its_onnx_and_refuses_a_run(run_copy, tmp_path):
    detector = fitm.Detector.load(run_copy, quiet=True)
    before = snapshot(run_copy)
    other = tmp_path / "other_run"
    shutil.copytree(run_copy, other)
    with pytest.raises(FitmError, match=r"save: folder=.*holds a fitm run \(fakes.npy"):
        detector.save(other)
    assert snapshot(other) == before
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FitmError, match=r"save: folder=.*is a file"):
        detector.save(a_file)

    saved = tmp_path / "saved"
    detector.save(saved)
    (saved / "detector.onnx").write_bytes(b"the previous model's export")
    (saved / "predictions.csv").write_text("path,score\n")
    detector.save(saved)  # again: the stale export and predictions go
    assert sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file() and p.name != ".fitm.lock") == \
        sorted(SAVED)
    assert detector.save(run_copy) == run_copy and snapshot(run_copy) == before  # its own folder: nothing to do


def test_load_names_a_missing_folder_a_file_and_the_runs_below(finished, tmp_path, cli):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for path, words in ((tmp_path / "missing", "no such folder"), (a_file, "is a file")):
        with pytest.raises(FitmError, match=words) as error:
            fitm.Detector.load(path)
        assert "--run" not in str(error.value) and "--out" not in str(error.value)
    code, _, err = cli("export", "--run", str(finished["out"]))
    one_line(err, "holds no fitm run", "the runs below it: digits/3")


# --- 2. numbers, weights, configs, images ------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_threshold_that_is_not_a_finite_number_is_refused(finished, cli, value):
    code, _, err = cli("predict", "--run", str(finished["run"]), str(finished["images"]),
                       "--threshold", value, "--csv", str(finished["out"] / "p.csv"))
    assert code == 2
    one_line(err, "--threshold", "finite number")


def test_detector_predict_checks_its_threshold_as_the_command(finished):
    detector = fitm.Detector.load(finished["run"], quiet=True)
    images = np.zeros((2, 8, 8, 3), np.uint8)
    for bad in (float("nan"), float("inf"), "0.5", True):
        with pytest.raises(FitmError, match=r"predict: threshold=.*expected a finite number"):
            detector.predict(images, threshold=bad)
    scores, anomalous = detector.predict(images, threshold=np.float32(0.0))  # numpy's numbers are numbers
    assert anomalous.tolist() == (scores > 0).tolist()


def test_a_float_set_to_infinity_is_refused(finished, cli):
    code, _, err = cli(*PIPELINE, "--out", str(finished["out"]), "--set", "detector.lr=1e999")
    assert code == 2
    one_line(err, "detector.lr=inf")


def test_an_empty_snapshot_tuple_is_named(finished, cli):
    code, _, err = cli(*PIPELINE, "--out", str(finished["out"]), "--set", "training.snapshot_iters=()")
    assert code == 2
    one_line(err, "training.snapshot_iters=()", "fakes.checkpoint='10'")


@pytest.mark.parametrize("content, kind", [
    (b"hello, not weights\n", "a text file"),
    (pickle.dumps({1, 2, 3}), "a Python pickle"),
    (b"<!DOCTYPE html><html>404</html>", "an HTML page"),
    (b"", "an empty file"),
])
def test_a_weights_file_that_is_not_weights_is_one_line_naming_its_kind(tmp_path, cli, content, kind):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    code, _, err = cli("detect", "--config", TINY, "--class", "3", "--out", str(tmp_path / "o"),
                       "--pretrained", str(path), "--quiet")
    assert code == 2
    one_line(err, str(path), kind, ".safetensors")
    assert "weights_only" not in err.lower() and "unpickl" not in err.lower()


def test_a_palette_png_and_a_very_large_png_score_with_no_library_warning(finished, tmp_path):
    palette = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    palette.info["transparency"] = b"\x00" * 256
    palette.save(tmp_path / "palette.png", transparency=b"\x00" * 256)
    Image.new("L", (12000, 12000), 128).save(tmp_path / "large.png", compress_level=1)
    done = fitm_process("predict", "--run", str(finished["run"]), "--resize", "--quiet", "--csv",
                        str(tmp_path / "p.csv"), str(tmp_path / "palette.png"), str(tmp_path / "large.png"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"warning: large image {tmp_path / 'large.png'}: resized from 12000x12000 to 8x8"
    assert "Warning" not in done.stderr


# --- 3. the machine's faults --------------------------------------------------------------------------------

def test_a_second_writer_of_a_run_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken(run_copy, cli):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from fitm.run import Run; "
                               "Run(sys.argv[1]).open(); print('held', flush=True); time.sleep(120)", str(run_copy)],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run_copy)
        code, _, err = cli(*PIPELINE, "--out", str(run_copy.parents[1]))
        assert code == 2
        one_line(err, f"another fitm process (PID {holder.pid}) is writing this run")
        assert snapshot(run_copy) == before
    finally:
        holder.kill()
        holder.wait()
    code, _, err = cli(*PIPELINE, "--out", str(run_copy.parents[1]))
    assert code == 0, err
    assert (run_copy / ".fitm.lock").read_text().strip() == str(os.getpid())


def test_a_full_disk_keeps_the_previous_file_and_says_no_space(tmp_path, monkeypatch):
    """Without a small file system of its own: the write itself fails as a full disk's does."""
    from fitm.io import save_npy

    path = tmp_path / "fakes.npy"
    save_npy(np.arange(5), path)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(FitmError, match="fakes.npy: no space left on the device"):
        save_npy(np.arange(7), path)
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def _namespace_shell(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`script` (sh) as root of a user and mount namespace of its own, where it may mount small file systems."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --user --mount is not permitted here: no small file system to fill or make read-only")
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=TIMEOUT, env=ENV)


def test_a_full_file_system_during_a_checkpoint_and_fakes_write(finished, tmp_path):
    """A 6 MB tmpfs holding a finished run, then filled: new fakes and a new checkpoint cannot be written."""
    fitm_cmd = f"{sys.executable} -m fitm generate --config {TINY} --class 3 --quiet --out disk/runs"
    script = f"""
        mkdir -p disk && mount -t tmpfs -o size=6m tmpfs disk || exit 99
        cp -r {finished["out"]} disk/runs && cp -r disk/runs before || exit 98
        cat /dev/zero > disk/filler 2>/dev/null
        truncate -s -12288 disk/filler  # room for the small files (inputs.json, the log), not for fakes.npy
        {fitm_cmd} --set sampling.steps=6 2> fakes.err; echo $? > fakes.rc
        truncate -s -12288 disk/filler
        {fitm_cmd} --set training.n_iters=30 --set fakes.checkpoint=last 2> ckpt.err; echo $? > ckpt.rc
        cp -r disk/runs after
    """
    done = _namespace_shell(script, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for name, file in (("fakes", "fakes.npy"), ("ckpt", "sde/ckpt_")):
        assert (tmp_path / f"{name}.rc").read_text().strip() == "2"
        one_line((tmp_path / f"{name}.err").read_text(), file, "no space left on the device")
    before, after = (snapshot(tmp_path / folder / "digits/3") for folder in ("before", "after"))
    assert set(after) == set(before)  # no half-written fakes.npy, no new checkpoint, no temporary file
    for name in ("fakes.npy", "fakes.json", "sde/ckpt_10.pt"):
        assert after[name] == before[name], name


def test_an_unwritable_out_and_a_read_only_data_root_are_refused_before_any_work(tmp_path):
    fitm_cmd = f"{sys.executable} -m fitm"
    script = f"""
        mkdir -p ro existing && mount -t tmpfs -o ro tmpfs ro || exit 99
        mount -t tmpfs tmpfs existing && mkdir -p existing/digits/3 && mount -o remount,ro existing || exit 97
        {fitm_cmd} pipeline --config {TINY} --class 3 --quiet --out ro/runs 2> new.err; echo $? > new.rc
        {fitm_cmd} pipeline --config {TINY} --class 3 --quiet --out existing 2> existing.err; echo $? > existing.rc
        {fitm_cmd} generate --dataset cifar10 --data-root ro/cifar --download --quiet --out runs 2> root.err
        echo $? > root.rc
    """
    clock = time.monotonic()
    done = _namespace_shell(script, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for name, words in (("new", ["--out", "cannot make the run folder", "Read-only file system"]),
                        ("existing", ["--out", "cannot write in the run folder", "Read-only file system"]),
                        ("root", ["--data-root", "not writable", "--download"])):
        assert (tmp_path / f"{name}.rc").read_text().strip() == "2", name
        one_line((tmp_path / f"{name}.err").read_text(), *words)
    assert time.monotonic() - clock < 120  # three refusals, no training
    assert not (tmp_path / "runs").exists()


def _start(args, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fitm", *args, "--out", str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, job: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists() and job.poll() is None, f"{path} never appeared while the job ran"


@pytest.mark.parametrize("signum, command, marker, code", [
    (signal.SIGTERM, "generate", "sde/ckpt_10.pt", 143),  # while the score model trains on to step 60 (last)
    (signal.SIGINT, "detect", "detector/train_log.csv", 130),  # after the first of 20 epochs of the detector
])
def test_sigterm_and_sigint_stop_with_one_line_and_a_rerun_resumes(finished, tmp_path, cli, signum, command,
                                                                     marker, code):
    run = tmp_path / "digits/3"
    if command == "detect":  # the run's fakes, without its detector
        shutil.copytree(finished["run"], run)
        shutil.rmtree(run / "detector")
    args = [command, *PIPELINE[1:], "--set", "training.n_iters=60", "--set", "fakes.checkpoint=last", "--set",
            "detector.epochs=20"]
    job = _start(args, tmp_path)
    _wait_for(run / marker, job)
    job.send_signal(signum)
    _, err = job.communicate(timeout=60)
    assert job.returncode == code
    errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert errors == [f"Error: stopped by {signal.Signals(signum).name}; every file written so far is whole, and "
                      "the same command resumes from it"], err
    assert leftovers(run) == [] and not (run / "detector/model.pt").exists()

    code, _, err = cli(*args, "--out", str(tmp_path))
    assert code == 0, err
    log = (run / "fitm.log").read_text().rsplit(f"run {run}:", 1)[-1]
    assert "score model: resuming from" in log if command == "generate" else (run / "metrics.json").is_file()


SIGTERM_ON_THE_WAY_OUT = """
import os, signal
import fitm.cli
from fitm.errors import FitmError

class SignalsWhenFreed:  # as torchrun's SIGTERM to a rank whose peer failed, landing while its error unwinds
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)

@fitm.cli.cli.command("fail")
def fail():
    held = SignalsWhenFreed()
    raise FitmError("the command's own error")

fitm.cli.main(["fail"])
"""


def test_a_signal_while_an_error_unwinds_leaves_the_one_error_line():
    done = subprocess.run([sys.executable, "-c", SIGTERM_ON_THE_WAY_OUT], capture_output=True, text=True,
                          timeout=TIMEOUT, env=ENV)
    assert (done.returncode, done.stderr) == (2, "Error: the command's own error\n")


# --- 4. kill -9 at every stage boundary ---------------------------------------------------------------------

# Runs the command with one stage function wrapped to SIGKILL the process at a chosen point: deterministic, and
# nothing of it in fitm itself.
KILLER = """
import os, signal, sys
from pathlib import Path
import fitm.io, fitm.run, fitm.stages

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(owner, name, when=lambda *a: True):
    original = getattr(owner, name)
    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args):
            die()
        return result
    setattr(owner, name, wrapped)

def before_rename_of(file):
    original = fitm.io.os.replace
    def replace(src, dst):
        if Path(dst).name == file:
            die()  # the temporary file is whole, the rename never comes
        original(src, dst)
    fitm.io.os.replace = replace

point = sys.argv[1]
if point == "score training":
    before_rename_of("ckpt_10.pt")  # its last step: trained, never saved
elif point == "sampling":
    before_rename_of("fakes.npy")
elif point == "detector training":
    after(fitm.stages, "train_discriminator")
elif point == "features":
    after(fitm.stages, "extract_features")
elif point == "report":
    before_rename_of("scores_hist.png")
from fitm.cli import main
main(sys.argv[2:])
"""

# Each kill point and what the killed run must have left: the files of the stages before it, none of its own.
KILL_POINTS = [
    ("score training", "sde/inputs.json", "sde/ckpt_10.pt"),
    ("sampling", "sde/ckpt_10.pt", "fakes.npy"),
    ("detector training", "fakes.npy", "detector/model.pt"),
    ("features", "detector/model.pt", "detector/bank.pt"),
    ("report", "metrics.json", "report.html"),
]


def test_kill_9_at_every_stage_boundary_then_a_rerun_equals_an_uninterrupted_run(finished, tmp_path):
    """One folder, killed once in each stage in turn; each next run resumes what the last left, and the final one
    writes what an uninterrupted run wrote: metrics, scores and fakes byte for byte, the weights tensor for tensor."""
    run = tmp_path / "digits/3"
    for point, present, absent in KILL_POINTS:
        killed = subprocess.run([sys.executable, "-c", KILLER, point, *PIPELINE, "--out", str(tmp_path)],
                                capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])
        assert (run / present).is_file() and not (run / absent).exists(), point
    done = fitm_process(*PIPELINE, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert leftovers(run) == []

    reference = finished["run"]
    for name in ("metrics.json", "scores.csv", "fakes.npy", "fakes.json", "config.json"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    for name, key in (("sde/ckpt_10.pt", "ema"), ("sde/ckpt_10.pt", "model"), ("detector/model.pt", "state_dict")):
        a, b = (torch.load(r / name, weights_only=True)[key] for r in (run, reference))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = (torch.load(r / "detector/bank.pt", weights_only=True) for r in (run, reference))
    assert torch.equal(a["features"], b["features"]) and a["threshold"] == b["threshold"]
    assert json.loads((run / "metrics.json").read_text())["n_test"] > 0
