"""Under torchrun, on the CPU with gloo (2 processes, tiny configs): `--class all` does each class once and
writes the summary a single process writes; one class trained by 2 ranks follows the 1-process run (same global
batch; dropout off, since each rank draws its own dropout masks); a killed 2-rank job resumes; one rank killed
stops the other in bounded time with one error line; a rank that fails ends both with exit 2 instead of a hang."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY = str(Path(__file__).parents[1] / "configs" / "tiny_digits.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT = 300


def fitm(*args, ranks: int = 1, **kwargs) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    command = [*(launcher if ranks > 1 else [sys.executable]), "-m", "fitm", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=ENV, **kwargs)


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (torchrun starts its workers in sessions of their own), from /proc."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_for(path: Path, job: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists() and job.poll() is None, f"{path} never appeared while the job ran"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_class_parallel_does_each_class_once_and_writes_the_one_process_summary(tmp_path):
    args = ["pipeline", "--config", TINY, "--class", "all", "--quiet"]
    two = fitm(*args, "--out", str(tmp_path / "two"), ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = fitm(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    assert read_csv(tmp_path / "two/digits/summary.csv") == read_csv(tmp_path / "one/digits/summary.csv")
    for k in range(10):
        log = (tmp_path / f"two/digits/{k}/fitm.log").read_text()
        assert log.count("run ") == 1 and log.count("detect: saved") == 1, k  # done once, by one rank
    assert sum(line.startswith("digits/") for line in two.stdout.splitlines()) == 10 and "mean" in two.stdout


def test_one_class_on_two_ranks_follows_the_one_process_run(tmp_path):
    settings = ["--set", "detector.dropout=0.0", "--set", "sampling.batch_size=16"]
    args = ["pipeline", "--config", TINY, "--class", "3", "--quiet", *settings]
    two = fitm(*args, "--out", str(tmp_path / "two"), ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = fitm(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = tmp_path / "one/digits/3", tmp_path / "two/digits/3"
    for log in ("sde/train_log.csv", "detector/train_log.csv"):
        for ra, rb in zip(read_csv(a / log), read_csv(b / log), strict=True):
            assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5), log
    # The fakes' batches are seeded by index and gathered in order: the same images from 2 ranks as from 1.
    assert np.array_equal(np.load(a / "fakes.npy"), np.load(b / "fakes.npy"))
    for name, key in (("sde/ckpt_10.pt", "model"), ("detector/model.pt", "state_dict")):
        wa, wb = (torch.load(run / name, weights_only=True)[key] for run in (a, b))
        assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5, name
    ma, mb = (json.loads((run / "metrics.json").read_text()) for run in (a, b))
    assert ma["auroc"] == pytest.approx(mb["auroc"], abs=1e-4)

    odd = fitm("generate", "--config", TINY, "--class", "3", "--set", "training.batch_size=15", "--out",
               str(tmp_path / "odd"), ranks=2)
    assert odd.returncode != 0 and "training.batch_size=15 does not divide over 2 processes" in odd.stderr


def test_a_killed_two_rank_job_resumes_where_it_stopped(tmp_path):
    settings = ["--set", "training.n_iters=200", "--set", "training.snapshot_iters=(20, 100)", "--set",
                "fakes.checkpoint=last"]
    args = ["generate", "--config", TINY, "--class", "5", "--quiet", *settings]
    straight = fitm(*args, "--out", str(tmp_path / "straight"), ranks=2)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "killed"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    job = subprocess.Popen([*launcher, "-m", "fitm", *args, "--out", str(out)], env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "digits/5/sde/ckpt_20.pt"
    wait_for(first, job)
    for pid in [job.pid, *descendants(job.pid)]:  # the whole job, every rank at once, as a lost machine would
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait()
    assert first.exists() and not (out / "digits/5/fakes.npy").exists()

    resumed = fitm(*args, "--out", str(out), ranks=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "score model: resuming from" in (out / "digits/5/fitm.log").read_text()
    wa, wb = (torch.load(run / "digits/5/sde/ckpt_200.pt", weights_only=True)["model"]
              for run in (tmp_path / "straight", out))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6
    assert np.array_equal(np.load(out / "digits/5/fakes.npy"), np.load(tmp_path / "straight/digits/5/fakes.npy"))


def rank_of(pid: int) -> str | None:
    """The RANK torchrun gave a process, from its environment; None for the launcher or a process gone."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((v[5:].decode() for v in environ if v.startswith(b"RANK=")), None)


def test_torchrun_with_one_rank_killed_stops_the_other_in_bounded_time_and_resumes(tmp_path):
    args = ["generate", "--config", TINY, "--class", "5", "--quiet", "--set", "training.n_iters=200",
            "--set", "training.snapshot_iters=(20, 100)", "--set", "fakes.checkpoint=last", "--out", str(tmp_path)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "--log-dir", str(tmp_path / "logs"), "--redirects", "3"]
    job = subprocess.Popen([*launcher, "-m", "fitm", *args], env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    wait_for(tmp_path / "digits/5/sde/ckpt_20.pt", job)
    rank_1 = next(pid for pid in descendants(job.pid) if rank_of(pid) == "1")
    os.kill(rank_1, signal.SIGKILL)
    clock = time.monotonic()
    job.wait(timeout=120)
    assert time.monotonic() - clock < 60 and job.returncode != 0
    rank_0 = [p for p in (tmp_path / "logs").rglob("stderr.log") if p.parent.name == "0"]
    err = rank_0[0].read_text()
    assert err.count("Error: ") == 1 and "Traceback" not in err, err
    assert "stopped" in err.strip().splitlines()[-1]

    resumed = fitm(*args, ranks=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "score model: resuming from" in (tmp_path / "digits/5/fitm.log").read_text()
    assert (tmp_path / "digits/5/fakes.npy").is_file()


def test_a_failing_rank_ends_the_job_with_exit_2_on_both(tmp_path):
    """Two classes shared out over two ranks; rank 1's class has an unreadable image. Rank 1 stops with its
    error; rank 0 finishes its class, finds its peer gone at the end, and stops too: no hang."""
    rng = np.random.default_rng(0)
    for name in ("A", "B"):
        for split, count in (("train", 12), ("test", 4)):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "data/train/B/broken.png").write_bytes(b"not an image")
    args = [sys.executable, "-m", "fitm", "pipeline", "--config", TINY, "--set", "data.name=folder", "--set",
            f"data.root={tmp_path / 'data'}", "--class", "all", "--out", str(tmp_path / "out"), "--quiet"]
    port = str(29500 + os.getpid() % 1000)
    ranks = [subprocess.Popen(args, env={**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
                                         "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [rank.communicate(timeout=TIMEOUT) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [2, 2]
    errors = [err for _, err in outputs]
    assert errors[1].count("\n") == 1 and "broken.png: not a readable image" in errors[1]
    # (above it, rank 0's own warning about its random little class may stand; one error line, its last)
    assert errors[0].count("Error: ") == 1 and "another process of this torchrun job stopped" in \
        errors[0].strip().splitlines()[-1]
    assert "Traceback" not in errors[0] + errors[1]


def test_a_peer_lost_inside_backward_is_told_from_the_programs_own_errors(tmp_path):
    """DDP's all-reduce fails inside loss.backward() (no torch.distributed frame on the traceback) with gloo's
    message; that is a lost peer, a shape error is not."""
    import torch.distributed as dist

    from fitm.cli import _peer_failure

    def backward(message):
        raise RuntimeError(message)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        errors = []
        for message in ("[third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:29110: "
                        "Connection reset by peer.", "mat1 and mat2 shapes cannot be multiplied (4x3 and 2x2)"):
            try:
                backward(message)
            except RuntimeError as e:
                errors.append(e)
        assert [_peer_failure(e) for e in errors] == [True, False]
    finally:
        dist.destroy_process_group()
    assert not _peer_failure(errors[0])  # outside a torchrun job nothing is a peer's failure
