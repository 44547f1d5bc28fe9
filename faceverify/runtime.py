"""Torch-free inference: onnxruntime sessions with an explicit, reported execution provider.

Imports only numpy and onnxruntime (plus OpenCV/Pillow through the detector), so a service can
ship `faceverify[runtime]` without torch. CUDA is used when onnxruntime-gpu and a GPU are present,
otherwise CPU; which one runs is logged and exposed as `.providers`, and a requested provider that
could not be used is a loud warning, never a silent switch.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import ModelError
from .metadata import ModelMetadata

log = logging.getLogger(__name__)

METADATA_KEY = "faceverify"
#: the ensemble graph's second output: each member's feature norm before normalisation
MEMBER_NORMS = "member_norms"


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def create_session(path: str | Path, providers: list[str] | None = None, threads: int = 0,
                   fold_dequantize: bool = False):
    """An `InferenceSession` on the best available provider (or the ones asked for).
    `fold_dequantize`: weights stored quantised (int8 + DequantizeLinear, as SFace ships) are
    expanded to float once when the session is built, not at every run, and fused with the
    batch-norms after them; the arithmetic is the same float32 either way."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such ONNX file")
    wanted = list(providers) if providers else default_providers()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle worker threads sleep instead of spinning: several sessions (three MTCNN stages and the
    # embedder) and the decoding threads share the cores, and spinning ones starve the busy ones
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if fold_dequantize:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    try:
        session = ort.InferenceSession(str(path), options, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise ModelError(f"{path}: cannot load ONNX model ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:200]})") from None
    active = session.get_providers()
    if wanted[0] not in active:
        log.warning("%s: %s requested but unavailable; running on %s", path.name, wanted[0], active[0])
    log.info("%s runs on %s", path.name, active[0])
    return session


def check_crops(crops, templates) -> None:
    """One (N, size, size, 3) array per template, in the model's order, or `ModelError`: crops
    aligned to another template would give wrong embeddings without any error."""
    shapes = [tuple(np.shape(c)[1:]) for c in crops]
    wanted = [(t.size, t.size, 3) for t in templates]
    if shapes != wanted or len({len(c) for c in crops}) > 1:
        raise ModelError(f"the model takes crops aligned to {[t.name for t in templates]} "
                         f"(shapes {wanted}), got {shapes}")


class OnnxEmbedder:
    """The exported embedder: uint8 RGB crops, one (N, size, size, 3) array per template of the
    model (the graph's inputs, in order) → (N, dim) float32, like `TorchEmbedder`
    (`interfaces.FaceEmbedder`). `threads`: onnxruntime threads (0: one per core)."""

    torch_free = True

    def __init__(self, path: str | Path, providers: list[str] | None = None, batch_size: int = 64,
                 threads: int = 0):
        self.path = Path(path)
        self.session = create_session(self.path, providers, threads, fold_dequantize=True)
        self.providers = self.session.get_providers()
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_json(props.get(METADATA_KEY, "{}"), str(path))
        self.inputs = self.session.get_inputs()
        if len(self.inputs) != len(self.metadata.templates):
            raise ModelError(f"{path}: {len(self.inputs)} graph inputs for "
                             f"{len(self.metadata.templates)} alignment templates")
        self.batch_size = batch_size
        self._dtypes = [np.uint8 if i.type == "tensor(uint8)" else np.float32 for i in self.inputs]
        names = [o.name for o in self.session.get_outputs()]
        self._outputs = [names[0]] + ([MEMBER_NORMS] if MEMBER_NORMS in names else [])

    def __call__(self, *crops: np.ndarray) -> np.ndarray:
        return self.features(*crops)[0]

    def features(self, *crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(embeddings, each member's raw feature norm (N, members) when the graph outputs them
        (`MEMBER_NORMS`), else None)."""
        check_crops(crops, self.metadata.templates)
        count = len(crops[0])
        runs = [self.session.run(self._outputs, {i.name: c[start:start + self.batch_size].astype(t, copy=False)
                                                 for i, c, t in zip(self.inputs, crops, self._dtypes)})
                for start in range(0, count, self.batch_size)]
        if not runs:
            return np.zeros((0, self.metadata.embedding_dim), np.float32), None
        outputs = [np.concatenate(parts).astype(np.float32) for parts in zip(*runs)]
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)
