"""The LIFT recipe (lift/* configs) on tiny randomly initialised vision transformers: head initialisation from
text embeddings or class means, five-crop test-time ensembling, class names, and a whole run on the CPU."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fit_until_interrupted, import_real, tiny_prepared, write_cifar100, write_imagenet_lt
from PIL import Image

from tailshift import cli
from tailshift.config import build_config, config_path, load_config
from tailshift.data.arrays import ArrayDataset, DataError
from tailshift.data.build import prepare_data
from tailshift.data.sources import CIFAR100_CLASSES
from tailshift.data.host_loader import make_feeds
from tailshift.data.transforms import EvalViews, five_crops
from tailshift.engine import Trainer, mean_over_views
from tailshift.methods.head_init import class_prompts
from tailshift.models import create_model
from tailshift.models.tuning import tuner_bypassed
from tailshift.data.pipeline import normalise
from tailshift.saved_run import load_run, predict_images

VIT, CLIP = "timm:vit_tiny_patch16_224", "clip:ViT-S-32"


def test_text_initialisation_makes_the_cosine_heads_rows_the_normalised_text_embeddings(tmp_path):
    import_real("open_clip")
    torch.manual_seed(0)
    names = CIFAR100_CLASSES[:10]
    prepared = tiny_prepared(channels=3, size=32)
    prepared = dataclasses.replace(prepared, train=dataclasses.replace(prepared.train, class_names=names))
    cfg = build_config({"output": str(tmp_path / "run"), "device": "cpu", "progress": False},
                       [f"model.name={CLIP}", "model.tune=adaptformer", "model.init_head=auto", "train.epochs=1",
                        "method.name=csa", "method.params={classifier: cosine, classifier_scale: 25.0}"])
    trainer = Trainer(cfg, prepared)
    prompts = class_prompts(names, "a photo of a {}.")
    assert prompts[:2] == ["a photo of a apple.", "a photo of a aquarium fish."]  # LIFT trainer.py line 306
    text = trainer.method.backbone.inner.text_features(prompts)
    trainer._train_epoch = lambda *args: {}  # no step: the heads as the fresh run started them
    trainer.fit()
    expected = F.normalize(text.float(), dim=-1)
    for head in (trainer.method.uniform_head, trainer.method.balanced_head):  # CSA's dual head, the same rows
        torch.testing.assert_close(head.weight, expected)
        assert head.scale == 25.0


def test_text_initialisation_needs_a_text_tower_and_class_names():
    import_real("timm")
    backbone = create_model(VIT, image_size=32)
    from tailshift.methods.head_init import chosen_init, text_feature_rows
    assert chosen_init("auto", backbone) == "class_mean"  # LIFT: class means for a ViT without a text tower
    with pytest.raises(ValueError, match="model.init_head=text_feat needs a text tower .*use model.init_head=class_mean"):
        text_feature_rows(backbone, ("a", "b"), "a photo of a {}.", VIT)


@pytest.mark.parametrize("tune", ["vpt_shallow", "vpt_deep", "ssf", "lora", "adapter", "adaptformer"])
def test_the_tuner_bypassed_leaves_the_pretrained_model_alone(tune):
    import_real("timm")
    x = torch.rand(6, 3, 32, 32)
    torch.manual_seed(0)
    plain = create_model(VIT, image_size=32).eval()
    torch.manual_seed(0)  # the same pretrained weights, then the mode's modules
    tuned = create_model(VIT, tune=tune, num_classes=4, image_size=32).eval()
    with torch.no_grad():
        with tuner_bypassed(tuned):
            bypassed = tuned(x)
        on = tuned(x)
    torch.testing.assert_close(bypassed, plain(x))
    # prompts and ssf change the features from the start; the others' modules start at zero output
    assert torch.allclose(on, bypassed) == (tune in ("lora", "adapter", "adaptformer"))


@pytest.mark.parametrize("tune", ["adaptformer", "vpt_deep"])
def test_class_mean_initialisation_gives_each_class_its_normalised_mean_embedding(tmp_path, tune):
    """The mean embedding of the pretrained model without its tuner, as LIFT computes it (``use_tuner=False``)."""
    import_real("timm")
    prepared = tiny_prepared(channels=3, size=32)
    cfg = build_config({"output": str(tmp_path / "run"), "device": "cpu", "progress": False},
                       [f"model.name={VIT}", f"model.tune={tune}", "model.init_head=class_mean", "train.epochs=1",
                        "method.name=la", "method.params={classifier: cosine, classifier_scale: 25.0}"])
    trainer = Trainer(cfg, prepared)
    trainer._train_epoch = lambda *args: {}
    trainer.fit()
    method = trainer.method.eval()
    with torch.no_grad(), tuner_bypassed(method):
        features = method.features(torch.from_numpy(prepared.train.images).float() / 255)
    labels = torch.from_numpy(prepared.train.labels)
    expected = F.normalize(torch.stack([features[labels == c].mean(0) for c in range(10)]), dim=-1)
    torch.testing.assert_close(method.head.weight, expected, rtol=1e-4, atol=1e-5)


def test_five_crops_are_torchvisions_corners_and_centre_of_the_resized_image():
    pixels = np.arange(40 * 30 * 3, dtype=np.uint32).reshape(30, 40, 3).astype(np.uint8)
    img = Image.fromarray(pixels)
    crops = five_crops(img, 24, 16)  # shorter side 30 -> 24: 32 x 24
    resized = np.asarray(img.resize((32, 24), Image.BILINEAR)).transpose(2, 0, 1)
    assert crops.shape == (5, 3, 16, 16)
    for crop, (top, left) in zip(crops, [(0, 0), (0, 16), (8, 0), (8, 16), (4, 8)]):
        np.testing.assert_array_equal(crop, resized[:, top: top + 16, left: left + 16])


def test_the_ensembles_prediction_is_the_mean_of_its_views_logits():
    data = ArrayDataset(np.random.default_rng(0).integers(0, 255, (3, 3, 20, 28), dtype=np.uint8), np.array([0, 1, 2]))
    cfg = build_config({}, ["data.augment=resized_crop", "data.crop_size=16", "data.resize_size=18", "data.tte=fivecrop",
                            "data.tte_resize_size=20", "data.workers=0"]).data
    _, test = make_feeds(data, data, torch.device("cpu"), cfg, torch.contiguous_format)
    batch = next(test.iterate(3))
    assert batch.views == 5 and batch.x.shape == (15, 3, 16, 16) and batch.y.tolist() == [0, 1, 2]
    views = EvalViews(18, 16, "fivecrop", 20)(Image.fromarray(data.images[1].transpose(1, 2, 0)))
    torch.testing.assert_close(batch.x[5:10], torch.from_numpy(views).float() / 255)
    logits = torch.randn(15, 4)
    torch.testing.assert_close(mean_over_views(logits, 5)[1], logits[5:10].mean(0))


def test_class_names_of_cifar100_and_of_imagenet_and_places_name_files(tmp_path):
    write_cifar100(tmp_path, 1)
    (tmp_path / "cifar-100-python" / "meta").unlink()  # the standard list when the meta file is absent
    data = prepare_data(build_config({}, ["data.dataset=cifar100", f"data.root={tmp_path}",
                                          "data.longtail.profile=none"]).data)
    assert data.train.class_names[:2] == ("apple", "aquarium_fish") and len(data.train.class_names) == 100
    root = write_imagenet_lt(tmp_path / "inet", counts=(3, 2), test_per_class=1)
    imagenet = ["data.dataset=imagenet-lt", f"data.root={root}", "data.longtail.profile=none", "data.groups=count"]
    assert prepare_data(build_config({}, imagenet).data).train.class_names is None
    (root / "LOC_synset_mapping.txt").write_text("n00000001 goldfish, Carassius auratus\nn00000000 tench, Tinca tinca\n")
    assert prepare_data(build_config({}, imagenet + ["data.workers=0"]).data).train.class_names == ("tench", "goldfish")
    places = tmp_path / "places.txt"
    places.write_text("/n/n00000000 0\n/n/n00000001/outdoor 1\n")
    with pytest.raises(DataError, match=r"places.txt has no line for class 1 \(training folder 'n00000001'\)"):
        prepare_data(build_config({}, imagenet + [f"data.class_names={places}"]).data)


def test_lift_on_cifar100_lt_runs_end_to_end_on_the_cpu(tmp_path, capsys):
    """The shipped recipe with a tiny ViT and tiny settings: adaptformer, class-mean cosine head, LA, five crops."""
    import_real("timm")
    write_cifar100(tmp_path, 5)
    args = ["train", "lift/cifar100-lt_lift", f"model.name={VIT}", "model.pretrained=none", f"data.root={tmp_path}",
            "data.longtail.rho=5", "data.longtail.n_max=5", "data.crop_size=32", "data.resize_size=36",
            "data.tte_resize_size=36", "data.workers=0", "train.epochs=1", "train.batch_size=64", "train.amp=off",
            "device=cpu", f"output={tmp_path / 'run'}"]
    assert cli.main(args) == 0
    run = load_run(tmp_path / "run")
    assert run.cfg.model.tune == "adaptformer" and run.cfg.data.tte == "fivecrop" and run.cfg.data.crop_size == 32
    assert run.cfg.model.readout == "token" and run.method.backbone.inner.net.global_pool == "token"  # LIFT's readout
    assert run.method.head.scale == 25.0 and type(run.method.loss).__name__ == "LogitAdjusted"
    assert set(run.metrics["heads"]["main"]) >= {"all", "many", "med", "few"}
    assert "trainable parameters" in capsys.readouterr().out
    # predict views an image as the evaluation does: the five crops of its resized copy, logits averaged
    image = np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "image.png")
    (top,) = predict_images(run, [str(tmp_path / "image.png")], top_k=3)
    crops = torch.from_numpy(five_crops(Image.fromarray(image), 36, 32))
    with torch.no_grad():
        probabilities = run.method.predict(normalise(crops, *run.mean_std()))["main"].mean(0).softmax(0)
    expected = probabilities.topk(3)
    assert [c for c, _, _ in top["top"]] == expected.indices.tolist()
    assert [p for _, _, p in top["top"]] == pytest.approx(expected.values.tolist(), abs=1e-5)


def test_reproduce_lift_plans_the_shipped_configs_beside_the_reported_numbers():
    from tailshift.reproduce.lift import LIFT

    studies = LIFT.studies(list(LIFT.datasets))
    plan = LIFT.plan(studies, LIFT.select_rows(None), (0,), ())
    assert {v.config for v in plan.variants.values()} == {f"lift/{d}_{run}" for d in LIFT.datasets
                                                          for run in ("lift", "lift-csa")}
    paper = LIFT.paper_rows(studies)
    assert paper["imagenet-lt"]["lift"] == [78.3, None, None, None] and paper["inat2018"] == {}


def test_csa_on_a_tuned_vit_with_cosine_heads_masks_at_the_images_size_and_fuses_through_the_method():
    """LIFT + CSA: Grad-CAM through the cosine uniform head on the ViT's patch grid, upsampled to the image."""
    from tailshift.methods import METHODS

    import_real("timm")
    torch.manual_seed(0)
    backbone = create_model(VIT, tune="adaptformer", num_classes=10, image_size=32, in_channels=3)
    method = METHODS.get("csa")(backbone, 10, np.arange(10, 0, -1), 2,
                                {"classifier": "cosine", "classifier_scale": 25.0, "delta": 0.0, "use_bank": False})
    x, y = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    masks, confident = method.extract_contexts(x, y)
    assert masks.shape == (6, 1, 32, 32) and confident.all()
    assert 0 <= float(masks.min()) and float(masks.max()) <= 1 and float(masks.std()) > 0  # not a constant mask
    generator = torch.Generator().manual_seed(0)
    fused = method._fuse(x, method._draw_contexts(x, masks, confident, 6, generator), generator)
    assert fused.shape == x.shape and not torch.equal(fused, x)


@pytest.mark.parametrize("name, epochs", [("lift/cifar100-lt_lift", 10), ("lift/inat2018_lift", 20)])
def test_lift_learning_rate_is_cosine_annealing_stepped_once_an_epoch(name, epochs):
    """shijxcs/LIFT trainer.py lines 281 and 526: CosineAnnealingLR(optim, num_epochs), stepped after each epoch."""
    import math

    from tailshift.engine import learning_rate

    cfg = load_config(config_path(name))
    optim = cfg.train.optim
    assert (cfg.train.epochs, optim.lr, optim.momentum, optim.weight_decay) == (epochs, 0.01, 0.9, 5e-4)
    for epoch in range(epochs):
        lift = 0.01 * (1 + math.cos(math.pi * epoch / epochs)) / 2
        for within in (0.0, 0.999):
            assert learning_rate(optim, optim.lr, optim.schedule, epochs, epoch + within) == pytest.approx(lift)


def test_lift_on_imagenet_lt_files_starts_from_the_class_names_text_embeddings(tmp_path):
    """The image-file path: names from LOC_synset_mapping.txt, the CLIP text tower's rows mapped back through proj to
    the class token's space (text @ proj.T, normalised: shijxcs/LIFT trainer.py lines 349-351), five crops of each file."""
    open_clip = import_real("open_clip")
    root = write_imagenet_lt(tmp_path / "inet")
    (root / "LOC_synset_mapping.txt").write_text("".join(f"n{c:08d} class {c}, other name\n" for c in range(6)))
    cfg = load_config(config_path("lift/imagenet-lt_lift"), [
        f"model.name={CLIP}", "model.pretrained=none", f"data.root={root}", "data.crop_size=32", "data.resize_size=36",
        "data.tte_resize_size=40", "data.workers=0", "train.epochs=1", "train.batch_size=32", "train.amp=off",
        "device=cpu", "progress=false", f"output={tmp_path / 'run'}"])
    trainer = Trainer(cfg)
    assert trainer.data.train.class_names == tuple(f"class {c}" for c in range(6))
    backbone = trainer.method.backbone
    assert cfg.model.readout == "token" and backbone.out_dim == backbone.inner.visual.ln_post.normalized_shape[0]
    clip = backbone.pretrained_target()
    with torch.no_grad():
        text = clip.encode_text(open_clip.get_tokenizer("ViT-S-32")([f"a photo of a class {c}." for c in range(6)]))
        expected = F.normalize(text @ clip.visual.proj.t(), dim=-1)
    trainer._train_epoch = lambda *args: {}  # no step: the head as the fresh run started it, then evaluated
    metrics = trainer.fit()
    torch.testing.assert_close(trainer.method.head.weight, expected)
    assert metrics["heads"]["main"]["all"] >= 0


def test_a_run_with_initialised_heads_resumes_exactly(tmp_path):
    """The class vectors start a fresh run only: a resumed run keeps its checkpoint's heads."""
    import_real("timm")
    prepared = tiny_prepared(channels=3, size=32)
    overrides = [f"model.name={VIT}", "model.tune=adaptformer", "model.init_head=class_mean", "train.epochs=2",
                 "train.batch_size=32", "train.optim.lr=0.01", "method.name=la",
                 "method.params={classifier: cosine, classifier_scale: 25.0}"]

    def config(name):
        return build_config({"output": str(tmp_path / name), "device": "cpu", "progress": False}, overrides)

    full = Trainer(config("full"), prepared)
    full.fit()
    fit_until_interrupted(Trainer(config("killed"), prepared), lambda stage, epoch, started: started == 2)
    resumed = Trainer(config("killed"), prepared)
    resumed.fit()
    for name, value in full.method.state_dict().items():
        assert torch.equal(value, resumed.method.state_dict()[name]), name
