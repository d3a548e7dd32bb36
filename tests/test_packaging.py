"""pclc as a package: a wheel (configs inside) installed outside the repository, its console scripts run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs the wheel

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_outside_the_repo_and_its_console_scripts_run(tmp_path):
    wheel_dir, site, src = tmp_path / "dist", tmp_path / "site", tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "runs",
            "data",
            "build",
            "wandb",
            "outputs",
            "multirun",
            "*.egg-info",
            "__pycache__",
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheel_dir),
            str(src),
        ],
        check=True,
        capture_output=True,
    )  # a copy: no build/ in the checkout
    wheel = next(wheel_dir.glob("pclc-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in z.namelist())
    assert "License-Expression: MIT" in meta and "Requires-Python: >=3.11" in meta
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import pclc.config as c; print(c.__file__); print(c.CONFIG_DIR)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(p.startswith(str(site)) for p in where), where  # the installed copy, with its own configs
    for script in ("pclc-train", "pclc-evaluate", "pclc-reproduce", "pclc-audit"):
        assert (site / "bin" / script).exists(), script
    run = subprocess.run(
        [
            str(site / "bin" / "pclc-train"),
            "dataset=fake",
            "model=lenet5",
            "logger=none",
            "trainer.epochs_per_phase=1",
            f"store={work / 'runs'}",
            f"hydra.run.dir={work / 'h'}",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (summary,) = (work / "runs").glob("fake-lenet5-ce-*/summary.json")
    assert json.loads(summary.read_text())["epochs"] == 2
    bad = subprocess.run(
        [
            str(site / "bin" / "pclc-evaluate"),
            "dataset=fake",
            "logger=none",
            f"store={work / 'x'}",
            f"hydra.run.dir={work / 'h'}",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: no run fake-lenet5-ce-"), bad.stderr


def test_the_environment_is_the_one_constraints_txt_pins():
    """`make setup` installs exactly the pinned versions; the one declared conflict is torchattacks' unused
    requests~=2.25.1 (installed --no-deps, see pyproject.toml), so requests/idna stay current."""
    from importlib import metadata

    pins = dict(
        line.split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert int(pins["requests"].split(".")[1]) >= 32 and int(pins["idna"].split(".")[0]) >= 3
    for name, version in pins.items():
        assert metadata.version(name) == version, name
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert [ln for ln in check.stdout.splitlines() if ln.strip()] == [
        f"torchattacks 3.5.1 has requirement requests~=2.25.1, but you have requests {pins['requests']}."
    ]
