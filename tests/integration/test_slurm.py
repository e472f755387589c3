"""The Slurm job scripts of ``docker/slurm/`` on a real one-node Slurm cluster (no mock).

The fixture starts a private cluster with ``scripts/slurm_cluster.sh`` (munged + slurmctld +
slurmd in a temporary folder, their own ports and munge key), installing Debian's
``slurmctld slurmd munge slurm-client`` with apt-get first when they are absent (root needed;
skipped with the reason when that cannot be done), and stops exactly those daemons by PID at
the end. ``BRATS_SLURM_USE_EXISTING=1`` uses the cluster ``sinfo`` reaches instead (the
temporary folders must then be visible to its nodes, e.g. ``pytest --basetemp`` on a shared disk).

1. ``submit_pipeline.sh`` on a synthetic 4-case cohort: a preprocessing array of 2 -> one
   collect pass -> DDP training with 2 CPU processes under srun (gloo), 1 epoch -> an inference
   array of 2 -> evaluation. Every case is preprocessed exactly once, a checkpoint is
   published, every case is predicted exactly once, and one merged evaluation is written.
2. A training job signalled with ``scancel --signal=USR1`` saves one checkpoint on both ranks
   and is requeued (``brats_pipeline.callbacks.SlurmRequeue``); the restarted job resumes from
   that checkpoint: it does not start over.
3. ``train_ddp.sbatch`` in bundle mode: ``python -m monai.bundle run`` with the bundle's
   ``multi_gpu_train.json``, 2 CPU processes under srun, writes the bundle's ``models/model.pt``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "scripts" / "slurm_cluster.sh"
SLURM_DIR = REPO / "docker" / "slurm"
TINY_CONFIG = REPO / "brats_pipeline" / "configs" / "tiny_cpu.yaml"
CASES = [f"BraTS2021_{i:05d}" for i in range(4)]
CHAIN_TIMEOUT_S = 600
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}
#: sbatch options that fit the jobs onto a 2-CPU node without GPUs (they override the scripts' #SBATCH lines).
SMALL_JOBS = "--mem=2G --cpus-per-task=1 --gpus-per-node=0 --time=00:30:00"


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _have_slurm() -> bool:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return all(shutil.which(b, path=path) for b in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol"))


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment to submit jobs with: this venv on PATH and SLURM_CONF of a running cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env.update({
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}:/usr/sbin:/sbin",
        "BRATS_VENV": str(Path(sys.executable).parent.parent),
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",  # one CPU per task
    })
    if os.environ.get("BRATS_SLURM_USE_EXISTING") == "1":
        if "SLURM_CONF" in os.environ:
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        if _run(["bash", str(CLUSTER), "reachable"], env, check=False).returncode != 0:
            pytest.fail("BRATS_SLURM_USE_EXISTING=1 but sinfo reaches no cluster")
        yield env
        return
    if not _have_slurm():
        if shutil.which("apt-get") is None:
            pytest.skip("Slurm/munge are not installed and apt-get is unavailable to install them "
                        "(install slurmctld slurmd munge slurm-client, or: bash scripts/slurm_cluster.sh install)")
        if os.geteuid() != 0:
            pytest.skip("Slurm/munge are not installed and installing them needs root: "
                        "sudo bash scripts/slurm_cluster.sh install")
        _run(["bash", str(CLUSTER), "install"], env, timeout=900)
    folder = tmp_path_factory.mktemp("slurm")
    _run(["bash", str(CLUSTER), "start", str(folder)], env, timeout=180)
    env["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield env
    finally:
        _run(["bash", str(CLUSTER), "stop", str(folder)], env, timeout=180, check=False)


def _job_states(job_id: str, env: dict[str, str]) -> list[dict[str, str]]:
    """``scontrol show job`` of a job (one dict per array task): JobState, Restarts, ExitCode, ..."""
    out = _run(["scontrol", "-o", "show", "job", job_id], env).stdout
    rows = []
    for line in out.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if fields:
            rows.append(fields)
    return rows


def _wait(job_ids: list[str], env: dict[str, str], timeout: float, logs: Path | None = None) -> dict[str, list[dict]]:
    """Wait until every job (every array task) is in a terminal state; their ``scontrol`` rows."""
    deadline = time.monotonic() + timeout
    while True:
        states = {j: _job_states(j, env) for j in job_ids}
        if all(rows and all(r["JobState"] in TERMINAL for r in rows) for rows in states.values()):
            return states
        if time.monotonic() > deadline:
            _run(["scancel", *job_ids], env, check=False)
            summary = {j: [r.get("JobState") for r in rows] for j, rows in states.items()}
            pytest.fail(f"jobs not finished within {timeout:.0f} s: {summary}\n{_log_tails(logs)}")
        time.sleep(2)


def _log_tails(folder: Path | None, chars: int = 2500) -> str:
    if folder is None or not folder.is_dir():
        return ""
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(folder.glob("*.out")))


def _ckpt(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _csv_epochs(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return sorted({int(row["epoch"]) for row in csv.DictReader(f) if row.get("epoch")})


# ----------------------------------------------------------------------------------- the chain
def test_pipeline_chain_on_a_one_node_cluster(slurm_env: dict[str, str], tmp_path: Path) -> None:
    from brats_pipeline.data.synthetic import write_cohort

    write_cohort(tmp_path / "raw", "brats2021", n_cases=4, shape=(48, 48, 32), seed=0)
    work = tmp_path / "work"
    env = {
        **slurm_env,
        # cheap preprocessing; 2 folds: a validation fold of 2 cases, one per training rank
        "PREPROCESS_ARGS": "--n4-shrink 2 --n4-iterations 5 5 --no-register --crop-margin -1 --folds 2",
        "TRAIN_ARGS": "--trainer.max_epochs 1",
        "TRAIN_ACCELERATOR": "cpu",
        "INFER_DEVICE": "cpu",
        "SBATCH_ARGS": SMALL_JOBS,
        "TRAIN_SBATCH_ARGS": "--nodes=1 --ntasks-per-node=2",
    }
    start = time.monotonic()
    submitted = _run(["bash", str(SLURM_DIR / "submit_pipeline.sh"), "--raw", str(tmp_path / "raw"), "--task", "brats2021",
                      "--work", str(work), "--preprocess-shards", "2", "--infer-shards", "2", "--config", str(TINY_CONFIG)], env)
    jobs = dict(line.split("=", 1) for line in submitted.stdout.split())
    assert list(jobs) == ["preprocess", "collect", "train", "infer", "evaluate"], submitted.stdout
    states = _wait(list(jobs.values()), env, CHAIN_TIMEOUT_S, work / "slurm")
    elapsed = time.monotonic() - start
    print(f"Slurm chain: {elapsed:.0f} s from submission to the end of evaluation")
    logs = _log_tails(work / "slurm")
    for stage, job_id in jobs.items():
        assert [r["JobState"] for r in states[job_id]] == ["COMPLETED"] * (2 if stage in ("preprocess", "infer") else 1), (
            f"{stage}: {states[job_id]}\n{logs}")

    # every case preprocessed exactly once: the two shard manifests split the cohort; collect redid nothing
    pre = work / "preprocessed"
    done: list[str] = []
    for index in range(2):
        rows = json.loads((pre / f"manifest.shard-{index}-of-2.json").read_text())["cases"]
        assert {r["status"] for r in rows} == {"ok"}
        assert len(rows) == 2  # balanced
        done += [r["case_id"] for r in rows]
    assert sorted(done) == CASES
    collect = json.loads((pre / "manifest.json").read_text())["cases"]
    assert sorted(r["case_id"] for r in collect) == CASES and {r["status"] for r in collect} == {"skipped"}
    datalist = json.loads((pre / "datalist.json").read_text())
    assert sorted(e["case_id"] for e in datalist["training"]) == CASES and not datalist["skipped"]

    # a checkpoint, trained by 2 DDP processes (gloo) started by srun
    train_log = next((work / "slurm").glob("brats-train-*.out")).read_text()
    assert "distributed_backend=gloo" in train_log and "Starting with 2 processes" in train_log, train_log[-3000:]
    assert "SlurmRequeue: on SIGUSR1 every rank saves one checkpoint" in train_log
    model = _ckpt(work / "train" / "model.ckpt")
    assert model["epoch"] == 0 and model["hyper_parameters"]["task"] == "brats2021"
    assert list((work / "train" / "checkpoints").glob("epoch000-*.ckpt"))

    # every case predicted exactly once, the shard manifests merged
    preds = work / "predictions"
    assert sorted(p.name for p in preds.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in CASES]
    merged = json.loads((preds / "manifest.json").read_text())
    assert merged["problems"] == [] and merged["counts"] == {"ok": 4}
    assert sorted(r["case_id"] for r in merged["cases"]) == CASES
    assert sorted({r["shard_manifest"] for r in merged["cases"]}) == [str(preds / f"manifest.shard-{i}-of-2.json") for i in range(2)]

    # one evaluation of all cases, with its report
    evaluation = work / "evaluation"
    with open(evaluation / "metrics.csv", newline="") as f:
        assert sorted({row["case_id"] for row in csv.DictReader(f)}) == CASES
    assert (evaluation / "summary.json").is_file() and (evaluation / "report.html").is_file()
    assert json.loads((evaluation / "predictions_manifest.json").read_text()) == merged


# ------------------------------------------------------------------------------------- requeue
def test_usr1_requeues_training_and_it_resumes(slurm_env: dict[str, str], tmp_path: Path) -> None:
    from brats_pipeline.data.datalist import build_datalist, write_datalist
    from brats_pipeline.data.synthetic import write_cohort

    write_cohort(tmp_path / "raw", "brats2021", n_cases=4, shape=(48, 48, 32), seed=1)
    datalist = write_datalist(build_datalist(tmp_path / "raw", "brats2021", folds=2, seed=0), tmp_path / "datalist.json")
    run_dir = tmp_path / "train"
    epochs = 12
    env = {**slurm_env, "DATALIST": str(datalist), "RUN_DIR": str(run_dir), "TRAIN_CONFIG": str(TINY_CONFIG),
           "TRAIN_ACCELERATOR": "cpu", "TRAIN_ARGS": f"--trainer.max_epochs {epochs}"}
    log = tmp_path / "train.out"
    job_id = _run(["sbatch", "--parsable", *SMALL_JOBS.split(), "--ntasks-per-node=2", f"--output={log}",
                   str(SLURM_DIR / "train_ddp.sbatch")], env).stdout.strip().split(";")[0]

    deadline = time.monotonic() + 300
    while not list(run_dir.glob("runs/*/*/version_0/checkpoints/last.ckpt")):  # the first epoch is done
        state = _job_states(job_id, env)[0]["JobState"]
        if state in TERMINAL or time.monotonic() > deadline:
            _run(["scancel", job_id], env, check=False)
            pytest.fail(f"no checkpoint before the job ended or 300 s passed ({state}):\n"
                        f"{log.read_text(errors='replace')[-3000:] if log.exists() else ''}")
        time.sleep(0.2)
    _run(["scancel", "--signal=USR1", job_id], env)  # what Slurm sends 90 s before the time limit

    (final,) = _wait([job_id], env, 600)[job_id]
    text = log.read_text(errors="replace")
    assert final["JobState"] == "COMPLETED", text[-4000:]
    assert final["Restarts"] == "1", text[-4000:]  # requeued once
    assert "SlurmRequeue: SIGUSR1 received" in text and f"SlurmRequeue: requeued Slurm job {job_id}" in text, text[-4000:]
    assert (run_dir / "hpc_ckpt_1.ckpt").is_file()  # saved by both ranks at one step before requeueing

    # the restarted job resumed from a checkpoint of the first run ...
    resume_lines = [line for line in text.splitlines() if line.startswith("train_ddp: job") and "restart 1" in line]
    assert len(resume_lines) == 1 and "resume from: nothing" not in resume_lines[0], text[-4000:]
    resumed_from = Path(resume_lines[0].split("resume from: ", 1)[1].strip())
    assert f"Restored all states from the checkpoint at {resumed_from}" in text
    resumed_epoch = _ckpt(resumed_from)["epoch"]
    # ... so it did not start over, and it logged into the first run's folder: one metrics.csv for the run
    assert not list(run_dir.glob("runs/*/*/version_1")), "the resumed run must log into version_0"
    metrics_csv = next(run_dir.glob("runs/*/*/version_0/metrics.csv"))
    with open(metrics_csv, newline="") as f:
        epoch_rows = [int(row["epoch"]) for row in csv.DictReader(f) if row.get("train/loss_epoch")]
    assert _csv_epochs(metrics_csv) == list(range(epochs)), (epoch_rows, resumed_from)
    trained_before = range(max(1, resumed_epoch))  # the epochs the checkpoint had finished: not trained again
    assert all(epoch_rows.count(e) == 1 for e in trained_before), (epoch_rows, resumed_from)
    last = _ckpt(next(run_dir.glob("runs/*/*/version_0/checkpoints/last.ckpt")))
    assert last["epoch"] == epochs - 1
    assert (run_dir / "model.ckpt").is_file()


# ------------------------------------------------------------------------------- bundle mode
def test_bundle_mode_trains_with_two_ranks_under_srun(slurm_env: dict[str, str], tmp_path: Path) -> None:
    from brats_pipeline.data.datalist import build_datalist, write_datalist
    from brats_pipeline.data.synthetic import write_cohort

    write_cohort(tmp_path / "raw", "brats2021", n_cases=4, shape=(48, 48, 32), seed=2)
    datalist = write_datalist(build_datalist(tmp_path / "raw", "brats2021", folds=2, seed=0), tmp_path / "datalist.json")
    bundle = tmp_path / "brats_unet3d_segmentation"  # a copy: the run writes the bundle's models/model.pt
    shutil.copytree(REPO / "bundles" / bundle.name, bundle, ignore=shutil.ignore_patterns("*.pt", "*.ts", "runs", "eval"))
    run_dir = tmp_path / "run"
    tiny = "--epochs 1 --val_interval 1 --roi_size [32,32,32] --network_def#features [4,4,8,16,32,4] " \
           "--train#datamodule#num_workers 0"
    env = {**slurm_env, "TRAIN_MODE": "bundle", "BUNDLE": str(bundle), "DATALIST": str(datalist),
           "RUN_DIR": str(run_dir), "TRAIN_ACCELERATOR": "cpu", "TRAIN_ARGS": tiny}
    log = tmp_path / "bundle.out"
    job_id = _run(["sbatch", "--parsable", *SMALL_JOBS.split(), "--ntasks-per-node=2", f"--output={log}",
                   str(SLURM_DIR / "train_ddp.sbatch")], env).stdout.strip().split(";")[0]
    (final,) = _wait([job_id], env, 600)[job_id]
    text = log.read_text(errors="replace")
    assert final["JobState"] == "COMPLETED", text[-4000:]
    assert "monai.bundle run" in text and "multi_gpu_train.json" in text, text[-4000:]
    assert "MEMBER: 2/2" in text and "distributed_backend=gloo" in text, text[-4000:]  # 2 ranks from Slurm
    model = bundle / "models" / "model.pt"
    assert model.is_file(), text[-4000:]
    import torch

    state = torch.load(model, map_location="cpu", weights_only=True)
    assert state["final_conv.weight"].shape[:2] == (3, 4)  # 3 regions, the tiny network's last 4 features
