"""dlib's public-domain face ResNet (`dlib_face_recognition_resnet_model_v1.dat`) as a torch module.

The weights are read from dlib's own serialisation (dlib/serialize.h, dlib/dnn/*.h), no dlib needed:

- an integer is a control byte (low 4 bits: how many bytes follow, 0x80: negative) and then its
  magnitude, little-endian; a float or double is two such integers, mantissa and exponent
  (value = mantissa·2^exponent); a string is its length and its bytes; a bool is ASCII '0' / '1';
  a tensor is a version, its four dimensions (N, K, R, C) and raw little-endian float32s.
- layers are nested: each wrapper writes its version, then the whole network below it, then its own
  layer. So the file opens with the loss layer and the versions of all wrappers, outermost first
  (1: a tag or skip, which carry nothing; 2: a computational layer), reaches the input layer, and
  then lists the computational layers from the input up, each followed by training state (three
  bools and some tensors, empty in a saved net).
- the affine layers hold the batch-norm statistics already folded into a scale and a bias per
  channel; the convolutions have biases; the final fc has none and stores its matrix
  inputs × outputs; the input layer stores the per-channel RGB means, and a pixel becomes
  (value − mean) / 256.

The architecture is the one of dlib's examples/dnn_face_recognition_ex.cpp: a 7×7/2 conv, max-pool
3×3/2, 14 residual blocks of two 3×3 convs (32, 64, 128, 256, 256 channels), global average pooling
and a 128-d linear layer. Downsampling blocks use stride-2 convs *without padding* and a 2×2/2
average pool on the shortcut, and dlib's residual add (add_prev) zero-pads the smaller branch at the
end (extra channels, bottom rows, right columns) instead of requiring equal shapes. Twice the two
branches differ in size (3×3 vs 4×4 and 1×1 vs 2×2); cropping the larger one instead changes the
descriptors by up to 0.35, padding reproduces dlib's to float rounding (~5e-7).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def dlib_model_file() -> Path:
    """The .dat file in the `face_recognition_models` package, found without importing it (its
    __init__ needs pkg_resources, gone from current setuptools)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("dlib's face model needs `pip install 'faceverify[distill]'` "
                         "(no face_recognition_models)")
    return Path(spec.submodule_search_locations[0]) / "models" / MODEL_FILE


class DlibReader:
    """Reads dlib's serialisation from bytes; anything malformed raises ModelError."""

    def __init__(self, data: bytes, name: str = "dlib file"):
        self.data, self.pos, self.name = data, 0, name

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.name} is not a dlib face ResNet file or is truncated: {what} "
                          f"(at byte {self.pos} of {len(self.data)})")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"{n} more bytes expected")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte {control:#04x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def count(self) -> int:
        """A non-negative integer (a size or dimension)."""
        value = self.int()
        if value < 0:
            raise self.fail(f"negative size {value}")
        return value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        specials = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        if exponent in specials:
            return specials[exponent]
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError:
            raise self.fail(f"float {mantissa}·2^{exponent}") from None

    def bool(self) -> bool:
        byte = self.take(1)
        if byte not in (b"0", b"1"):
            raise self.fail(f"bad bool {byte!r}")
        return byte == b"1"

    def string(self) -> str:
        return self.take(self.count()).decode("latin-1")

    def peek_string(self) -> str | None:
        """The string at the current position, or None if there is none; the position stays."""
        start = self.pos
        try:
            return self.string()
        except ModelError:
            return None
        finally:
            self.pos = start

    def shape(self) -> tuple[int, ...]:
        """An alias_tensor: only the (N, K, R, C) shape of a view into a layer's params."""
        if (version := self.int()) != 1:
            raise self.fail(f"alias_tensor version {version}")
        return tuple(self.count() for _ in range(4))

    def tensor(self) -> np.ndarray:
        if (version := self.int()) != 2:
            raise self.fail(f"tensor version {version}")
        shape = tuple(self.count() for _ in range(4))
        size = math.prod(shape)
        return np.frombuffer(self.take(4 * size), "<f4").reshape(shape).astype(np.float32)


@dataclass
class DlibLayer:
    """A computational layer: its kind ("con", "affine", ...), settings and float32 arrays."""

    kind: str
    settings: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)


@dataclass
class DlibNet:
    loss: str
    input: dict
    layers: list  # DlibLayer, from the input up
    wrappers: int  # tags and skips: they carry no data, so the file cannot say which is which


INPUT_LAYERS = {"input_rgb_image_sized"}


def read_dlib_net(data: bytes, name: str = "dlib file") -> DlibNet:
    """Parse a serialised dlib network with a metric loss and an RGB input."""
    r = DlibReader(data, name)
    if (version := r.int()) != 1:
        raise r.fail(f"loss layer version {version}")
    loss = r.string()
    if loss == "loss_metric_2":
        r.float(), r.float()  # margin, distance threshold: training only
    elif loss != "loss_metric_":
        raise r.fail(f"loss {loss!r}, not dlib's metric loss")
    wrappers = []
    while True:
        version = r.int()
        if r.peek_string() in INPUT_LAYERS:
            if version not in (2, 3):
                raise r.fail(f"input layer version {version}")
            input_version = version
            break
        if version not in (1, 2):
            raise r.fail(f"layer version {version}")
        wrappers.append(version)
    net_input = _read_input(r)
    layers = [_read_layer(r)]
    _skip_state(r)
    if input_version == 3:
        r.int()  # sample expansion factor
    for version in reversed(wrappers):
        if version == 2:
            layers.append(_read_layer(r))
            _skip_state(r)
    if r.pos != len(r.data):
        raise r.fail("unexpected data after the network")
    return DlibNet(loss, net_input, layers, wrappers.count(1))


def _read_input(r: DlibReader) -> dict:
    r.string()
    mean = (r.float(), r.float(), r.float())
    return {"mean": mean, "size": (r.count(), r.count())}


def _skip_state(r: DlibReader) -> None:
    """Training state after each layer: setup done, gradient stale, disabled; three tensors."""
    r.bool(), r.bool(), r.bool()
    r.tensor(), r.tensor(), r.tensor()


def _split(r: DlibReader, params: np.ndarray, *shapes) -> list[np.ndarray]:
    """Cut a layer's flat params into consecutive arrays of the given shapes, which must fill it."""
    sizes = [math.prod(shape) for shape in shapes]
    if sum(sizes) != params.size:
        raise r.fail(f"{params.size} parameters for parts of shapes {shapes}")
    flat, out, start = params.reshape(-1), [], 0
    for shape, size in zip(shapes, sizes):
        out.append(flat[start:start + size].reshape(shape))
        start += size
    return out


def _read_layer(r: DlibReader) -> DlibLayer:
    version = r.string()
    if version in ("con_4", "con_5", "con_6"):
        params = r.tensor()
        settings = {"filters": r.int(), "size": (r.int(), r.int()), "stride": (r.int(), r.int()),
                    "padding": (r.int(), r.int())}
        weight_shape, bias_shape = r.shape(), r.shape()
        for _ in range(4):
            r.float()  # learning-rate and weight-decay multipliers
        if version != "con_4":
            r.bool()  # use_bias: also said by the size of the biases
        settings["fused_relu"] = r.bool() if version == "con_6" else False
        weight, bias = _split(r, params, weight_shape, bias_shape)
        return DlibLayer("con", settings, {"weight": weight, "bias": bias.reshape(-1)})
    if version in ("affine_", "affine_2"):
        params, gamma_shape, beta_shape = r.tensor(), r.shape(), r.shape()
        settings = {"mode": "conv" if r.int() == 0 else "fc",
                    "disabled": r.bool() if version == "affine_2" else False}
        gamma, beta = _split(r, params, gamma_shape, beta_shape)
        return DlibLayer("affine", settings, {"weight": gamma.reshape(-1), "bias": beta.reshape(-1)})
    if version in ("relu_", "relu_2"):
        return DlibLayer("relu", {"disabled": r.bool() if version == "relu_2" else False})
    if version in ("max_pool_2", "avg_pool_2"):
        settings = {"size": (r.int(), r.int()), "stride": (r.int(), r.int()),
                    "padding": (r.int(), r.int())}
        return DlibLayer(version[:-2], settings)
    if version == "add_prev_":
        return DlibLayer("add_prev")
    if version in ("fc_2", "fc_3"):
        outputs, inputs = r.count(), r.count()
        params = r.tensor()
        r.shape(), r.shape()  # views of params: (inputs, outputs) weights, (1, outputs) biases
        settings = {"outputs": outputs, "inputs": inputs, "bias": r.int() == 0}
        for _ in range(4):
            r.float()
        if version == "fc_3":
            settings["bias"] = r.bool()
        weight, bias = _split(r, params, (inputs, outputs), (outputs if settings["bias"] else 0,))
        return DlibLayer("fc", settings, {"weight": weight.T, "bias": bias})
    raise r.fail(f"unsupported layer {version!r}")


class ChannelAffine(nn.Module):
    """y = x · weight + bias per channel: dlib's affine layer (batch norm folded)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ResidualBlock(nn.Module):
    """Two 3×3 convs with affines, added to the input. A downsampling block strides its first conv
    (unpadded) and average-pools the shortcut; as dlib's add_prev, the sum then takes the larger
    size of each dimension and zero-pads the smaller operand at the end: the shortcut gets the
    extra channels, the conv branch (one row and column short when the input side is even) the
    bottom rows and right columns."""

    def __init__(self, in_channels: int, channels: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=2 if down else 1,
                               padding=0 if down else 1)
        self.affine1 = ChannelAffine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.affine2 = ChannelAffine(channels)
        self.shortcut = nn.AvgPool2d(2, 2) if down else nn.Identity()

    def forward(self, x):
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        if not self.down:
            return F.relu(y + x)
        shortcut = self.shortcut(x)
        y = F.pad(y, (0, shortcut.shape[3] - y.shape[3], 0, shortcut.shape[2] - y.shape[2]))
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, y.shape[1] - shortcut.shape[1]))
        return F.relu(y + shortcut)

    def dlib_layers(self):
        yield from [("con", self.conv1), ("affine", self.affine1), ("relu", None),
                    ("con", self.conv2), ("affine", self.affine2)]
        if self.down:
            yield "avg_pool", self.shortcut
        yield from [("add_prev", None), ("relu", None)]


#: (channels, blocks, first block downsamples), from the input up
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class DlibResNet(nn.Module):
    """dlib's face ResNet: RGB faces (N, 3, 150, 150, values 0..255) aligned by
    `dlib.get_face_chip(..., size=150, padding=0.25)` → (N, 128) descriptors as dlib computes them
    (not L2-normalised). `DlibResNet()` has untrained weights, for `load_state_dict`;
    `DlibResNet.from_dat()` has dlib's."""

    arch = "dlib-resnet-v1"
    embedding_dim = 128
    input_size = 150

    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", torch.zeros(3))
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 7, stride=2), ChannelAffine(32), nn.ReLU(),
                                  nn.MaxPool2d(3, 2))
        blocks, in_channels = [], 32
        for channels, count, down in STAGES:
            for i in range(count):
                blocks.append(ResidualBlock(in_channels, channels, down and i == 0))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, self.embedding_dim, bias=False)

    def forward(self, x):
        x = (x.float() - self.pixel_mean.view(1, 3, 1, 1)) / 256
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))

    def trunk_parts(self) -> list[nn.Module]:
        """The stem, then each stage's blocks: what fine-tuning freezes from the input up."""
        parts, start = [self.stem], 0
        for _, count, _ in STAGES:
            parts.append(nn.ModuleList(self.blocks[start:start + count]))
            start += count
        return parts

    @classmethod
    def from_dat(cls, path: str | Path | None = None) -> DlibResNet:
        """The network with the weights of a dlib .dat file (default: `dlib_model_file()`)."""
        path = Path(path) if path is not None else dlib_model_file()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read dlib model {path}: {exc}") from None
        model = cls()
        model.load_dlib(read_dlib_net(data, str(path)), str(path))
        return model

    def dlib_layers(self):
        """(kind, module) of each computational layer in the order dlib's file lists them."""
        stem = self.stem
        yield from [("con", stem[0]), ("affine", stem[1]), ("relu", None), ("max_pool", stem[3])]
        for block in self.blocks:
            yield from block.dlib_layers()
        yield from [("avg_pool", self.pool), ("fc", self.fc)]

    @torch.no_grad()
    def load_dlib(self, net: DlibNet, name: str = "dlib file") -> None:
        """Copy a parsed network's weights in, checking that it has exactly this architecture."""
        expected = list(self.dlib_layers())
        found = [layer.kind for layer in net.layers]
        if found != [kind for kind, _ in expected]:
            raise ModelError(f"{name} holds a different network than dlib's face ResNet: "
                             f"layers {found}")
        # a tag per block; a downsampling block adds a second tag and a skip
        tags = len(self.blocks) + 2 * sum(block.down for block in self.blocks)
        if net.wrappers != tags:
            raise ModelError(f"{name} has {net.wrappers} tag/skip layers, expected {tags}")
        if net.input["size"] != (self.input_size, self.input_size):
            raise ModelError(f"{name} takes {net.input['size']} images, not {self.input_size}²")
        for index, (layer, (kind, module)) in enumerate(zip(net.layers, expected)):
            want = _settings(kind, module)
            if want != {key: layer.settings.get(key) for key in want}:
                raise ModelError(f"{name}: layer {index} ({kind}) has settings {layer.settings}, "
                                 f"expected {want}")
            for attr, array in layer.arrays.items():
                target = getattr(module, attr)
                if target is None and array.size == 0:
                    continue
                if target is None or tuple(target.shape) != array.shape:
                    shape = None if target is None else tuple(target.shape)
                    raise ModelError(f"{name}: layer {index} ({kind}) {attr} has shape "
                                     f"{array.shape}, expected {shape}")
                target.copy_(torch.from_numpy(np.ascontiguousarray(array)))
        self.pixel_mean.copy_(torch.tensor(net.input["mean"], dtype=torch.float32))


def _settings(kind: str, module) -> dict:
    """What a dlib layer must declare to match `module`."""
    if kind == "con":
        return {"filters": module.out_channels, "size": module.kernel_size, "stride": module.stride,
                "padding": module.padding, "fused_relu": False}
    if kind in ("max_pool", "avg_pool"):
        if isinstance(module, nn.AdaptiveAvgPool2d):  # dlib's avg_pool_everything
            return {"size": (0, 0), "stride": (1, 1), "padding": (0, 0)}
        return {"size": _pair(module.kernel_size), "stride": _pair(module.stride),
                "padding": _pair(module.padding)}
    if kind == "affine":
        return {"mode": "conv", "disabled": False}
    if kind == "relu":
        return {"disabled": False}
    if kind == "fc":
        return {"outputs": module.out_features, "inputs": module.in_features,
                "bias": module.bias is not None}
    return {}


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)
