"""Every option of every config group composes, and its objects instantiate."""

import pytest
import torch
from helpers import config_options
from hydra.utils import instantiate

from har_bench.experiment.components import RUNNER_KEYS, build, model_from_config
from har_bench.training.engine import Trainer
from har_bench.training.schedules import StepSchedule


def test_root_config_has_the_documented_keys(compose_cfg):
    cfg = compose_cfg()
    for key in (
        "seed",
        "dataset.root",
        "paths.data_dir",
        "trainer.max_epochs",
        "trainer.batch_size",
        "trainer.accumulate_grad_batches",
        "trainer.precision",
        "trainer.device",
        "trainer.limit_train_batches",
        "trainer.limit_eval_batches",
        "trainer.patience",
        "model.cardinality",
        "model.base_width",
        "optimizer.lr",
    ):
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]


@pytest.mark.parametrize("name", config_options("optimizer"))
def test_optimizers_instantiate(compose_cfg, name):
    cfg = compose_cfg(f"optimizer={name}")
    opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
@pytest.mark.parametrize("name", config_options("scheduler"))
def test_schedulers_instantiate(compose_cfg, name):
    cfg = compose_cfg(f"scheduler={name}")
    if not cfg.get("scheduler"):
        return  # "none": constant lr
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    factory = instantiate(cfg.scheduler)
    # Per-step schedules also take the optimizer steps per epoch, which the trainer knows.
    per_step = isinstance(factory, StepSchedule)
    scheduler = factory(opt, 10) if per_step else factory(opt)
    lrs = []
    for _ in range(cfg.trainer.max_epochs * (10 if per_step else 1)):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    # Every schedule stays at or below the optimizer's lr and ends lower than its peak.
    assert max(lrs) <= 0.1 + 1e-9 and lrs[-1] < max(lrs), lrs


def build_trainer(cfg) -> Trainer:
    trainer = build(cfg, "trainer", exclude=RUNNER_KEYS)
    assert isinstance(trainer, Trainer)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    return trainer


@pytest.mark.parametrize("name", config_options("trainer"))
def test_trainers_instantiate(compose_cfg, name):
    build_trainer(compose_cfg(f"trainer={name}"))


@pytest.mark.parametrize("name", config_options("dataset"))
def test_datasets_compose(compose_cfg, name):
    cfg = compose_cfg(f"dataset={name}")
    assert cfg.dataset._target_.startswith("har_bench.data.")
    # Image sets default to the image augmentation, sensor sets to the sensor one.
    image = name in ("cifar10", "image_folder")
    expected = "image_transforms.ImageAugment" if image else "augment.Augment"
    assert cfg.augment._target_ == f"har_bench.training.{expected}"
    assert (
        compose_cfg(f"dataset={name}", "augment=none").augment._target_
        == "har_bench.training.augment.Augment"
    )


def test_synthetic_dataset_and_split_instantiate(compose_cfg):
    cfg = compose_cfg("dataset=synthetic", "split.val_fraction=0.2")
    data = instantiate(cfg.dataset)
    split = instantiate(cfg.split)(data)
    assert len(split.train) and len(split.val) and len(split.test)
    subjects = split.subjects(data)
    assert not set(subjects["val"]) & set(subjects["train"])
    assert not set(subjects["test"]) & (set(subjects["train"]) | set(subjects["val"]))


@pytest.mark.parametrize("name", config_options("experiment"))
def test_experiments_compose(compose_cfg, name):
    cfg = compose_cfg(f"experiment={name}")
    build_trainer(cfg)
    model_from_config(cfg, in_channels=3, num_classes=4)


@pytest.mark.parametrize("name", config_options("ablation"))
def test_each_ablation_changes_the_ablated_recipe(compose_cfg, name):
    from omegaconf import OmegaConf

    from har_bench.config import flatten

    base = flatten(OmegaConf.to_container(compose_cfg("experiment=uci_har_ablation")))
    cfg = compose_cfg("experiment=uci_har_ablation", f"+ablation={name}")
    changed = flatten(OmegaConf.to_container(cfg))
    assert {k for k in base if base[k] != changed.get(k)}, name
    build_trainer(cfg)
    instantiate(cfg.scheduler)
    instantiate(cfg.augment)


def test_multirun_dirs_are_unique_per_job(compose_cfg):
    from omegaconf import OmegaConf

    hydra_cfg = OmegaConf.to_container(compose_cfg(return_hydra_config=True).hydra, resolve=False)
    assert "/multirun/" in hydra_cfg["sweep"]["dir"]
    assert hydra_cfg["sweep"]["subdir"] == "${hydra.job.num}"
    # Microseconds in the time: two runs started in the same second get different folders.
    assert hydra_cfg["run"]["dir"].endswith("${now:%H-%M-%S-%f}")


def test_loso_preset_tests_every_uci_har_subject_once(compose_cfg):
    """experiment=uci_har_loso is one sweep whose jobs are the 30 folds of split=loso, each on
    all the other subjects (nothing held out: nothing is selected)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose_cfg("experiment=uci_har_loso", return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.split._target_.endswith("loso_split") and cfg.split.val_fraction == 0
    (override,) = OverridesParser.create().parse_overrides(
        [f"split.fold={cfg.hydra.sweeper.params['split.fold']}"]
    )
    assert list(override.sweep_iterator()) == list(range(30))
    assert cfg.hydra.sweep.subdir == "fold0"  # fold${split.fold}: a folder per fold
    # Folds side by side, each on its share of the cores (analysis/sweep.py sets the threads).
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
