import pytest
import torch

from tailshift.models import MODELS, create_model
from tailshift.models.resnet_cifar import cifar_basic_block, ShortcutA
from tailshift.registry import UnknownNameError

CASES = [
    # name, input side, feature map (C, h, w), out_dim
    ("resnet20", 32, (64, 8, 8), 64),
    ("resnet32", 32, (64, 8, 8), 64),
    ("resnet44", 32, (64, 8, 8), 64),
    ("resnet56", 32, (64, 8, 8), 64),
    ("resnet10", 224, (512, 7, 7), 512),
    ("resnet18", 224, (512, 7, 7), 512),
    ("resnet50", 224, (2048, 7, 7), 2048),
]


@pytest.mark.parametrize("name,side,fmap_shape,out_dim", CASES)
def test_feature_map_and_embed_shapes(name, side, fmap_shape, out_dim):
    model = create_model(name, in_channels=3, image_size=side).eval()
    with torch.no_grad():
        fmap = model.feature_map(torch.randn(2, 3, side, side))
        emb = model.embed(fmap)
    assert fmap.shape == (2, *fmap_shape)
    assert emb.shape == (2, out_dim)
    assert model.out_dim == out_dim
    assert model.pooled_linear
    torch.testing.assert_close(emb, fmap.mean(dim=(2, 3)))


def test_single_channel_input():
    model = create_model("resnet32", in_channels=1, image_size=28).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 64)


def test_option_a_shortcut_subsamples_and_zero_pads():
    shortcut = ShortcutA(16, 32, stride=2)
    x = torch.randn(2, 16, 32, 32)
    out = shortcut(x)
    assert out.shape == (2, 32, 16, 16)
    assert not list(shortcut.parameters())
    # The original channels sit in the middle, subsampled; the 8 + 8 new ones are zero.
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_downsampling_block_shape():
    block = cifar_basic_block(32, 64, stride=2)
    assert block(torch.randn(2, 32, 16, 16)).shape == (2, 64, 8, 8)
    assert isinstance(block.shortcut, ShortcutA)


def test_resnet32_parameter_count():
    # 0.46M with a 10-way classifier; the backbone alone is 463,504.
    count = sum(p.numel() for p in create_model("resnet32").parameters())
    assert 0.45e6 < count < 0.47e6


def test_bad_cifar_depth():
    from tailshift.models.resnet_cifar import CifarResNet

    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=33)


def test_mode_dependent():
    assert create_model("resnet32").mode_dependent
    assert create_model("resnet10").mode_dependent
    assert not create_model("lenet2d").mode_dependent


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownNameError) as err:
        create_model("resnet33")
    message = str(err.value)
    assert "resnet33" in message
    for name in ("lenet2d", "resnet32", "resnet10", "resnet50"):
        assert name in message
    assert set(MODELS.names()) >= {n for n, *_ in CASES}


def test_each_backbone_is_registered_by_its_own_module():
    from tailshift.models import lenet, resnet, resnet_cifar

    assert MODELS.names() == ["lenet2d", "resnet10", "resnet152", "resnet152-frozen", "resnet18", "resnet20",
                              "resnet32", "resnet44", "resnet50", "resnet56", "clip:NAME", "timm:NAME",
                              "torchvision:NAME"]
    assert MODELS.get("lenet2d") is lenet.LeNet2d
    assert MODELS.get("resnet152-frozen") is resnet.resnet152_frozen
    assert MODELS.get("resnet32") is resnet_cifar.resnet32
    with pytest.raises(ValueError, match="model 'resnet32' is registered twice"):
        MODELS.register("resnet32")(resnet_cifar.resnet32)


def test_heads_follow_the_backbone_family_init():
    import torch

    torch.manual_seed(0)
    lenet = create_model("lenet2d", in_channels=1, image_size=28)
    weights = torch.cat([lenet.new_head(10).weight.flatten() for _ in range(200)])
    assert abs(weights.std().item() - 1.0) < 0.05  # Kaiming-normal, fan_in 2: std sqrt(2 / 2)
    resnet = create_model("resnet10", in_channels=3, image_size=64)
    assert resnet.new_head(10).weight.abs().max() <= 1 / 512**0.5  # PyTorch default: U(+-1/sqrt(fan_in))


def torchvision_names(state: dict) -> dict:
    """Our ResNet keys in torchvision's layout (conv1, bn1, downsample, and a classifier fc)."""
    out = {}
    for key, value in state.items():
        key = key.replace("stem.0.", "conv1.", 1) if key.startswith("stem.0.") else key
        key = key.replace("stem.1.", "bn1.", 1) if key.startswith("stem.1.") else key
        out[key.replace(".shortcut.", ".downsample.")] = value
    return {**out, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}


def test_pretrained_weights_load_from_torchvision_layout_and_checkpoints(tmp_path):
    torch.manual_seed(1)
    source = create_model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_names(source.state_dict()), path)
    loaded = create_model("resnet18", pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    run = tmp_path / "checkpoint.pt"  # a tailshift run's checkpoint: its backbone
    backbone = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    torch.save({"method": backbone | {"head.weight": torch.zeros(3)}}, run)
    assert torch.equal(create_model("resnet18", pretrained=str(run)).stem[0].weight, source.stem[0].weight)


def test_pretrained_weights_that_do_not_fit_are_one_line(tmp_path):
    path = tmp_path / "r10.pth"
    torch.save(torchvision_names(create_model("resnet10").state_dict()), path)
    with pytest.raises(ValueError, match=r"do not fit ResNet: missing layer1\.1\..* \(48\)") as err:
        create_model("resnet18", pretrained=str(path))  # ResNet-10 weights for a ResNet-18
    assert "\n" not in str(err.value)
    torch.save(torchvision_names(create_model("resnet10", in_channels=1).state_dict()), path)
    with pytest.raises(ValueError, match=r"wrong shape stem\.0\.weight \(1\)"):
        create_model("resnet10", pretrained=str(path))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read pretrained weights"):
        create_model("resnet10", pretrained=str(tmp_path / "junk.pth"))
    with pytest.raises(ValueError, match="is not a file"):
        create_model("resnet10", pretrained=str(tmp_path / "none.pth"))


def test_resnet152_and_its_frozen_variant_shapes():
    from tailshift.models.resnet import resnet152, resnet152_frozen

    with torch.device("meta"):
        full, frozen = resnet152(), resnet152_frozen()
    assert [len(s) for s in (full.layer1, full.layer2, full.layer3, full.layer4)] == [3, 8, 36, 3]
    assert sum(p.numel() for p in full.parameters()) == 58_143_808  # torchvision's ResNet-152 less its fc
    trainable = sum(p.numel() for p in frozen.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in frozen.extra.parameters()) and frozen.out_dim == 2048
    with pytest.raises(ValueError, match="model.pretrained=PATH"):
        create_model("resnet152-frozen")


def test_frozen_body_stays_frozen_and_in_eval_mode(tmp_path):
    from tailshift.models.resnet import FrozenBodyExtraBlock, resnet10

    model = FrozenBodyExtraBlock(resnet10())
    path = tmp_path / "r10.pth"
    torch.save(torchvision_names(resnet10().state_dict()), path)
    from tailshift.models.pretrained import load_pretrained

    load_pretrained(model.pretrained_target(), path)
    model.requires_grad_(True)  # what a method does to "the backbone" in a training stage
    model.train()
    assert not any(p.requires_grad for p in model.body.parameters())
    assert all(p.requires_grad for p in model.extra.parameters()) and not model.body.training
    before = model.body.stem[1].running_mean.clone()
    fmap = model.feature_map(torch.rand(2, 3, 64, 64))
    assert fmap.shape == (2, 512, 2, 2) and fmap.requires_grad
    assert torch.equal(model.body.stem[1].running_mean, before) and model.extra.bn1.running_mean.abs().sum() > 0
