"""pclc as a package: a wheel (configs inside) installed outside the repository, its console scripts run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_outside_the_repo_and_its_console_scripts_run(tmp_path):
    wheel_dir, site, src = tmp_path / "dist", tmp_path / "site", tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "data", "build", "wandb",
                                                             "outputs", "multirun", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheel_dir), str(src)], check=True, capture_output=True)  # a copy: no build/ in the checkout
    wheel = next(wheel_dir.glob("pclc-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([sys.executable, "-c", "import pclc.config as c; print(c.__file__); print(c.CONFIG_DIR)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(site)) for p in where), where  # the installed copy, with its own configs
    for script in ("pclc-train", "pclc-evaluate", "pclc-reproduce", "pclc-audit"):
        assert (site / "bin" / script).exists(), script
    run = subprocess.run([str(site / "bin" / "pclc-train"), "dataset=fake", "model=lenet5", "logger=none",
                          "trainer.epochs_per_phase=1", f"store={work / 'runs'}", f"hydra.run.dir={work / 'h'}"],
                         cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    (summary,) = (work / "runs").glob("fake-lenet5-ce-*/summary.json")
    assert json.loads(summary.read_text())["epochs"] == 2
    bad = subprocess.run([str(site / "bin" / "pclc-evaluate"), "dataset=fake", "logger=none", f"store={work / 'x'}",
                          f"hydra.run.dir={work / 'h'}"], cwd=work, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no run fake-lenet5-ce-"), bad.stderr
