"""Fine-tuning: frozen parts do not change, unfreezing after N epochs, the backbone's own
learning rate, exact resume across the unfreeze, and a fine-tuning run through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import SMALL, in_process_cli

from har_bench.models import ResNet
from har_bench.training.checkpoint import LAST_CHECKPOINT, load_resume_state
from har_bench.training.engine import Trainer
from har_bench.training.finetune import FineTune
from har_bench.training.image_transforms import ImageAugment, ImageInput


def small_resnet() -> ResNet:
    torch.manual_seed(0)
    return ResNet(3, 4, "basic", [1, 1], layout="2d_image", stem_width=8)


def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 256, (48, 3, 12, 12), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 4, (48,), generator=g)
    return X[:32], y[:32], X[32:], y[32:]


PREPARE = ImageInput((16, 16), (0.5,) * 3, (0.25,) * 3)


def fit(
    finetune: FineTune | None, ckpt=None, resume=None, on_epoch_end=None, epochs=3, augment=False
):
    torch.manual_seed(0)
    model = small_resnet()
    trainer = Trainer(progress=False, device="cpu", max_epochs=epochs, batch_size=8)
    bound = finetune.bind([model.head_name], model.stage_names[-1:]) if finetune else None
    result = trainer.fit(
        model,
        *data(),
        optimizer_factory=lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        scheduler_factory=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs),
        checkpoint_dir=ckpt,
        seed=1,
        on_epoch_end=on_epoch_end,
        resume=resume,
        prepare=PREPARE,
        finetune=bound,
        augment=ImageAugment(scale=(0.5, 1.0)).bind(PREPARE, seed=1) if augment else None,
    )
    return result, model


def changed(before: dict, after: dict, prefix: str) -> set[bool]:
    return {
        not torch.equal(before[k], after[k])
        for k in before
        if k.startswith(prefix) and before[k].is_floating_point()
    }


def test_frozen_parameters_and_their_batchnorm_statistics_do_not_change():
    before = small_resnet().state_dict()
    _, model = fit(FineTune(freeze="backbone"), epochs=1)
    after = model.state_dict()
    for prefix in ("conv1.", "bn1.", "layer1.", "layer2."):  # weights, BN weights and stats
        assert changed(before, after, prefix) == {False}, prefix
    assert changed(before, after, "fc.") == {True}
    _, model = fit(FineTune(freeze="all-but-last-stage"), epochs=1)
    after = model.state_dict()
    assert changed(before, after, "layer1.") == {False}
    assert True in changed(before, after, "layer2.") and changed(before, after, "fc.") == {True}


def test_unfreeze_after_and_the_backbone_learning_rate(tmp_path):
    before = small_resnet().state_dict()
    rows = []
    result, model = fit(
        FineTune(freeze="backbone", unfreeze_after=1, backbone_lr=0.1),
        ckpt=tmp_path,
        on_epoch_end=rows.append,
        epochs=2,
    )
    assert True in changed(before, model.state_dict(), "layer1.")  # trained in epoch 2
    groups = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)["optimizer"]["param_groups"]
    head, backbone = groups
    assert head["name"] == "head" and backbone["name"] == "backbone"
    assert backbone["initial_lr"] == pytest.approx(0.1 * head["initial_lr"])
    assert backbone["lr"] == pytest.approx(0.1 * head["lr"])
    assert rows[0]["lr"] == pytest.approx(1e-2)  # history's lr is the head's (the base rate)
    record = FineTune("backbone", 1, 0.1).bind(["fc"], ["layer2"]).describe(model, 2)
    assert record["unfrozen_at_epoch"] == 2 and record["trainable_params_epoch_1"] == 4 * 16 + 4


class Crash(Exception):
    pass


def test_resume_across_the_unfreeze_is_exact(tmp_path):
    """With augment=image too: its generator is in last.pt like the sensor augmentation's."""
    settings = {"freeze": "all-but-last-stage", "unfreeze_after": 2, "backbone_lr": 0.3}
    reference, ref_model = fit(FineTune(**settings), tmp_path / "ref", epochs=4, augment=True)

    def crash(row):
        if row["epoch"] == 2:
            raise Crash  # killed right after epoch 2's last.pt, before the unfreeze

    with pytest.raises(Crash):
        fit(FineTune(**settings), tmp_path / "run", on_epoch_end=crash, epochs=4, augment=True)
    state = load_resume_state(tmp_path / "run")
    assert state["finetune"] == settings and state["augment"] is not None
    resumed, model = fit(FineTune(**settings), tmp_path / "run", state, epochs=4, augment=True)
    strip = ("train_seconds", "epoch_seconds", "samples_per_second")
    clean = [{k: v for k, v in r.items() if k not in strip} for r in reference.history]
    assert [{k: v for k, v in r.items() if k not in strip} for r in resumed.history] == clean
    for key, value in ref_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    # Other settings, or none, are refused.
    with pytest.raises(ValueError, match="model.unfreeze_after=2, now 3"):
        fit(
            FineTune(**{**settings, "unfreeze_after": 3}),
            tmp_path / "run",
            state,
            epochs=4,
            augment=True,
        )
    with pytest.raises(ValueError, match="saved with finetune"):
        fit(None, tmp_path / "run", state, epochs=4, augment=True)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="model.freeze='all' is invalid"):
        FineTune(freeze="all")
    with pytest.raises(ValueError, match="model.unfreeze_after=2 needs a frozen part"):
        FineTune(unfreeze_after=2)
    with pytest.raises(ValueError, match="model.backbone_lr=-1"):
        FineTune(backbone_lr=-1)
    assert not FineTune().enabled and FineTune(backbone_lr=0.5).enabled


def write_folder(root, classes, per_class=12, seed=0):
    from PIL import Image

    rng = torch.Generator().manual_seed(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 60, (10, 10, 3), generator=rng, dtype=torch.uint8)
            pixels[..., k % 3] += 150  # each class its own colour, so there is something to learn
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")


@pytest.mark.slow
def test_fine_tuning_from_a_har_bench_run_through_the_cli(tmp_path, monkeypatch, capsys):
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    write_folder(tmp_path / "a", ["red", "green", "blue"])
    write_folder(tmp_path / "b", ["r", "g", "b"], seed=1)
    common = [
        *[o for o in SMALL if not o.startswith(("dataset=", "model=resnet18"))],
        "model=resnet18",
        "model.layout=2d_image",
        "dataset=image_folder",
        "dataset.size=16",
        "scheduler=cosine",
        "augment=image",
        "trainer.batch_size=8",
    ]
    code, err = main(*common, f"dataset.root={tmp_path / 'a'}", "hydra.run.dir=pre")
    assert code == 0, err
    code, err = main(
        *common,
        f"dataset.root={tmp_path / 'b'}",
        f"model.weights={tmp_path / 'pre'}",
        "model.freeze=backbone",
        "model.backbone_lr=0.1",
        "hydra.run.dir=fine",
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "fine" / "metrics.json").read_text())
    summary = json.loads((tmp_path / "fine" / "model_summary.json").read_text())
    record = metrics["finetune"]
    assert record["freeze"] == "backbone" and record["backbone_lr"] == 0.1
    assert record["weights"]["file"] == str(tmp_path / "pre" / "checkpoints" / "best.pt")
    assert record["weights"]["head"].startswith("re-created for 3 classes (checkpoint: classes")
    pre_input = json.loads((tmp_path / "pre" / "model_summary.json").read_text())["input"]
    assert summary["input"]["normalisation"] == f"pretrained run {tmp_path / 'pre'}"
    assert summary["input"]["mean"] == pre_input["mean"] and pre_input["normalisation"] == "train"
    assert summary["classes"] == ["b", "g", "r"] and summary["weights"] == record["weights"]
    # The sensor augmentation on images is one line naming the fix.
    code, err = main(*common, f"dataset.root={tmp_path / 'b'}", "augment=sensor")
    assert code == 2 and "use augment=image or augment=none" in err
