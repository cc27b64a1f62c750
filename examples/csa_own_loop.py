"""Context-Shift Augmentation in your own PyTorch loop, with tailshift's public API (a few seconds on CPU)."""
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tailshift.csa import ContextShift
from tailshift.losses import CrossEntropyLoss
from tailshift.metrics import group_accuracy
from tailshift.samplers import ClassAwareSampler, UniformSampler

torch.manual_seed(0)
# Tiny long-tailed data: 4 classes, 3 x 28 x 28 noise images, class c has a bright bar at its own height.
counts = [128, 48, 24, 8]
labels = np.repeat(np.arange(len(counts)), counts)
images = 0.4 * torch.rand(len(labels), 3, 28, 28)
for i, c in enumerate(labels):
    images[i, :, 3 + 6 * c: 7 + 6 * c, 4:24] = 1.0
targets = torch.from_numpy(labels)
dataset = TensorDataset(images, targets)

# Any model: CSA needs its last convolutional feature map and a head from that map to logits.
features = nn.Sequential(nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))  # -> 32 x 7 x 7
uniform_head = nn.Linear(32 * 7 * 7, len(counts))    # trained on the natural (long-tailed) stream
balanced_head = nn.Linear(32 * 7 * 7, len(counts))   # trained on re-sampled, context-shifted batches
params = [*features.parameters(), *uniform_head.parameters(), *balanced_head.parameters()]
optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
loss_fn = CrossEntropyLoss(counts)                    # or LDAMLoss, LogitAdjustedLoss, ... (tailshift.losses)

batch, warmup_epochs = 32, 2
uniform = UniformSampler(labels, seed=0, stream="0/uniform")                 # every image once per epoch
balanced = ClassAwareSampler(labels, per_class=4, seed=0, stream="0/balanced")  # classes equally often
uniform_loader = DataLoader(dataset, batch_size=batch, sampler=uniform, drop_last=True)
balanced_loader = DataLoader(dataset, batch_size=batch, sampler=balanced, drop_last=True)
context_shift = ContextShift(capacity=batch, delta=0.5)  # the bank of (image, background mask) pairs
generator = torch.Generator().manual_seed(0)             # all CSA randomness: bank draws, lambdas
fused_steps = 0

for epoch in range(12):
    uniform.set_epoch(epoch)
    balanced.set_epoch(epoch)
    context_shift.clear()  # as released: the bank is refilled every epoch
    for (x_u, y_u), (x_b, y_b) in zip(uniform_loader, balanced_loader):
        # Uniform branch: plain CE on the natural distribution.
        fmap = features(x_u)
        loss = loss_fn(uniform_head(fmap.flatten(1)), y_u)

        # Context extraction: Grad-CAM of the uniform head; confident samples' backgrounds go into the bank.
        context_shift.update(fmap, lambda a: uniform_head(a.flatten(1)), x_u, y_u)

        # Balanced branch: re-sampled images get the background of confident uniform images pasted in.
        if epoch >= warmup_epochs and context_shift.ready:
            x_b = context_shift.fuse(x_b, generator)
            loss = loss + loss_fn(balanced_head(features(x_b).flatten(1)), y_b)
            fused_steps += 1

        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

with torch.no_grad():
    scores = group_accuracy(balanced_head(features(images).flatten(1)), targets, counts)
print("balanced head, training set: " + ", ".join(f"{group} {value:.1f}" for group, value in scores.items()))
print(f"final loss {loss.item():.4f}, balanced-head train accuracy {scores['all']:.1f}%, "
      f"fused steps {fused_steps}, bank holds {len(context_shift)} contexts")
