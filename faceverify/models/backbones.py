"""ResNet trunks (torchvision blocks) adapted to 112×112 aligned faces.

The ImageNet stem (7×7 stride-2 conv + max-pool) throws away too much of a 112-pixel face, so the
stem here is a 3×3 stride-2 conv: stages run at 56, 28, 14 and 7 pixels and the trunk ends on a
7×7 map, the resolution face models keep for their embedding head. `*-fast` variants add a
max-pool to the stem (stages at 28…4 pixels): four times cheaper, for CPU training and tests.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

#: name → (block, blocks per stage, base width, stem stride). `*-half`: half the channels.
ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 64, 2),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 64, 2),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 64, 2),
    "resnet18-half": (BasicBlock, (2, 2, 2, 2), 32, 2),
    "resnet34-half": (BasicBlock, (3, 4, 6, 3), 32, 2),
    "resnet18-half-fast": (BasicBlock, (2, 2, 2, 2), 32, 4),
}


class ResNetTrunk(nn.Module):
    """Stem + four residual stages; `out_channels` feature maps of 7×7 for a 112×112 input."""

    def __init__(self, arch: str = "resnet18"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        block, layers, width, stem_stride = ARCHS[arch]
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        if stem_stride == 4:
            self.stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        #: side of the output map for a 112×112 input
        self.out_size = -(-112 // (stem_stride * 8))
        self._in = width
        self.stages = nn.Sequential(*[
            self._stage(block, width * 2 ** i, blocks, stride=1 if i == 0 else 2)
            for i, blocks in enumerate(layers)])
        self.out_channels = self._in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init last BN of each block: residual starts as identity
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._in != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self._in, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self._in, planes, stride, downsample)]
        self._in = planes * block.expansion
        layers += [block(self._in, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        return self.stages(self.stem(x))
