"""The heads' first class vectors (``model.init_head``), as LIFT starts its classifier (Shi et al., ICML 2024,
shijxcs/LIFT@661ead9 trainer.py lines 236-241): one row per class, normalised, copied into every head by
``Method.initialise_heads`` before the first step of a fresh run (a resumed run has them in its checkpoint).

* ``text_feat``: the CLIP text tower's embedding of ``model.init_prompt`` ("a photo of a {}.", trainer.py line
  344) per class name, underscores read as spaces (line 306), in the image embedding's space, normalised
  (line 347). Under ``model.readout=token`` the image embedding is LIFT's, the class token before CLIP's
  ``proj`` (models/peft_vit.py lines 457-459), so the text embeddings are mapped back through ``proj``,
  text @ proj.T, then normalised (trainer.py lines 349-351); under ``avg`` it is the pooled patch tokens
  after ``proj``, in the joint space (``clip_backbone.py``), so the rows are the normalised text embeddings.
* ``class_mean``: each class's mean embedding over the training split under the eval recipe (LIFT's
  ``transform_plain``, resize and centre crop to the input size: trainer.py lines 109-114, 355-390),
  normalised, as LIFT computes it: without its tuner (``use_tuner=False``), which matters for the modes whose
  modules do not start at zero output (prompts, vpt_*; ssf's scales and shifts drawn about 1 and 0).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import World
from ..models.tuning import tuner_bypassed


def class_prompts(class_names, template: str) -> list[str]:
    """``template`` filled with each class name, underscores as spaces (LIFT trainer.py line 306)."""
    return [template.format(name.replace("_", " ")) for name in class_names]


def text_tower(backbone):
    """The backbone's ``text_features`` (a CLIP model's, also under ``model.tune``), or None."""
    return getattr(backbone, "text_features", None) or getattr(getattr(backbone, "inner", None), "text_features", None)


def chosen_init(init_head: str, backbone) -> str:
    """``auto`` resolved as LIFT configures it per backbone: text_feat for CLIP (shijxcs/LIFT
    configs/model/clip_vit_b16.yaml line 22), class_mean for a ViT without a text tower (in21k_vit_b16.yaml line 22)."""
    if init_head != "auto":
        return init_head
    return "text_feat" if text_tower(backbone) is not None else "class_mean"


def text_feature_rows(backbone, class_names, template: str, model_name: str) -> torch.Tensor:
    """C x D: the normalised text embeddings of the class prompts in the image embedding's space
    (``backbone.text_features``, a CLIP model's)."""
    tower = text_tower(backbone)
    if tower is None:
        raise ValueError(f"model.init_head=text_feat needs a text tower (model.name=clip:NAME); model.name={model_name} "
                         "has none: use model.init_head=class_mean")
    if class_names is None:
        raise ValueError("model.init_head=text_feat needs the class names, which this dataset does not give: pass "
                         "data.class_names=PATH (ImageNet's LOC_synset_mapping.txt, Places365's categories_places365.txt, "
                         "or a 'folder name' line a class) or use model.init_head=class_mean")
    return F.normalize(tower(class_prompts(class_names, template)).float(), dim=-1)


@torch.inference_mode()
def class_mean_rows(method, feed, num_classes: int, batch_size: int, world: World = World()) -> torch.Tensor:
    """C x D: the normalised mean of ``method.features`` per class over ``feed`` (the training split under the eval
    recipe); each process sums its share, the sums are averaged over processes (their ratio is the mean)."""
    was_training = method.training
    method.eval()
    device = next(method.parameters()).device
    sums = torch.zeros(num_classes, method.backbone.out_dim, device=device)
    counts = torch.zeros(num_classes, device=device)
    with tuner_bypassed(method):
        for batch in feed.iterate(batch_size, *world.part(len(feed))):
            features = method.features(batch.x).float()
            sums.index_add_(0, batch.y, features)
            counts.index_add_(0, batch.y, torch.ones_like(batch.y, dtype=features.dtype))
    method.train(was_training)
    sums, counts = world.mean_(sums), world.mean_(counts)
    missing = np.flatnonzero(counts.cpu().numpy() == 0)
    if len(missing):
        raise ValueError(f"model.init_head=class_mean needs a training image of every class; class {missing[0]} has none")
    return F.normalize(sums / counts[:, None], dim=-1)
