"""Several face networks as one model: each on its own alignment template, one embedding out.

The embedding concatenates the members' unit embeddings, each scaled by √weight (weights summing
to 1), so the cosine of two embeddings is exactly the weighted mean of the members' cosines:
thresholds, galleries, FAISS / pgvector search and export need no notion of members. A single
pretrained network is an ensemble of one.

A member is a network of a known `kind` (`KINDS`): how its weights are stored in a checkpoint,
rebuilt from one, and written into an ONNX graph. `dlib-resnet-v1` is dlib's ResNet converted to
torch (`dlib_resnet`); `sface-2021dec` keeps OpenCV Zoo's int8 ONNX graph as the stored form (the
torch module is converted from it at load by onnx2torch, see `sface`), so one file serves both
paths without a second copy of the weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..align import Template
from ..errors import ModelError

#: `ModelMetadata.arch` of a model made of members
ENSEMBLE_ARCH = "ensemble"


@dataclass
class MemberSpec:
    """What a model file says about one member (`ModelMetadata.members`)."""

    name: str
    arch: str  # a key of `KINDS`
    embedding_dim: int
    template: Template
    weight: float = 1.0
    licence: str = ""
    source: str = ""  # where the weights came from, and what was done to them
    source_sha256: str = ""  # of the original file
    extra: dict = field(default_factory=dict)  # e.g. centring vector provenance

    def to_dict(self) -> dict:
        return {"name": self.name, "arch": self.arch, "embedding_dim": self.embedding_dim,
                "template": self.template.to_dict(), "weight": self.weight, "licence": self.licence,
                "source": self.source, "source_sha256": self.source_sha256, **self.extra}

    @classmethod
    def from_dict(cls, raw: dict) -> "MemberSpec":
        known = {"name", "arch", "embedding_dim", "template", "weight", "licence", "source", "source_sha256"}
        return cls(raw["name"], raw["arch"], int(raw["embedding_dim"]), Template.from_dict(raw["template"]),
                   float(raw.get("weight", 1.0)), raw.get("licence", ""), raw.get("source", ""),
                   raw.get("source_sha256", ""), {k: v for k, v in raw.items() if k not in known})


class Ensemble(nn.Module):
    """Aligned faces, one NCHW batch (values 0..255) per template of `templates`, → (N, Σ dims)
    L2-normalised embeddings whose inner products are the weighted means of the members' cosines.

    `centres[i]`, when given, is subtracted from member i's unit embedding before it is
    re-normalised: a network whose embeddings crowd in a narrow cone (dlib's: two strangers score
    0.83) spreads over the sphere once centred, so its cosines weigh like the other members'."""

    def __init__(self, networks: list[nn.Module], specs: list[MemberSpec],
                 centres: list[torch.Tensor | None] | None = None):
        super().__init__()
        if not networks or len(networks) != len(specs):
            raise ModelError("an ensemble needs one spec per network, and at least one")
        total = sum(s.weight for s in specs)
        if total <= 0 or any(s.weight < 0 for s in specs):
            raise ModelError("member weights must be non-negative and not all zero")
        self.specs = [MemberSpec(**{**s.__dict__, "weight": s.weight / total}) for s in specs]
        self.networks = nn.ModuleList(networks)
        self.templates = tuple(dict.fromkeys(s.template for s in self.specs))  # one instance per name
        self._inputs = [self.templates.index(s.template) for s in self.specs]
        self.embedding_dim = sum(s.embedding_dim for s in self.specs)
        for i, centre in enumerate(centres or [None] * len(specs)):
            self.register_buffer(f"centre_{i}", None if centre is None else torch.as_tensor(centre).float())

    def trunk_parts(self) -> list[nn.Module]:
        """A one-member model's trunk, stem first (fine-tuning a pretrained student)."""
        if len(self.networks) != 1 or not hasattr(self.networks[0], "trunk_parts"):
            raise ModelError("only a one-member model of a trainable network can be fine-tuned")
        return self.networks[0].trunk_parts()

    def member_embeddings(self, *faces: torch.Tensor) -> list[torch.Tensor]:
        """Each member's unit embedding (centred where the member has a centre), unweighted."""
        return self._unit(self._raw(faces))

    def _raw(self, faces) -> list[torch.Tensor]:
        """Each member's output before normalisation."""
        if len(faces) != len(self.templates):
            raise ModelError(f"the ensemble takes {len(self.templates)} crops per face "
                             f"({[t.name for t in self.templates]}), got {len(faces)}")
        return [network(faces[k].float()).float() for network, k in zip(self.networks, self._inputs)]

    def _unit(self, raw: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, output in enumerate(raw):
            vector = F.normalize(output, dim=1)
            centre = getattr(self, f"centre_{i}")
            out.append(vector if centre is None else F.normalize(vector - centre, dim=1))
        return out

    def features(self, *faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, (N, members) norms of each member's output before normalisation): a
        margin-trained network's feature norm grows with how recognisable the face is, which the
        quality model reads (`quality.py`)."""
        raw = self._raw(faces)
        parts = [math.sqrt(s.weight) * v for s, v in zip(self.specs, self._unit(raw))]
        return F.normalize(torch.cat(parts, dim=1), dim=1), torch.stack([r.norm(dim=1) for r in raw], dim=1)

    def forward(self, *faces: torch.Tensor) -> torch.Tensor:
        return self.features(*faces)[0]


def combine(member_vectors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """numpy twin of `Ensemble.forward` on members' unit embeddings (weight search, tests)."""
    total = float(sum(weights))
    joined = np.concatenate([math.sqrt(w / total) * v for w, v in zip(weights, member_vectors)], axis=1)
    return joined / np.linalg.norm(joined, axis=1, keepdims=True)


def stored_tensors(state_dict: dict, half: bool) -> dict:
    """A state dict as a checkpoint stores it: on the CPU, floating tensors in fp16 when `half`."""
    return {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
            for k, v in state_dict.items()}


def float_tensors(stored: dict) -> dict:
    """A stored state dict back in fp32, whatever precision it was kept in."""
    return {k: v.float() if v.is_floating_point() else v for k, v in stored.items()}


# ------------------------------------------------------------------ member kinds
class _DlibKind:
    """dlib's ResNet as a torch module; its state dict is stored (fp16 when `half`)."""

    @staticmethod
    def build(stored: dict) -> nn.Module:
        from .dlib_resnet import DlibResNet

        network = DlibResNet()
        network.load_state_dict(float_tensors(stored))
        return network

    @staticmethod
    def stored(network: nn.Module, half: bool) -> dict:
        return stored_tensors(network.state_dict(), half)

    @staticmethod
    def onnx_graph(network: nn.Module, size: int):
        """The member as ONNX: (N, 3, size, size) float 0..255 → its raw embedding."""
        from ..torch_onnx import torch_to_onnx

        return torch_to_onnx(network.eval(), torch.zeros(2, 3, size, size))


class _OnnxGraphKind:
    """A network kept as its ONNX graph (bytes in a uint8 tensor); torch runs onnx2torch's
    conversion of it."""

    @staticmethod
    def build(stored: dict) -> nn.Module:
        return OnnxGraphNetwork(stored["onnx"].numpy().tobytes())

    @staticmethod
    def stored(network: nn.Module, half: bool) -> dict:
        return {"onnx": torch.frombuffer(bytearray(network.graph), dtype=torch.uint8)}

    @staticmethod
    def onnx_graph(network: nn.Module, size: int):
        import onnx

        return onnx.load_from_string(network.graph)


class OnnxGraphNetwork(nn.Module):
    """A network whose stored form is an ONNX graph: `graph` (bytes) is what checkpoints and
    exports carry; `forward` runs the torch module converted from it."""

    def __init__(self, graph: bytes):
        super().__init__()
        from .sface import to_torch

        self.graph = bytes(graph)
        self.net = to_torch(self.graph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


KINDS = {"dlib-resnet-v1": _DlibKind, "sface-2021dec": _OnnxGraphKind}


def kind(arch: str):
    try:
        return KINDS[arch]
    except KeyError:
        raise ModelError(f"unknown member network {arch!r}; known: {sorted(KINDS)}") from None


def stored_state(model: Ensemble, half: bool = False) -> dict:
    """The checkpoint's tensors: each member's stored form under `members.<i>.`, and centres."""
    state = {}
    for i, (spec, network) in enumerate(zip(model.specs, model.networks)):
        for key, value in kind(spec.arch).stored(network, half).items():
            state[f"members.{i}.{key}"] = value
        centre = getattr(model, f"centre_{i}")
        if centre is not None:
            state[f"centres.{i}"] = centre.detach().cpu().clone()
    return state


def ensemble_from_state(specs: list[MemberSpec], state: dict) -> Ensemble:
    networks = []
    for i, spec in enumerate(specs):
        prefix = f"members.{i}."
        stored = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        networks.append(kind(spec.arch).build(stored))
    centres = [state.get(f"centres.{i}") for i in range(len(specs))]
    return Ensemble(networks, specs, centres)
