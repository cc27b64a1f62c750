"""torchvision backbones: the real package when installed, and stand-ins with torchvision's own module
layouts (ResNet, MobileNetV3, DenseNet) so the split is checked everywhere."""
import copy
import importlib.abc
import importlib.util
import re
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tailshift.config import build_config
from tailshift.engine import train
from tailshift.models import create_model
from tailshift.models.torchvision_backbone import TorchvisionBackbone
from tailshift.resolve import resolve_run


def _stage(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class StandInResNet(nn.Module):  # torchvision.models.ResNet's children and forward
    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8)
        self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(2)
        self.layer1, self.layer2, self.layer3, self.layer4 = _stage(8, 8), _stage(8, 16, 2), _stage(16, 16), _stage(16, 16)
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class StandInMobileNetV3(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(_stage(3, 8, 2), _stage(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(16, 24), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(24, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class StandInDenseNet(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8))
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.features(x)), 1), 1))


STAND_INS = {"resnet18": StandInResNet, "mobilenet_v3_small": StandInMobileNetV3, "densenet121": StandInDenseNet}


@pytest.fixture
def stand_in_torchvision(monkeypatch):
    models = types.SimpleNamespace(list_models=lambda module: [*STAND_INS, "vit_b_16"],
                                   get_model=lambda name, weights: STAND_INS[name]())
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(models=models))


@pytest.mark.parametrize("arch", STAND_INS)
def test_feature_map_and_embedding_are_the_models_own_forward(arch):
    torch.manual_seed(0)
    net = STAND_INS[arch]().eval()
    x = torch.rand(4, 3, 32, 32)
    classifier = copy.deepcopy(net.fc if arch == "resnet18" else net.classifier if arch == "densenet121"
                               else net.classifier[-1])
    expected = net(x)
    backbone = TorchvisionBackbone(net, in_channels=3)
    fmap = backbone.feature_map(x)
    assert fmap.dim() == 4 and backbone(x).shape == (4, backbone.out_dim)
    torch.testing.assert_close(classifier(backbone.embed(fmap)), expected)
    assert backbone.pooled_linear == (arch == "resnet18")
    grey = TorchvisionBackbone(STAND_INS[arch](), in_channels=1)
    assert grey(torch.rand(2, 1, 32, 32)).shape == (2, grey.out_dim)


def test_unknown_or_unsupported_names_list_the_allowed_ones_in_one_line(stand_in_torchvision):
    with pytest.raises(ValueError, match=r"^unknown model 'torchvision:vit_b_16'; allowed torchvision names: "
                                          r"resnet18, mobilenet_v3_small, densenet121$"):
        resolve_run(build_config({}, ["model.name=torchvision:vit_b_16"]))


def test_missing_torchvision_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ValueError, match=r"^model.name=torchvision:... needs torchvision: "
                                          r"pip install tailshift\[torchvision\]$"):
        resolve_run(build_config({}, ["model.name=torchvision:resnet18"]))


def test_pretrained_weights_load_from_a_local_torchvision_file(stand_in_torchvision, tmp_path):
    weights = StandInResNet().state_dict()  # as torchvision saves it: fc included
    torch.save(weights, tmp_path / "resnet18.pth")
    backbone = create_model("torchvision:resnet18", pretrained=str(tmp_path / "resnet18.pth"))
    torch.testing.assert_close(backbone.net.layer2[0].weight, weights["layer2.0.weight"])
    assert not any(k.startswith("fc.") for k in backbone.state_dict())


def _image_folder(root, counts=(12, 6, 3), test_per_class=3):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", counts), ("test", [test_per_class] * len(counts))):
        for c, n in enumerate(per_class):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
                pixels[4 + 8 * c: 12 + 8 * c, 6:26] = (230, 120, 40 + 90 * c)
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")
    return root


def _train_csa_on_a_folder(tmp_path):
    cfg = build_config({"output": str(tmp_path / "run"), "device": "cpu", "progress": False},
                       ["model.name=torchvision:resnet18", "data.dataset=folder", f"data.root={_image_folder(tmp_path / 'images')}",
                        "data.longtail.profile=none", "data.groups=count", "train.epochs=2", "train.batch_size=8",
                        "train.optim.lr=0.01", "method.name=csa", "method.params={warmup_epochs: 1, delta: 0.0}"])
    metrics = train(cfg)
    assert set(metrics["heads"]) == {"balanced", "uniform", "ensemble"}
    warmup, fused = metrics["curve"]
    assert warmup["fused"] == 0 and fused["fused"] > 0 and fused["loss_balanced"] > 0


def test_csa_trains_on_a_stand_in_resnet18_on_an_image_folder(stand_in_torchvision, tmp_path):
    _train_csa_on_a_folder(tmp_path)


def test_csa_trains_on_torchvision_resnet18_on_an_image_folder(real_torchvision, tmp_path):
    assert "resnet18" in real_torchvision.models.list_models(real_torchvision.models)
    _train_csa_on_a_folder(tmp_path)


class _TorchvisionForAnotherTorch(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An installed torchvision whose import fails as PyPI's CUDA build does beside a CPU torch."""

    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "torchvision" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise RuntimeError("operator torchvision::nms does not exist")


def test_a_torchvision_built_for_another_torch_says_which_build_to_install(monkeypatch):
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_TorchvisionForAnotherTorch(), *sys.meta_path])
    with pytest.raises(ValueError, match=rf"^torchvision does not import beside torch {re.escape(torch.__version__)} "
                                          r"\(operator torchvision::nms does not exist\); install the torchvision "
                                          r"build made for this torch \(for a CPU torch: pip install torchvision "
                                          r"--index-url https://download.pytorch.org/whl/cpu\)$"):
        resolve_run(build_config({}, ["model.name=torchvision:resnet18"]))
