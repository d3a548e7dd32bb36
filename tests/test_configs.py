"""Every config file composes; unknown names and mismatched model/dataset pairs fail clearly."""

from __future__ import annotations

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

from pclc.config import CONFIG_DIR, compose, validate_data_model

TRAIN_GROUPS = ["dataset", "model", "loss", "trainer", "logger"]  # groups in train.yaml's defaults
FILES = [(g, f.stem) for g in TRAIN_GROUPS for f in sorted((CONFIG_DIR / g).glob("*.yaml"))]
ATTACKS = sorted(f.stem for f in (CONFIG_DIR / "attack").glob("*.yaml"))
SUITES = sorted(f.stem for f in (CONFIG_DIR / "attack" / "suite").glob("*.yaml"))
EXPERIMENTS = sorted(f.stem for f in (CONFIG_DIR / "experiment").glob("*.yaml"))
ROOTS = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))
FITTING_DATASET = {"lenet5": "fmnist", "cnn3": "mnist", "vgg13": "cifar10", "resnet56": "cifar100"}
FITTING_MODEL = {
    "mnist": "lenet5",
    "kmnist": "lenet5",
    "fmnist": "lenet5",
    "fake": "lenet5",
    "fake_colour": "vgg13",
    "fake_large": "resnet56",
    "cifar10": "vgg13",
    "svhn": "vgg13",
    "cifar100": "vgg13",
    "tinyimagenet": "vgg13",
}


def overrides_for(group: str, name: str) -> list[str]:
    if group == "model":
        return [f"model={name}", f"dataset={FITTING_DATASET[name]}"]
    if group == "dataset":
        return [f"dataset={name}", f"model={FITTING_MODEL[name]}"]
    return [f"{group}={name}"]


@pytest.mark.parametrize("group,name", FILES, ids=[f"{g}/{n}" for g, n in FILES])
def test_every_config_file_composes_and_resolves(group, name):
    from omegaconf import OmegaConf

    from pclc.losses import build_loss
    from pclc.train import build_adversary

    cfg = compose("train", overrides_for(group, name))
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert (cfg.choices[group] if group in cfg.choices else resolved[group]["name"]) == name
    validate_data_model(cfg)
    assert callable(build_loss(cfg.loss))  # a registered loss with valid parameters
    build_adversary(cfg.trainer)
    if group == "dataset":  # the planner's split sizes come from the config
        assert int(resolved["dataset"]["examples"]["train"]) > 0 and int(resolved["dataset"]["examples"]["test"]) > 0


def test_every_config_folder_is_covered():
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    assert groups == set(TRAIN_GROUPS) | {"attack", "experiment", "hydra", "profiles"}
    assert ROOTS == ["audit", "evaluate", "reproduce", "train"]


PROFILES = sorted(f.stem for f in (CONFIG_DIR / "profiles" / "train").glob("*.yaml"))


def test_every_profile_is_an_overlay_for_training_evaluation_and_the_audit():
    """Budgets are set one way: a profile is three `# @package _global_` overlays (lightning-hydra-template's
    configs/debug/), never lists of override strings."""
    assert PROFILES == ["full", "quick", "tiny"]
    for kind in ("train", "eval", "audit"):
        files = sorted((CONFIG_DIR / "profiles" / kind).glob("*.yaml"))
        assert [f.stem for f in files] == PROFILES
        assert all(f.read_text().startswith("# @package _global_") for f in files)


@pytest.mark.parametrize("profile", PROFILES)
def test_a_profile_sets_what_it_says_in_the_configs_a_cell_composes(profile):
    from pclc.experiment import audit_cfg, eval_cfg, experiment_cells, train_cfg

    cfg = compose("reproduce", ["experiment=table1", "logger=none", "datasets=[fmnist]", f"profile={profile}"])
    cell = experiment_cells(cfg)[0]
    tc, ec, ac = train_cfg(cell, cfg), eval_cfg(cell, cfg, "table1"), audit_cfg(cell, cfg)
    epochs = {"full": 50, "quick": 3, "tiny": 1}[profile]
    assert tc.trainer.epochs_per_phase == ec.trainer.epochs_per_phase == ac.trainer.epochs_per_phase == epochs
    assert ec.eval.subset == {"full": None, "quick": 1000, "tiny": 20}[profile] and "eval" not in tc
    assert ac.audit.subset == {"full": None, "quick": 500, "tiny": 20}[profile]
    assert (ec.eval.param_overrides is not None) == (profile == "tiny")


ROOT_KEYS = {
    "train": {"dataset", "model", "loss", "trainer", "logger", "seed", "store", "accel"},
    "evaluate": {"dataset", "model", "loss", "suite", "eval", "run_dir"},
    "audit": {"dataset", "model", "loss", "audit"},
    "reproduce": {"experiment", "methods", "profile", "stage", "datasets", "attacks"},
}


@pytest.mark.parametrize("root", ROOTS)
def test_root_configs_compose(root):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose(root), resolve=True)
    assert ROOT_KEYS[root] <= set(cfg), sorted(ROOT_KEYS[root] - set(cfg))


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_configs_name_a_registered_attack_with_valid_parameters(name):
    from pclc.attacks import ATTACKS as KNOWN
    from pclc.attacks import build_attack
    from pclc.config import group_config

    a = group_config("attack", name)
    atk = build_attack(a)  # refuses unknown, missing or out-of-range parameters
    assert atk.name in KNOWN and a._target_ == KNOWN.get(atk.name).target and atk.passes >= 1


@pytest.mark.parametrize("name", SUITES)
def test_attack_suites_compose_and_expand(name):
    from pclc.attacks.suite import expand_suite

    cfg = compose("evaluate", [f"attack/suite={name}"])
    family_dataset = {"grey": "fmnist", "colour": "cifar10", "large": "cifar100"}
    for fam in cfg.suite.families:
        d = compose("train", [f"dataset={family_dataset[fam]}"]).dataset
        entries = expand_suite(cfg.suite, d)
        assert entries and all(e.eps is None or 0 < e.eps <= 1 for e in entries)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_configs_compose(name):
    cfg = compose("reproduce", [f"experiment={name}"])
    assert cfg.experiment.name == name and cfg.experiment.kind in (
        "table",
        "all",
        "tsne",
        "behaviour",
        "gaps",
        "audit",
        "deviations",
        "autoattack",
    )


@pytest.mark.parametrize("model,dataset", [("vgg13", "cifar10"), ("resnet56", "tinyimagenet"), ("lenet5", "kmnist")])
def test_model_config_instantiates_for_its_dataset(model, dataset):
    cfg = compose("train", [f"model={model}", f"dataset={dataset}"])
    net = instantiate(cfg.model)
    assert net.head.out_features == cfg.dataset.num_classes


def test_unknown_names_fail_naming_the_option():
    with pytest.raises(MissingConfigException, match="imagenet21k"):
        compose("train", ["dataset=imagenet21k"])
    with pytest.raises(MissingConfigException, match="resnet18"):
        compose("train", ["model=resnet18"])


@pytest.mark.parametrize(
    "model,dataset,words",
    [
        ("lenet5", "cifar10", ["lenet5", "1x28x28", "3x32x32"]),
        ("vgg13", "fmnist", ["vgg13", "1x28x28"]),
        ("cnn3", "tinyimagenet", ["cnn3", "3x64x64"]),
    ],
)
def test_mismatched_model_and_dataset_are_refused(model, dataset, words):
    cfg = compose("train", [f"model={model}", f"dataset={dataset}"])
    with pytest.raises(ValueError) as e:
        validate_data_model(cfg)
    assert all(w in str(e.value) for w in words)


def test_class_count_mismatch_is_refused():
    cfg = compose("train", ["model=lenet5", "dataset=fmnist", "model.num_classes=7"])
    with pytest.raises(ValueError, match="num_classes=7"):
        validate_data_model(cfg)


def test_compose_returns_independent_copies_that_follow_the_environment(monkeypatch, tmp_path):
    from pclc.config import compose

    a = compose("train", ["dataset=fake"])
    a.dataset.eps = [0.5]
    assert list(compose("train", ["dataset=fake"]).dataset.eps) == [0.1, 0.2, 0.3]  # the cache is not mutated
    monkeypatch.setenv("PCLC_RUNS", str(tmp_path / "elsewhere"))
    assert compose("train", ["dataset=fake"]).store == str(tmp_path / "elsewhere")


def test_experiment_globals_override_the_reproduce_defaults():
    from pclc.config import compose

    demo = compose("reproduce", ["experiment=demo"])
    assert list(demo.datasets) == ["fmnist"] and demo.profile == "quick"  # make demo: FMNIST only, quick
    assert compose("reproduce", ["experiment=demo", "profile=tiny"]).profile == "tiny"  # the command line wins
    assert (
        compose("reproduce", ["experiment=table1"]).datasets is None
        and compose("reproduce", ["experiment=table1"]).profile == "full"
    )


def test_slurm_launcher_config_asks_for_a_gpu_and_requeues():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("reproduce", ["hydra/launcher=pclc_slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1 and launcher.max_num_timeout >= 1


def test_the_extra_example_of_reproduce_yaml_parses():
    cfg = compose("reproduce", ['extra=["dataset.root=/data"]'])
    assert list(cfg.extra) == ["dataset.root=/data"]


@pytest.mark.slow
@pytest.mark.parametrize("app", ["train", "evaluate", "reproduce", "audit"])
def test_each_command_has_its_own_help(app):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", f"pclc.{app}", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith(f"pclc-{app} (python -m pclc.{app})"), out.stderr[-500:]
    assert f"Groups {app} uses:" in out.stdout and "Usage:" in out.stdout
