"""model.weights: torchvision's files by name, URLs through the project's downloader (served
from 127.0.0.1), local files and har-bench runs; strict loading with the head re-created."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from cli_helpers import SMALL, assert_one_line_error, in_process_cli
from fixtures_data import Server

from har_bench.core.errors import UserError
from har_bench.experiment import pretrained
from har_bench.experiment.pretrained import (
    WeightsSource,
    load_weights,
    state_dict_in,
    torchvision_arch,
)
from har_bench.models import ResNet

RESNET18 = {"block": "basic", "layers": [2, 2, 2, 2], "layout": "2d_image"}


def torchvision_resnet18(num_classes: int = 1000) -> ResNet:
    """A network of torchvision's resnet18 shape: its state dict has torchvision's keys."""
    return ResNet(3, num_classes, **RESNET18)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A plain state dict in torchvision's layout (1000 classes), as torchvision saves it."""
    folder = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    state = torchvision_resnet18().state_dict()
    path = folder / "resnet18.pth"
    torch.save(state, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return path, sha, state


@pytest.fixture
def server(resnet18_file):
    s = Server(resnet18_file[0].parent)
    yield s
    s.close()


def assert_backbone_loaded(model: torch.nn.Module, state: dict) -> None:
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, state[key]), key


def test_url_checkpoint_in_torchvision_layout_loads_with_the_head_replaced(
    resnet18_file, server, tmp_path
):
    path, sha, state = resnet18_file
    source = WeightsSource.from_config(server.url(path.name), sha, tmp_path / "cache")
    torch.manual_seed(1)
    model = torchvision_resnet18(num_classes=10)
    fresh_head = model.fc.weight.detach().clone()
    info = load_weights(model, source, progress=False)
    assert_backbone_loaded(model, state)
    assert model.fc.weight.shape == (10, 512) and torch.equal(model.fc.weight, fresh_head)
    assert info["head"] == "re-created for 10 classes (checkpoint: 1000 outputs)"
    assert info["sha256"] == sha and info["tensors_loaded"] == len(state) - 2
    # Cached: a second model loads from disk, nothing is fetched again.
    load_weights(torchvision_resnet18(num_classes=10), source, progress=False)
    assert server.requests == [f"/{path.name}"]
    # Same classes: the head is loaded too.
    same = torchvision_resnet18()
    assert load_weights(same, source, progress=False)["head"] == "loaded"
    assert torch.equal(same.fc.weight, state["fc.weight"])


def test_a_wrong_sha256_is_refused_and_nothing_is_cached(resnet18_file, server, tmp_path):
    path, _, _ = resnet18_file
    source = WeightsSource.from_config(server.url(path.name), "0" * 64, tmp_path / "cache")
    with pytest.raises(UserError, match="checksum mismatch") as info:
        load_weights(torchvision_resnet18(), source, progress=False)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "cache").rglob("*.pth"))


def test_imagenet_names_torchvisions_file_for_the_architecture(
    resnet18_file, server, tmp_path, monkeypatch
):
    path, sha, state = resnet18_file
    published = f"resnet18-{sha[:8]}.pth"  # torchvision's naming: the sha256 prefix
    (path.parent / published).write_bytes(path.read_bytes())
    monkeypatch.setattr(pretrained, "TORCHVISION_URL", server.base + "/")
    monkeypatch.setitem(pretrained.TORCHVISION_FILES["imagenet"], "resnet18", published)
    model = torchvision_resnet18(num_classes=3)
    assert torchvision_arch(model) == "resnet18"
    info = load_weights(model, WeightsSource.from_config("imagenet", None, tmp_path), False)
    assert info["torchvision"] == "resnet18" and info["url"].endswith(published)
    assert (tmp_path / "torchvision" / published).is_file()
    assert_backbone_loaded(model, state)
    # A file whose hash does not start with the published prefix is discarded.
    wrong = "resnet18-00000000.pth"
    (path.parent / wrong).write_bytes(path.read_bytes())
    monkeypatch.setitem(pretrained.TORCHVISION_FILES["imagenet"], "resnet18", wrong)
    with pytest.raises(UserError, match="not the 00000000... torchvision publishes"):
        load_weights(model, WeightsSource.from_config("imagenet", None, tmp_path), False)
    assert not (tmp_path / "torchvision" / wrong).exists()


def test_imagenet_for_a_model_torchvision_does_not_publish():
    sensor = ResNet(9, 6, **{**RESNET18, "layout": "1d"})
    source = WeightsSource.from_config("imagenet", None, "/nonexistent")
    with pytest.raises(UserError, match="nearest is resnet18: in_channels=9 .* layout='1d'"):
        source.torchvision_file(sensor)
    with pytest.raises(UserError, match="publishes imagenet_v2 weights for resnet50"):
        WeightsSource.from_config("imagenet_v2:resnet18", None, "/nonexistent")
    assert torchvision_arch(ResNet(3, 1000, layers=[3, 4, 6, 3], layout="2d_image")) == "resnet50"
    assert (
        torchvision_arch(
            ResNet(3, 10, layers=[3, 4, 6, 3], cardinality=32, base_width=4, layout="2d_image")
        )
        == "resnext50_32x4d"
    )


def test_the_table_lists_the_issues_architectures():
    wanted = {
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "wide_resnet50_2",
    }
    assert (
        set(pretrained.TORCHVISION_FILES["imagenet"]) == wanted == set(pretrained.TORCHVISION_ARCHS)
    )
    for table in pretrained.TORCHVISION_FILES.values():
        for arch, name in table.items():
            assert name.startswith(arch + "-") and len(pretrained.hash_prefix(name)) == 8


def test_a_wrong_architecture_is_one_line_naming_the_first_differences(tmp_path):
    torch.save(ResNet(3, 1000, layout="2d_image").state_dict(), tmp_path / "resnet50.pth")
    source = WeightsSource.from_config(tmp_path / "resnet50.pth", None, tmp_path)
    with pytest.raises(UserError) as info:
        load_weights(torchvision_resnet18(), source, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"model.weights={tmp_path / 'resnet50.pth'} does not fit this model")
    # The first difference in the model's order, with both shapes.
    assert "first layer1.0.conv1.weight: checkpoint [64, 64, 1, 1], model [64, 64, 3, 3]" in message


# Pinned, so that these runs do not follow changes of the root defaults.
PLAIN = [*SMALL, "scheduler=cosine", "augment=none"]


def test_the_cli_reports_a_wrong_architecture_in_one_line(tmp_path, monkeypatch, capsys):
    main = in_process_cli(tmp_path, monkeypatch, capsys)
    torch.save(ResNet(3, 4, "basic", [1, 1], layout="2d_image").state_dict(), tmp_path / "w.pt")
    code, err = main(*PLAIN, f"model.weights={tmp_path / 'w.pt'}")
    assert_one_line_error(code, err, "does not fit this model", "conv1.weight: checkpoint [")
    code, err = main(*PLAIN, f"model.weights={tmp_path / 'none.pt'}")
    assert_one_line_error(code, err, "model.weights=", "no such file")
    code, err = main(*PLAIN, "model.weights_sha256=abc")
    assert_one_line_error(code, err, "model.weights_sha256 is set but model.weights is not")


def test_checkpoint_formats_and_har_bench_runs(tmp_path):
    model = ResNet(3, 4, "basic", [1, 1], layout="2d_image", stem_width=8)
    state = model.state_dict()
    wrapped = state_dict_in({f"module.{k}": v for k, v in state.items()}, "x")
    assert wrapped.keys() == state.keys()
    assert state_dict_in({"state_dict": state}, "x").keys() == state.keys()
    with pytest.raises(UserError, match="holds no state dict"):
        state_dict_in({"epoch": 3}, "x")
    # A run dir: its checkpoints/best.pt, its recorded classes and input normalisation.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": state, "epoch": 2}, run / "checkpoints" / "best.pt")
    summary = {"classes": ["a", "b", "c", "d"], "input": {"mean": [0.1] * 3, "std": [0.2] * 3}}
    (run / "model_summary.json").write_text(json.dumps(summary))
    source = WeightsSource.from_config(str(run), None, tmp_path)
    assert source.local_file() == run / "checkpoints" / "best.pt"
    assert source.normalisation() == ((0.1,) * 3, (0.2,) * 3, f"pretrained run {run}")
    same = ResNet(3, 4, "basic", [1, 1], layout="2d_image", stem_width=8)
    assert load_weights(same, source, ["a", "b", "c", "d"], False)["head"] == "loaded"
    # Four other classes: same shapes, but the head is re-created.
    other = ResNet(3, 4, "basic", [1, 1], layout="2d_image", stem_width=8)
    info = load_weights(other, source, ["w", "x", "y", "z"], False)
    assert info["head"].startswith("re-created for 4 classes (checkpoint: classes ['a'")
    assert not torch.equal(other.fc.weight, state["fc.weight"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="a folder without checkpoints/best.pt"):
        WeightsSource.from_config(str(tmp_path / "empty"), None, tmp_path)
    assert WeightsSource.from_config(None, None, tmp_path) is None
    # Other files: ImageNet's normalisation, the convention of torchvision's weights.
    torch.save(state, tmp_path / "plain.pt")
    mean, _, name = WeightsSource.from_config(tmp_path / "plain.pt", None, tmp_path).normalisation()
    assert name == "imagenet" and mean == (0.485, 0.456, 0.406)


def _torchvision_or_skip():
    try:
        import torchvision.models
    except Exception as e:  # an installed build for another torch fails in many ways
        pytest.skip(f"torchvision does not import here ({type(e).__name__}: {e})")
    return torchvision.models


def test_torchvision_resnext50_state_dict_loads_strictly():
    """Optional (pip install -e ".[vision]"): torchvision's own network, randomly initialised
    (nothing downloaded), loads into ours strictly, and its weights' URLs are our table's."""
    models = _torchvision_or_skip()
    theirs = models.resnext50_32x4d().state_dict()
    ours = ResNet(3, 1000, layers=[3, 4, 6, 3], cardinality=32, base_width=4, layout="2d_image")
    ours.load_state_dict(theirs, strict=True)
    enums = {
        "resnet18": models.ResNet18_Weights,
        "resnet34": models.ResNet34_Weights,
        "resnet50": models.ResNet50_Weights,
        "resnet101": models.ResNet101_Weights,
        "resnet152": models.ResNet152_Weights,
        "resnext50_32x4d": models.ResNeXt50_32X4D_Weights,
        "resnext101_32x8d": models.ResNeXt101_32X8D_Weights,
        "wide_resnet50_2": models.Wide_ResNet50_2_Weights,
    }
    for tag, member in (("imagenet", "IMAGENET1K_V1"), ("imagenet_v2", "IMAGENET1K_V2")):
        for arch, name in pretrained.TORCHVISION_FILES[tag].items():
            assert getattr(enums[arch], member).url == pretrained.TORCHVISION_URL + name
