"""Small pure-PyTorch networks for the torch tests (torchvision cannot be imported with this CPU torch).

Reference architectures in miniature (random weights, for conversion agreement): a MobileNetV3-small-like
net (hardswish, squeeze-excite), a ResNet18-style net (BasicBlocks), a segmentation head with bilinear
upsampling, a transformer encoder (erf GELU, LayerNorm). A CNN trained on scikit-learn's digits (seeded,
a few seconds) for the int8 gate. And two modules that behave differently while exported or traced, for
the exporter fallback. Classes live at module level so a live module can be pickled for a run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, stride: int, se: bool) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish()
        )
        self.se = SqueezeExcite(hidden, max(8, hidden // 4)) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    """MobileNetV3-small in miniature: hardswish stem, inverted residuals with squeeze-excite, a classifier."""

    def __init__(self, classes: int = 100) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 16, 2, True),
            InvertedResidual(16, 72, 24, 2, False),
            InvertedResidual(24, 88, 24, 1, False),
            InvertedResidual(24, 96, 40, 2, True),
        )
        self.head = nn.Sequential(nn.Linear(40, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNet18Style(nn.Module):
    """ResNet18's layout (stem, max-pool, four stages of two BasicBlocks, global pool, fc) at small widths."""

    def __init__(self, classes: int = 100, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        widths = [width, width * 2, width * 4, width * 8]
        layers, cin = [], width
        for i, w in enumerate(widths):
            layers += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(F.max_pool2d(self.stem(x), 3, 2, 1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class SegmentationHead(nn.Module):
    """An encoder with strided convs and a decoder that upsamples (bilinear) back to per-pixel class scores."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.fuse = nn.Conv2d(32 + 16, 16, 3, 1, 1)
        self.classify = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.enc1(x)
        high = F.interpolate(self.enc2(low), size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = F.relu(self.fuse(torch.cat([high, low], 1)))
        return F.interpolate(self.classify(y), scale_factor=2, mode="bilinear", align_corners=False)


class TinyTransformer(nn.Module):
    """A transformer encoder over token features: attention, erf GELU feed-forward, LayerNorm, a pooled head."""

    def __init__(self, dim: int = 32, heads: int = 4, layers: int = 2, classes: int = 7) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(x)).mean(1))


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits (NCHW, one channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.classify = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class ExportOnlyBranch(nn.Module):
    """Computes something else while ``torch.export`` traces it: the dynamo export runs but is wrong.

    Libraries do branch on ``torch.compiler.is_exporting()`` (export-friendly code paths); when the two
    paths differ, the dynamo exporter ships the other one, while TorchScript tracing sees the eager path.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if torch.compiler.is_exporting():
            return torch.tanh(y)
        return torch.relu(y)


class WrongWhenExported(ExportOnlyBranch):
    """Wrong under both exporters: a different path while exported and while traced."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            return torch.sigmoid(y)
        return torch.relu(y)


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as NCHW float32 in [0, 1]: (train x, train y, rest x, rest y), shuffled with ``seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    train, rest = order[:1000], order[1000:]
    return x[train], y[train], x[rest], y[rest]


def train_digits(seed: int = 0, epochs: int = 30) -> tuple[DigitsCNN, np.ndarray, np.ndarray]:
    """The digits CNN trained (seeded) on 1000 digits; returns it with the 797 it never saw (x, y)."""
    torch.manual_seed(seed)
    x_train, y_train, x_rest, y_rest = digits_split(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = epochs * -(-len(x_train) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps)
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(xs), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(xs[batch]), ys[batch]).backward()
            optimizer.step()
            schedule.step()
    return model.eval(), x_rest, y_rest


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
