"""Container images and cluster job scripts, checked without Docker or Slurm (no engine on these machines).

The Dockerfiles' COPY sources exist and are not excluded from the build context, the commands
their RUN/CMD/ENTRYPOINT lines call are the project's console scripts or files the image
installs, dependencies are installed before the sources are copied (a cached layer), the image
runs as a non-root user and holds no data or weights; the base images carry the torch the tests
run on and the images pin the tested monai, and (slow) each image's requirements resolve with
``pip install --dry-run`` against its base image's torch; the entrypoint scripts and the Slurm job
scripts run outside a container/cluster far enough to show their help and their errors; every
shell script passes shellcheck.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python >= 3.11 or tomli")

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.monailabel"]
SLURM_SCRIPTS = sorted((DOCKER / "slurm").glob("*.sbatch"))
SHELL_SCRIPTS = [*sorted(DOCKER.glob("*.sh")), *SLURM_SCRIPTS, DOCKER / "slurm" / "submit_pipeline.sh",
                 *sorted((REPO / "scripts").glob("*.sh")), REPO / ".ci" / "run"]
CONSOLE_SCRIPTS = set(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"])
SOURCES = ("brats_pipeline", "preprocessing")


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        pending += (" " if pending else "") + line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        for candidate in (pattern, pattern.removeprefix("**/")):
            if fnmatch.fnmatch(rel, candidate) or fnmatch.fnmatch(rel.split("/")[0], candidate):
                return True
    return False


def _exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request: pytest.FixtureRequest) -> Path:
    return request.param


# ------------------------------------------------------------------------------------- Dockerfiles
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: Path) -> None:
    patterns = _dockerignore()
    copies = [args for word, args in _instructions(dockerfile) if word in ("COPY", "ADD")]
    assert copies
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src}: no such file in the repository"
            assert not _ignored(src, patterns), f"{dockerfile.name}: COPY {src} is excluded by .dockerignore"


def test_commands_are_console_scripts_or_installed_files(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    installed = set()
    for word, args in instructions:
        if word == "COPY":
            dest = shlex.split(args)[-1]
            if dest.startswith("/usr/local/bin/"):
                installed.add(Path(dest).name)
    text = " ".join(args for word, args in instructions if word in ("RUN", "CMD", "ENTRYPOINT"))
    for command in set(re.findall(r"\b(brats-[a-z-]+|monailabel-entrypoint)\b", text)):
        assert command in CONSOLE_SCRIPTS or command in installed, f"{dockerfile.name}: unknown command {command}"
    for module in re.findall(r"python -m ((?:brats_pipeline|preprocessing)[\w.]*)", text):
        assert (REPO / module.replace(".", "/")).with_suffix(".py").is_file() or (REPO / module.replace(".", "/")).is_dir()
    entrypoints = [_exec_form(args) for word, args in instructions if word == "ENTRYPOINT"]
    assert entrypoints, f"{dockerfile.name}: no ENTRYPOINT"
    assert entrypoints[-1][0] in installed | CONSOLE_SCRIPTS


def test_dependencies_are_installed_before_the_sources_are_copied(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    first_source = min(i for i, (word, args) in enumerate(instructions)
                       if word == "COPY" and any(s in shlex.split(args)[:-1] for s in SOURCES))
    installs = [i for i, (word, args) in enumerate(instructions) if word == "RUN" and "pip install" in args]
    assert installs and installs[0] < first_source, "dependency layers must come before COPY of the sources"
    project = [i for i in installs if re.search(r"pip install --no-deps \.(\s|$)", instructions[i][1])]
    assert project and project[0] > first_source, "the project itself is installed after its sources are copied"


def test_runs_as_a_non_root_user_on_a_cuda_pytorch_base(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{dockerfile.name}: the last USER must not be root"
    assert any(word == "RUN" and "useradd" in args for word, args in instructions)
    base = next(args for word, args in instructions if word == "ARG" and args.startswith("BASE_IMAGE="))
    assert base.startswith("BASE_IMAGE=pytorch/pytorch:") and "cuda" in base
    assert ("FROM", "${BASE_IMAGE}") in instructions


def test_no_data_or_weights_go_into_the_images(dockerfile: Path) -> None:
    for word, args in _instructions(dockerfile):
        if word in ("COPY", "ADD"):
            assert not re.search(r"\.(ckpt|pt|pth|ts|nii|nii\.gz)\b|\bdata\b|demo_data", args), args
    patterns = _dockerignore()
    for rel in ("bundles/brats_unet3d_segmentation/models/model.pt", "runs/x/last.ckpt", ".venv", "demo_data",
                "tests/x.py", "case.nii.gz"):
        assert _ignored(rel, patterns), f".dockerignore lets {rel} into the build context"


def test_the_dependency_list_is_read_from_pyproject_as_the_image_does() -> None:
    run = next(args for word, args in _instructions(DOCKER / "Dockerfile") if word == "RUN" and "tomllib" in args)
    snippet = re.search(r'python -c "(.+?)"\s+>', run).group(1)
    out = subprocess.run([sys.executable, "-c", snippet], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:-1] == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


# ------------------------------------------------------------------------------- pins that resolve
def _base_torch(dockerfile: Path) -> str:
    """The torch version in the tag of the Dockerfile's default ``BASE_IMAGE`` (``pytorch/pytorch:2.13.0-cuda...``)."""
    base = next(args for word, args in _instructions(dockerfile) if word == "ARG" and args.startswith("BASE_IMAGE="))
    match = re.fullmatch(r"BASE_IMAGE=pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-(?:runtime|devel)", base)
    assert match, f"{dockerfile.name}: {base} is not a pytorch/pytorch:<torch>-cuda<X>-cudnn<Y>-runtime tag"
    return match.group(1)


def _tested_version(dist: str) -> str:
    """The version of ``dist`` the tests run on (local build suffix such as ``+cpu`` dropped)."""
    from importlib.metadata import version

    return version(dist).split("+")[0]


def _requirement_lines(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def _image_pip_install(dockerfile: Path) -> tuple[list[str], list[str], list[str]]:
    """``(requirements, constraints, options)`` of the image's dependency ``pip install``, as lines of text.

    Files the install reads are followed to their source: a ``COPY`` of a repository file, or a
    file the same ``RUN`` writes with ``python -c`` — the ``[project]`` dependencies of
    pyproject.toml, or the base image's torch (``torch==<BASE_IMAGE's torch>``; its torchvision
    is the one built for that torch, which pip finds by itself).
    """
    instructions = _instructions(dockerfile)
    copied: dict[str, Path] = {}
    for word, args in instructions:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        if word == "COPY" and len(parts) == 2 and not parts[1].endswith("/"):
            copied[parts[1]] = REPO / parts[0]
    run = next(args for word, args in instructions if word == "RUN" and "pip install" in args and "--no-deps" not in args)
    written: dict[str, list[str]] = {}
    for snippet, path in re.findall(r'python -c "(.+?)"\s+>\s*(\S+)', run):
        if "tomllib" in snippet:
            written[path] = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
        elif "import torch" in snippet:
            written[path] = [f"torch=={_base_torch(dockerfile)}"]

    def lines(path: str) -> list[str]:
        if path in written:
            return written[path]
        assert path in copied, f"{dockerfile.name}: pip reads {path}, which no COPY or python -c writes"
        return _requirement_lines(copied[path].read_text(encoding="utf-8"))

    install = next(segment for segment in run.split("&&") if "pip install" in segment)
    tokens = shlex.split(install)
    tokens = tokens[tokens.index("install") + 1:]
    requirements, constraints, options = [], [], []
    while tokens:
        token = tokens.pop(0)
        if token in ("-r", "--requirement"):
            requirements += lines(tokens.pop(0))
        elif token in ("-c", "--constraint"):
            constraints += lines(tokens.pop(0))
        elif token.startswith("-"):
            options.append(token)
        else:
            requirements.append(token)
    return requirements, constraints, options


def test_images_pin_the_torch_and_monai_the_tests_run_on(dockerfile: Path) -> None:
    """The default base image's torch and the monai pin are the versions this test run imports."""
    from packaging.requirements import Requirement

    assert _base_torch(dockerfile) == _tested_version("torch"), (
        f"{dockerfile.name}: BASE_IMAGE has torch {_base_torch(dockerfile)}, the tests run torch {_tested_version('torch')}")
    requirements, constraints, _ = _image_pip_install(dockerfile)
    monai = _tested_version("monai")
    assert any(Requirement(c).name == "monai" and str(Requirement(c).specifier) == f"=={monai}" for c in constraints), (
        f"{dockerfile.name}: monai is not pinned to the tested {monai} (constraints {constraints})")
    for line in requirements:  # nothing asks for another monai
        req = Requirement(line)
        if req.name == "monai":
            assert monai in req.specifier, f"{dockerfile.name}: {line} excludes the tested monai {monai}"


@pytest.mark.slow
def test_image_requirements_resolve_against_the_base_images_torch(dockerfile: Path, tmp_path: Path) -> None:
    """``pip install --dry-run`` of what the image installs, with its base image's torch pinned, finds the tested monai.

    Resolved on this machine's Python (the base image's may differ) from PyPI, ignoring what is
    installed here. torch is always pinned (an unpinned torch would be a multi-GB CUDA build), and
    sdists (sam2) get their metadata without build isolation, as in the image, from this
    environment's setuptools and torch.
    """
    requirements, constraints, _ = _image_pip_install(dockerfile)
    torch_pin = f"torch=={_base_torch(dockerfile)}"
    (tmp_path / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    (tmp_path / "constraints.txt").write_text("\n".join(constraints) + "\n", encoding="utf-8")
    report = tmp_path / "report.json"
    env = {**os.environ, "SAM2_BUILD_CUDA": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation", "--quiet",
         "--report", str(report), torch_pin, "-r", str(tmp_path / "requirements.txt"), "-c", str(tmp_path / "constraints.txt")],
        capture_output=True, text=True, env=env, timeout=1200,
    )
    errors = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Location")]
    assert done.returncode == 0, f"{dockerfile.name} with {torch_pin} does not resolve:\n" + "\n".join(errors[-20:])
    resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text(encoding="utf-8"))["install"]}
    assert resolved["torch"].split("+")[0] == _base_torch(dockerfile)
    assert resolved["monai"] == _tested_version("monai"), (
        f"{dockerfile.name} resolves to monai {resolved['monai']}; the tests run monai {_tested_version('monai')}")


# -------------------------------------------------------------------------------------- entrypoints
def test_pipeline_entrypoint_lists_the_commands_and_runs_one() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    shown = subprocess.run(["bash", str(DOCKER / "entrypoint.sh"), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0
    listed = set(re.findall(r"^\s+(brats-[a-z-]+)$", shown.stdout, re.M))
    assert {"brats-train", "brats-preprocess"} <= listed <= CONSOLE_SCRIPTS
    ran = subprocess.run(["bash", str(DOCKER / "entrypoint.sh"), "brats-models", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert ran.returncode == 0 and "usage" in ran.stdout.lower()


def test_monailabel_entrypoint_serves_every_mounted_bundle(tmp_path: Path) -> None:
    app = tmp_path / "apps" / "monaibundle"
    for bundle in sorted((REPO / "bundles").iterdir()):
        shutil.copytree(bundle / "configs", app / "model" / bundle.name / "configs")
    env = {**os.environ, "MONAILABEL_APP": str(app), "MONAILABEL_PORT": "8123"}
    script = str(DOCKER / "monailabel-entrypoint.sh")
    dry = subprocess.run(["bash", script, "--dry-run"], capture_output=True, text=True, env=env, timeout=60)
    assert dry.returncode == 0, dry.stderr
    cmd = shlex.split(dry.stdout)
    assert cmd[1:4] == ["-m", "monailabel.main", "start_server"]
    names = sorted(p.name for p in (REPO / "bundles").iterdir())
    assert cmd[cmd.index("models") + 1].split(",") == names
    for flag in (["zoo_source", "ngc"], ["sam2", "false"], ["--port", "8123"]):
        assert " ".join(flag) in " ".join(cmd)
    assert "no models/model.pt" in dry.stderr  # configs only: warned, not refused
    assert subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=60).returncode == 0

    one = subprocess.run(["bash", script, "--dry-run"], capture_output=True, text=True, timeout=60,
                         env={**env, "MONAILABEL_MODELS": "nope"})
    assert one.returncode == 2 and "bundle 'nope' has no" in one.stderr
    (tmp_path / "empty" / "model").mkdir(parents=True)
    empty = subprocess.run(["bash", script], capture_output=True, text=True, timeout=60,
                           env={**env, "MONAILABEL_APP": str(tmp_path / "empty")})
    assert empty.returncode == 2 and "no bundle" in empty.stderr and "mount your bundles" in empty.stderr


# ------------------------------------------------------------------------------------ Slurm scripts
@pytest.mark.parametrize("script", SLURM_SCRIPTS, ids=lambda p: p.name)
def test_sbatch_scripts_declare_resources_and_requeue(script: Path) -> None:
    lines = script.read_text(encoding="utf-8").splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert all(lines.index(d) < first_command for d in directives), "#SBATCH lines must precede the first command"
    options = {d.split()[1].split("=")[0] for d in directives}
    assert {"--job-name", "--cpus-per-task", "--mem", "--time", "--requeue", "--output"} <= options
    if script.name == "train_ddp.sbatch":
        assert {"--ntasks-per-node", "--gpus-per-node", "--signal", "--open-mode"} <= options
        assert "#SBATCH --signal=SIGUSR1@90" in directives
    used = set(re.findall(r"\b(brats-[a-z]+)\b", "\n".join(line for line in lines if not line.startswith("#"))))
    assert used <= CONSOLE_SCRIPTS


@pytest.mark.parametrize(
    ("script", "missing"),
    [("preprocess_array.sbatch", "RAW"), ("train_ddp.sbatch", "RUN_DIR"), ("infer_array.sbatch", "INFER_INPUT"),
     ("evaluate.sbatch", "PREDICTIONS")],
)
def test_sbatch_scripts_name_a_missing_variable(script: str, missing: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for name in ("RAW", "PREPROCESSED", "RUN_DIR", "DATALIST", "INFER_INPUT", "PREDICTIONS", "TRUTH", "EVALUATION"):
        env.pop(name, None)
    done = subprocess.run(["bash", str(DOCKER / "slurm" / script)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0 and missing in done.stderr


def test_infer_script_needs_a_model(tmp_path: Path) -> None:
    env = {**os.environ, "INFER_INPUT": str(tmp_path), "PREDICTIONS": str(tmp_path / "p")}
    env.pop("CHECKPOINT", None)
    env.pop("BUNDLE", None)
    done = subprocess.run(["bash", str(DOCKER / "slurm" / "infer_array.sbatch")], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "set CHECKPOINT" in done.stderr


def test_array_task_outside_the_shards_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "RAW": str(tmp_path), "PREPROCESSED": str(tmp_path / "o"), "SLURM_ARRAY_TASK_ID": "3",
           "SLURM_ARRAY_TASK_COUNT": "3"}
    done = subprocess.run(["bash", str(DOCKER / "slurm" / "preprocess_array.sbatch")], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 2 and "not a shard of N=3" in done.stderr and "0-based" in done.stderr


def _submit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DOCKER / "slurm" / "submit_pipeline.sh"), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_submit_pipeline_chains_the_jobs_with_afterok(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    env = {**os.environ, "SBATCH_ARGS": "--partition=gpu", "TRAIN_SBATCH_ARGS": "--nodes=2"}
    done = _submit("--raw", str(tmp_path / "raw"), "--task", "brats2021", "--work", str(tmp_path / "w"),
                   "--preprocess-shards", "3", "--infer-shards", "2", "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"{s}=DRYRUN{i}" for i, s in enumerate(["preprocess", "collect", "train", "infer", "evaluate"], 1)]
    commands = [shlex.split(line) for line in done.stderr.splitlines()]
    assert [c[-1].rsplit("/", 1)[1] for c in commands] == [
        "preprocess_array.sbatch", "preprocess_array.sbatch", "train_ddp.sbatch", "infer_array.sbatch", "evaluate.sbatch"]
    assert "--array=0-2" in commands[0] and "--array=0-1" in commands[3]
    assert not any(a.startswith("--dependency") for a in commands[0])
    for i in range(1, 5):
        assert f"--dependency=afterok:DRYRUN{i}" in commands[i]
        assert "--partition=gpu" in commands[i]
    assert "--nodes=2" in commands[2] and "--nodes=2" not in commands[3]
    assert not (tmp_path / "w").exists()  # a dry run writes nothing

    only = _submit("--work", str(tmp_path / "w"), "--stages", "infer,evaluate", "--after", "77", "--dry-run")
    assert only.returncode == 0 and only.stdout.split() == ["infer=DRYRUN1", "evaluate=DRYRUN2"]
    assert "--dependency=afterok:77" in only.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--work DIR is required"),
        (["--work", "w", "--stages", "train,deploy"], "unknown stage 'deploy'"),
        (["--work", "w", "--infer-shards", "0"], "positive integers, got '0'"),
        (["--work", "w", "--mode", "docker"], "--mode must be cli or bundle, got 'docker'"),
        (["--work", "w", "--mode", "bundle"], "--mode bundle needs --bundle"),
        (["--work", "w"], "--raw PATH is required"),
        (["--work", "w", "--raw", "/nonexistent/raw"], "--raw /nonexistent/raw: no such"),
        (["--work", "w", "--frobnicate"], "unknown option '--frobnicate'"),
        (["--work"], "--work needs a value"),
    ],
)
def test_submit_pipeline_names_bad_arguments(args: list[str], message: str) -> None:
    done = _submit(*args, "--dry-run")
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_slurm_cluster_script_usage() -> None:
    script = str(REPO / "scripts" / "slurm_cluster.sh")
    assert subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=30).returncode == 0
    bad = subprocess.run(["bash", script, "explode"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown command 'explode'" in bad.stderr
    no_dir = subprocess.run(["bash", script, "start"], capture_output=True, text=True, timeout=30)
    assert no_dir.returncode == 2 and "start needs a folder" in no_dir.stderr


def test_docker_readme_covers_images_apptainer_and_every_job_script() -> None:
    text = (DOCKER / "README.md").read_text(encoding="utf-8")
    for needle in ("docker build", "--gpus all", "apptainer exec --nv docker://", "built by users",
                   "submit_pipeline.sh", "--requeue", "SIGUSR1", *(p.name for p in SLURM_SCRIPTS)):
        assert needle in text, f"docker/README.md does not mention {needle}"


# ----------------------------------------------------------------------------------------- shellcheck
@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_shell_scripts_pass_shellcheck() -> None:
    done = subprocess.run(["shellcheck", "--shell=bash", *map(str, SHELL_SCRIPTS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-5000:]
