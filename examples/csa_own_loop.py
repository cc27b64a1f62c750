"""Context-Shift Augmentation in your own PyTorch loop, from tailshift's pieces (a few seconds on CPU)."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tailshift.cam import context_masks
from tailshift.data.sampling import Sampler, SamplerSpec
from tailshift.methods.context_bank import ContextBank
from tailshift.methods.mixing_ops import fuse_context, sample_lambda
from tailshift.models import create_model

torch.manual_seed(0)
# Tiny long-tailed data: 4 classes, 3 x 28 x 28 noise images, class c has a bright bar at its own height.
counts = [128, 48, 24, 8]
labels = np.repeat(np.arange(len(counts)), counts)
images = 0.4 * torch.rand(len(labels), 3, 28, 28)
for i, c in enumerate(labels):
    images[i, :, 3 + 6 * c: 7 + 6 * c, 4:24] = 1.0
targets = torch.from_numpy(labels)

backbone = create_model("lenet2d", in_channels=3)           # any model with feature_map() and embed()
uniform_head = nn.Linear(backbone.out_dim, len(counts))      # trained on the natural (long-tailed) stream
balanced_head = nn.Linear(backbone.out_dim, len(counts))     # trained on re-sampled, context-shifted batches
params = [*backbone.parameters(), *uniform_head.parameters(), *balanced_head.parameters()]
optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)

batch, delta, warmup_epochs = 32, 0.5, 2
uniform = Sampler(labels, SamplerSpec("shuffle"), seed=0, stream="uniform")
balanced = Sampler(labels, SamplerSpec("class_aware", per_class=4), seed=0, stream="balanced")
bank = ContextBank(capacity=batch)                          # FIFO of (image, background mask)
generator = torch.Generator().manual_seed(0)                # all CSA randomness: lambdas, bank draws
fused_steps = 0

for epoch in range(12):
    u_epoch, b_epoch = uniform.epoch_indices(epoch), balanced.epoch_indices(epoch)
    for step in range(len(u_epoch) // batch):
        u = torch.from_numpy(u_epoch[step * batch: (step + 1) * batch])
        b = torch.from_numpy(b_epoch[step * batch: (step + 1) * batch])
        x_u, y_u, x_b, y_b = images[u], targets[u], images[b], targets[b]

        # Uniform branch: plain CE on the natural distribution.
        fmap = backbone.feature_map(x_u)
        loss = F.cross_entropy(uniform_head(backbone.embed(fmap)), y_u)

        # Context extraction: batched Grad-CAM of the uniform head -> background masks (no gradients).
        with torch.no_grad():
            mask, logits = context_masks(fmap, lambda a: uniform_head(backbone.embed(a)), y_u,
                                         x_u.shape[-2:], power=2.0)
        confident = logits.softmax(dim=1).gather(1, y_u[:, None]).squeeze(1) >= delta
        bank.push(x_u[confident], mask[confident])

        # Balanced branch: re-sampled images get the background of confident uniform images pasted in.
        if epoch >= warmup_epochs and bank.is_full:
            context, context_mask = bank.draw(len(b), generator)
            lam = sample_lambda(len(b), "uniform", 0.0, 1.0, generator=generator)
            x_b = fuse_context(x_b, context, context_mask, lam)
            loss = loss + F.cross_entropy(balanced_head(backbone(x_b)), y_b)
            fused_steps += 1

        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

with torch.no_grad():
    accuracy = (balanced_head(backbone(images)).argmax(dim=1) == targets).float().mean().item()
print(f"final loss {loss.item():.4f}, balanced-head train accuracy {100 * accuracy:.1f}%, "
      f"fused steps {fused_steps}, bank holds {len(bank)} contexts")
