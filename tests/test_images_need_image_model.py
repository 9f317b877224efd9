"""An image dataset with a model that takes sensor windows: one ``error:`` line naming the
dataset, the model and what to use instead, for every model config (the sequence families have
no image layout; the ResNet family has one, chosen with model.layout=2d_image)."""

from __future__ import annotations

import pytest
from cli_helpers import assert_one_line_error, in_process_cli
from fixtures_data import write_image_folder
from helpers import config_options
from test_image_transforms import write_cifar

from har_bench.config import compose
from har_bench.models import CNN, LITE, LSTM, DeepConvLSTM, InceptionTime, PatchTST, ResNet

COMMON = ["trainer.max_epochs=1", "trainer.progress=false", "efficiency.latency_repeats=1"]


def is_resnet(model: str) -> bool:
    return compose([f"model={model}"]).model["_target_"].endswith(".ResNet")


@pytest.mark.parametrize("model", config_options("model"))
def test_cifar10_with_a_window_model_is_one_error_line(tmp_path, monkeypatch, capsys, model):
    write_cifar(tmp_path / "cifar", 2)
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main(
        *COMMON, "dataset=cifar10", f"dataset.root={tmp_path / 'cifar'}", f"model={model}"
    )
    needles = ["dataset=cifar10 holds images", "use", "model.layout=2d_image"]
    if is_resnet(model):
        needles.append("model.layout=1d is for sensor windows")
    else:
        needles += [f"model={model} takes sensor windows", "the ResNet family"]
    assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize(
    "model", ["inception_time", "lite", "patchtst", "cnn", "lstm", "deepconvlstm"]
)
def test_image_folder_with_a_sequence_model_is_one_error_line(tmp_path, monkeypatch, capsys, model):
    write_image_folder(tmp_path / "imgs")
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    code, err = main(
        *COMMON,
        "dataset=image_folder",
        f"dataset.root={tmp_path / 'imgs'}",
        "dataset.size=8",
        f"model={model}",
    )
    assert_one_line_error(
        code, err, "dataset=image_folder holds images", f"model={model} takes sensor windows"
    )


def test_only_the_image_layout_takes_images():
    from har_bench.models.resnet import takes_images

    assert takes_images(ResNet(3, 2, block="basic", layers=[1], stem_width=8, layout="2d_image"))
    assert not takes_images(ResNet(3, 2, block="basic", layers=[1], stem_width=8))
    for model in (CNN(3, 2), LSTM(3, 2), DeepConvLSTM(3, 2), InceptionTime(3, 2), LITE(3, 2)):
        assert not takes_images(model)
    assert not takes_images(PatchTST(3, 2))
