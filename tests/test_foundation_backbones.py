"""timm / open_clip backbones and lightweight fine-tuning (``model.tune``) on tiny randomly initialised
vision transformers: nothing is downloaded."""
import copy
import importlib.abc
import importlib.util
import re
import sys

import numpy as np
import pytest
import torch
from conftest import fit_until_interrupted, import_real, tiny_prepared

from tailshift import cli
from tailshift.cam import grad_cam
from tailshift.config import build_config, load_config
from tailshift.data.pipeline import normalise
from tailshift.engine import Trainer, train
from tailshift.models import TUNE_MODES, create_model
from tailshift.models.tuning import LoRAQKV, merge_lora
from tailshift.resolve import resolve_run
from tailshift.saved_run import export_run, load_run
from tailshift.validation import ConfigError

VIT, CLIP = "timm:vit_tiny_patch16_224", "clip:ViT-S-32"
LIBRARY = {VIT: "timm", CLIP: "open_clip"}
#: which backbone parameters each mode trains (by name), besides the heads
TRAINS = {
    "full": lambda name: True,
    "linear": lambda name: False,
    "bitfit": lambda name: name.endswith("bias") and "lora" not in name,
    "vpt_shallow": lambda name: name.endswith(".0.prompts.prompt"),
    "vpt_deep": lambda name: name.endswith(".prompts.prompt"),
    "lora": lambda name: ".lora_" in name,
    "adapter": lambda name: ".mlp.1.f." in name,
    "adaptformer": lambda name: ".parallel." in name,
    "ssf": lambda name: ".ssf." in name,
}


@pytest.fixture
def timm():
    return import_real("timm")


def _vit(tune="full", image_size=64, **kwargs):
    return create_model(VIT, tune=tune, num_classes=4, image_size=image_size, in_channels=3, **kwargs)


def test_every_mode_is_listed():
    assert set(TRAINS) == set(TUNE_MODES)


#: the class-token readout with the modes that change the token sequence (prompts) or the blocks' branches
TOKEN_MODES = ("vpt_shallow", "vpt_deep", "adaptformer", "lora")


@pytest.mark.parametrize("tune, readout", [(tune, "avg") for tune in TUNE_MODES] +
                         [(tune, "token") for tune in TOKEN_MODES])
@pytest.mark.parametrize("model", [VIT, CLIP])
def test_each_tune_mode_trains_exactly_its_parameters(model, tune, readout):
    import_real(LIBRARY[model])
    torch.manual_seed(0)
    backbone = create_model(model, tune=tune, num_classes=4, image_size=64, in_channels=3, readout=readout)
    backbone.requires_grad_(True)  # a method unfreezing "the backbone" (decoupled stage 1) reaches only the mode's
    run = resolve_run(build_config({}, ["method.name=ce", f"model.readout={readout}"]))
    method = run.method_class(backbone, 4, np.array([8, 4, 2, 1]), 1, run.params)
    trainable = {id(p) for p in method.trainable_parameters(None)}
    named = dict(method.backbone.named_parameters())
    assert {n for n, p in named.items() if id(p) in trainable} == {n for n in named if TRAINS[tune](n)}
    assert all(id(p) in trainable for p in method.head.parameters())
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    optimizer = torch.optim.SGD(method.trainable_parameters(None), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(2):  # two steps: zero-initialised up-projections hold the rest of an adapter still in the first
        x, y = torch.rand(6, 3, 64, 64), torch.tensor([0, 1, 2, 3, 0, 1])
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(method.head(method.backbone(x)), y).backward()
        optimizer.step()
    changed = {name for name, p in method.named_parameters() if not torch.equal(p, before[name])}
    assert changed <= {name for name, p in method.named_parameters() if id(p) in trainable}  # the others bit-identical
    assert {"head.weight", "head.bias"} <= changed and (tune == "linear") == (not changed - {"head.weight", "head.bias"})


def test_feature_map_is_the_patch_grid_and_the_embedding_timms_own_pooling(timm):
    torch.manual_seed(0)
    backbone = _vit().eval()
    x = torch.rand(3, 3, 64, 64)
    fmap = backbone.feature_map(x)
    assert fmap.shape == (3, 192, 4, 4) and backbone.pooled_linear
    net = backbone.net
    torch.testing.assert_close(backbone.embed(fmap), net.forward_head(net.forward_features(x), pre_logits=True))
    head = torch.nn.Linear(192, 4)
    cam = grad_cam(fmap, lambda a: head(backbone.embed(a)), torch.tensor([0, 1, 2])).cam
    assert cam.shape == (3, 4, 4) and (cam >= 0).all() and cam.sum() > 0


def test_prompts_and_adapters_leave_the_feature_map_on_the_patch_grid(timm):
    for tune in ("vpt_deep", "adaptformer"):
        assert _vit(tune).feature_map(torch.rand(2, 3, 64, 64)).shape == (2, 192, 4, 4)


def test_lift_bottleneck_width_and_explicit_width():
    import_real("timm")
    adaptformer = _vit("adaptformer").inner.net.blocks[0].parallel
    assert adaptformer.down_proj.out_features == 1  # 2 ** max(0, int(log2(4 / 24)))
    assert _vit("adaptformer", tune_dim=8).inner.net.blocks[0].parallel.down_proj.out_features == 8


def test_merged_lora_computes_the_same_logits(timm):
    torch.manual_seed(0)
    backbone = _vit("lora").eval()
    for m in backbone.modules():
        if isinstance(m, LoRAQKV):
            torch.nn.init.normal_(m.lora_b, std=0.5)  # a trained update, not the zero start
    x = torch.rand(2, 3, 64, 64)
    expected = backbone(x)
    merged = merge_lora(copy.deepcopy(backbone))
    assert not any(isinstance(m, LoRAQKV) for m in merged.modules())
    torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)


def test_unknown_tune_mode_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"^model.tune must be one of full, linear, bitfit, vpt_shallow, vpt_deep, "
                                          r"lora, adapter, adaptformer, ssf; got 'prefix'$"):
        build_config({}, ["model.tune=prefix"])


def test_a_mode_a_backbone_cannot_take_is_one_line():
    with pytest.raises(ValueError, match=r"^model.tune=vpt_deep needs vision transformer blocks of timm's or open_clip's "
                                          r"form; model.name=resnet32 has none \(for it: full, linear or bitfit\)$"):
        create_model("resnet32", tune="vpt_deep", num_classes=10)
    with pytest.raises(ValueError, match=r"^model.pretrained=hub needs a model whose library downloads weights"):
        create_model("resnet32", pretrained="hub")


def test_linear_and_bitfit_apply_to_any_backbone():
    frozen = create_model("resnet32", tune="linear", num_classes=10)
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not any(m.training for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d))
    biases = create_model("resnet32", tune="bitfit", num_classes=10)
    assert {n for n, p in biases.named_parameters() if p.requires_grad} == \
        {n for n, _ in biases.named_parameters() if n.endswith("bias")}


def test_clip_image_tower_is_open_clips_and_its_text_tower_stays_reachable():
    import_real("open_clip")
    torch.manual_seed(0)
    plain = create_model(CLIP, image_size=64).eval()
    torch.manual_seed(0)
    split = create_model(CLIP, tune="lora", num_classes=4, image_size=64).eval()  # q, k, v as a Linear; LoRA at zero
    x = torch.rand(2, 3, 64, 64)
    fmap = plain.feature_map(x)
    assert fmap.shape == (2, 384, 2, 2) and plain.embed(fmap).shape == (2, 384)
    plain.visual.pool_type = "avg"  # open_clip's own forward, pooling as the backbone does
    torch.testing.assert_close(plain(x), plain.visual(x))
    torch.testing.assert_close(split.feature_map(x), fmap, rtol=1e-5, atol=1e-5)
    assert all(k.startswith("visual.") for k in plain.state_dict())  # the text tower is not checkpointed
    assert plain.text_features(["a photo of a cat.", "a photo of a dog."]).shape == (2, 384)


def _tiny_clip(readout):
    """A tiny random open_clip CLIP whose image width (64) differs from its joint space (24), as ViT-B/16's (768, 512)."""
    open_clip = import_real("open_clip")
    from tailshift.models.clip_backbone import ClipBackbone

    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=24, vision_cfg={"layers": 2, "width": 64, "head_width": 32, "patch_size": 16,
                                                     "image_size": 32},
                           text_cfg={"layers": 1, "width": 32, "heads": 2})
    return ClipBackbone(model.eval(), "ViT-S-32", readout=readout)


def test_clip_token_readout_is_the_class_token_after_ln_post_before_proj():
    """LIFT's readout (shijxcs/LIFT models/peft_vit.py lines 457-459): open_clip's own image embedding is it times proj."""
    backbone = _tiny_clip("token")
    model = backbone.pretrained_target()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        embedding = backbone(x)
        assert embedding.shape == (3, 64) and backbone.out_dim == 64 and not backbone.embeds_feature_map
        torch.testing.assert_close(embedding @ backbone.visual.proj, model.encode_image(x), rtol=1e-5, atol=1e-5)
        fmap = backbone.feature_map(x)
    assert fmap.shape == (3, 64, 2, 2)  # the patch grid is still there, for reading, not for the embedding
    with pytest.raises(ValueError, match=r"^model.readout=token: the embedding is the class token, not a function of "
                                         r"the feature map; read it with backbone\(x\) \(what reads the patch grid "
                                         r"needs model.readout=avg\)$"):
        backbone.embed(fmap)
    assert _tiny_clip("avg").out_dim == 24  # the mean of the patches times proj, in the joint space


def test_timm_token_readout_is_timms_own_class_token_readout(timm):
    torch.manual_seed(0)
    backbone = _vit(readout="token").eval()
    reference = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0).eval()  # global_pool='token'
    reference.load_state_dict(backbone.net.state_dict())
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        torch.testing.assert_close(backbone(x), expected)
        assert not torch.allclose(backbone.feature_map(x).mean(dim=(2, 3)), expected, atol=1e-3)  # not the mean
    assert backbone.out_dim == 192 and not backbone.pooled_linear and not backbone.embeds_feature_map
    with pytest.raises(ValueError, match=r"^model.readout=token: the embedding is the class token"):
        backbone.embed(backbone.feature_map(x))


@pytest.mark.parametrize("model", [VIT, CLIP])
def test_the_class_token_reads_every_blocks_prompts(model):
    import_real(LIBRARY[model])
    torch.manual_seed(0)
    backbone = create_model(model, tune="vpt_deep", num_classes=4, image_size=64, readout="token")
    backbone(torch.rand(2, 3, 64, 64)).square().sum().backward()
    prompts = [p for name, p in backbone.named_parameters() if name.endswith(".prompts.prompt")]
    assert len(prompts) == (12 if model == VIT else len(backbone.inner.tunable_blocks()))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)


def test_the_token_readout_needs_a_vision_transformer_that_reads_out_its_class_token(timm):
    for name, has in (("resnet32", "has none"), ("timm:convnext_atto", "has none"),
                      ("timm:vit_wee_patch16_reg1_gap_256", "has none"),  # register tokens, no class token
                      ("timm:eva02_tiny_patch14_224", r"pools its tokens \('avg'\)")):  # a class token it does not read
        with pytest.raises(ValueError, match=rf"^model.readout=token needs a vision transformer that reads out its "
                                             rf"class token.*; model.name={name} {has} \(use model.readout=avg\)$"):
            create_model(name, readout="token")
    with pytest.raises(ConfigError, match=r"^model.readout must be one of avg, token; got 'cls'$"):
        build_config({}, ["model.readout=cls"])


@pytest.mark.parametrize("method, reason", [("csa", "Grad-CAM"), ("dual", "its heads embed the branches' feature maps"),
                                            ("cam-bs", "CAM"), ("bbn", "its second last block's map")])
def test_a_method_that_reads_the_patch_grid_is_refused_under_the_token_readout(method, reason):
    with pytest.raises(ConfigError, match=rf"^model.readout=token: method {method} reads the patch grid \({reason}"
                                          rf".*\); use model.readout=avg$"):
        resolve_run(build_config({}, [f"method.name={method}", "model.readout=token"]))
    resolve_run(build_config({}, [f"method.name={method}", "model.readout=avg"]))


def test_a_method_built_on_a_token_backbone_by_hand_is_refused_and_the_others_read_its_forward(timm):
    from tailshift.methods import METHODS

    backbone = _vit("adaptformer", image_size=32, readout="token")
    with pytest.raises(ValueError, match=r"^model.readout=token: ContextShiftAugmentation reads the patch grid "
                                         r"\(Grad-CAM\); use model.readout=avg$"):
        METHODS.get("csa")(backbone, 4, np.array([8, 4, 2, 1]), 1)
    x = torch.rand(2, 3, 32, 32)
    for name in ("la", "crt", "lws", "tau-norm"):  # their heads read backbone(x), the class token
        method = METHODS.get(name)(backbone, 4, np.array([8, 4, 2, 1]), 1).eval()
        with torch.no_grad():
            torch.testing.assert_close(method.features(x), backbone(x))
            assert all(logits.shape == (2, 4) for logits in method.predict(x).values())


@pytest.mark.parametrize("readout, compiled", [("avg", "feature_map"), ("token", "forward")])
def test_train_compile_compiles_what_the_embedding_runs_through(timm, monkeypatch, readout, compiled):
    """train.compile replaces feature_map, which forward runs through under avg; under token forward does not."""
    from tailshift.speed import Speed

    backbone = _vit("adaptformer", image_size=32, readout=readout).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = backbone(x)
    seen = []
    monkeypatch.setattr(torch, "compile", lambda f, **kwargs: seen.append(f.__name__) or f)
    Speed(compile="default").compile_backbone(backbone)
    assert seen == [compiled] and compiled in vars(backbone)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), expected)


def _write_npz(path):
    data = tiny_prepared(channels=3, size=32, counts=(9, 7, 5, 4, 3, 3, 2, 2, 2, 2))
    np.savez(path, x_train=data.train.images, y_train=data.train.labels, x_test=data.test.images[::4],
             y_test=data.test.labels[::4])


def _args(tmp_path, tune, readout="avg"):
    return [f"output={tmp_path / tune}", "device=cpu", "data.dataset=npz",
            f"data.root={tmp_path / 'data.npz'}", "data.longtail.profile=none", "data.groups=count", "train.epochs=2",
            "train.batch_size=8",
            "train.optim.lr=0.01", f"model.name={VIT}", "model.pretrained=none", f"model.tune={tune}",
            f"model.readout={readout}"]


# lora: its export is the merged weights; vpt_deep with the class token: the prompts and the token readout exported
@pytest.mark.parametrize("tune, readout", [("adaptformer", "avg"), ("lora", "avg"), ("vpt_deep", "token")])
def test_train_on_the_cpu_resumes_exactly_and_exports_the_runs_logits(timm, tmp_path, capsys, tune, readout):
    _write_npz(tmp_path / "data.npz")
    (tmp_path / "run.yaml").write_text("method: {name: ce}\n")
    assert cli.main(["train", str(tmp_path / "run.yaml"), *_args(tmp_path, tune, readout)]) == 0
    out = capsys.readouterr().out
    count = int(re.search(r"train: ([\d,]+) trainable parameters", out).group(1).replace(",", ""))
    full = load_run(tmp_path / tune)
    assert full.method.backbone.readout == readout
    assert full.metrics["trainable_parameters"] == {"train": count}
    assert count == sum(p.numel() for p in full.method.parameters() if p.requires_grad)

    killed = [*_args(tmp_path, tune, readout)[1:], f"output={tmp_path / 'killed'}", "progress=false"]
    cfg = load_config(tmp_path / "run.yaml", killed)
    fit_until_interrupted(Trainer(cfg), lambda stage, epoch, started: started == 2)
    resumed = train(cfg)
    assert resumed["heads"] == full.metrics["heads"]
    killed_state = load_run(tmp_path / "killed").method.state_dict()
    assert all(torch.equal(a, killed_state[name]) for name, a in full.method.state_dict().items())

    batch = torch.from_numpy(full.data.test.images)
    with torch.no_grad():
        expected = full.method.predict(normalise(batch, *full.mean_std()))[full.method.default_head]
    got = torch.jit.load(str(export_run(full, "torchscript", tmp_path / "model.pt")))(batch)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_local_weights_load_and_the_classifier_is_left_out(timm, tmp_path):
    net = timm.create_model("vit_tiny_patch16_224", img_size=64)  # with its 1000-class head, as timm saves it
    torch.save(net.state_dict(), tmp_path / "vit.pth")
    backbone = create_model(VIT, pretrained=str(tmp_path / "vit.pth"), image_size=64)
    torch.testing.assert_close(backbone.net.blocks[5].mlp.fc2.weight, net.blocks[5].mlp.fc2.weight)


def test_a_hub_download_that_fails_says_what_to_fetch_and_where(timm, monkeypatch):
    created = timm.create_model

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to the hub to load this model\nCheck your connection")
        return created(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    assert create_model(VIT, image_size=32).out_dim == 192  # nothing is fetched unless asked
    with pytest.raises(ValueError, match=r"^model.pretrained=hub could not fetch timm's vit_tiny_patch16_224 weights "
                                          r"\(We couldn't connect to the hub to load this model\); run timm.create_model"
                                          r"\('vit_tiny_patch16_224', pretrained=True\) where the Hugging Face hub is "
                                          r"reachable and copy its cache \(~/.cache/huggingface\) here, or save the "
                                          r"model's state_dict\(\) to a file and pass model.pretrained=PATH$"):
        create_model(VIT, pretrained="hub", image_size=32)


def test_a_library_that_does_not_import_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ValueError, match=r"^model.name=timm:... needs timm: pip install tailshift\[timm\]$"):
        resolve_run(build_config({}, [f"model.name={VIT}"]))


class _BrokenTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """timm whose import fails as it does when PyPI's CUDA torchvision sits beside a CPU torch."""

    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "timm" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise RuntimeError("operator torchvision::nms does not exist")


def test_a_torchvision_built_for_another_torch_says_which_build_to_install(monkeypatch):
    monkeypatch.delitem(sys.modules, "timm", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTorchvision(), *sys.meta_path])
    with pytest.raises(ValueError, match=r"^timm does not import beside torch .* \(operator torchvision::nms does not "
                                          r"exist\); install the torchvision build made for this torch \(for a CPU "
                                          r"torch: pip install torchvision --index-url "
                                          r"https://download.pytorch.org/whl/cpu\)$"):
        resolve_run(build_config({}, [f"model.name={VIT}"]))


def test_pretrained_none_is_null():
    spelled = resolve_run(build_config({}, ["model.pretrained=none"]))
    assert spelled.config.model.pretrained is None
    assert spelled.fingerprint() == resolve_run(build_config({}, [])).fingerprint()


def test_a_clip_hub_download_that_fails_says_what_to_fetch_and_where(monkeypatch):
    open_clip = import_real("open_clip")

    def offline(arch, pretrained=None, **kwargs):
        raise RuntimeError(f"Failed to download file (open_clip_pytorch_model.bin) for {arch}/{pretrained}.")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(ValueError, match=r"^model.pretrained=hub could not fetch open_clip's ViT-B-16 weights "
                                          r"'openai' \(Failed to download file .*\); run open_clip.create_model\("
                                          r"'ViT-B-16', pretrained='openai'\) where it is reachable and copy its cache"):
        create_model("clip:ViT-B-16", pretrained="hub", image_size=32)
    with pytest.raises(ValueError, match=r"^model.pretrained=hub:nope: open_clip has no weights 'nope' for ViT-B-16; "
                                          r"allowed: hub:openai, "):
        create_model("clip:ViT-B-16", pretrained="hub:nope", image_size=32)
    with pytest.raises(ValueError, match=r"^model.pretrained=hub: open_clip has no weights for ViT-S-32$"):
        create_model(CLIP, pretrained="hub", image_size=32)


def test_csa_trains_on_a_lightweight_tuned_vit_through_its_patch_grid(timm, tmp_path):
    """CSA's Grad-CAM reads the ViT's feature map (the patch grid) like a CNN's: contexts are fused."""
    cfg = build_config({"output": str(tmp_path / "run"), "device": "cpu", "progress": False},
                       [f"model.name={VIT}", "model.tune=adaptformer", "train.epochs=2", "train.batch_size=16",
                        "train.optim.lr=0.01", "method.name=csa", "method.params={warmup_epochs: 1, delta: 0.0}"])
    metrics = train(cfg, tiny_prepared(channels=3, size=32))
    warmup, fused = metrics["curve"]
    assert warmup["fused"] == 0 and fused["fused"] > 0 and fused["loss_balanced"] > 0
    adapters = 12 * (2 * 192 + 192 * 1 + 1 + 1 * 192 + 192 + 1)  # per block: LayerNorm, down, up, scale
    heads = 2 * (192 * 10 + 10)  # CSA's uniform and balanced heads
    assert metrics["trainable_parameters"] == {"train": adapters + heads}


@pytest.mark.parametrize("arch", ["eva02_tiny_patch14_224", "convnext_atto"])
def test_other_timm_families_split_as_timm_runs_them(timm, arch):
    torch.manual_seed(0)
    backbone = create_model(f"timm:{arch}", image_size=56).eval()
    x = torch.rand(2, 3, 56, 56)
    fmap = backbone.feature_map(x)
    assert fmap.dim() == 4 and fmap.shape[1] == backbone.out_dim
    net = backbone.net
    torch.testing.assert_close(backbone.embed(fmap), net.forward_head(net.forward_features(x), pre_logits=True))


def test_a_vit_pretrained_on_its_patch_mean_keeps_timms_parameters_so_its_weights_load(timm):
    """EVA-02 pools the mean of its patches through fc_norm (no norm on the tokens): built as timm builds it."""
    arch = "eva02_tiny_patch14_224"
    backbone = create_model(f"timm:{arch}", image_size=56)
    assert set(backbone.net.state_dict()) == set(timm.create_model(arch, num_classes=0, img_size=56).state_dict())


def test_a_channels_last_timm_model_is_refused_in_one_line(timm):
    with pytest.raises(ValueError, match=r"^model.name=timm:swin_tiny_patch4_window7_224 gives NHWC feature maps "
                                          r"\(channels last\); tailshift reads timm models whose features are NCHW"):
        create_model("timm:swin_tiny_patch4_window7_224")
