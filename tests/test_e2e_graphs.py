"""The graph builders of the end-to-end ONNX model, each against the library function it mirrors,
run by onnxruntime on landmarks RetinaFace found in real photos."""
import numpy as np
import pytest

from .conftest import lfw


@pytest.fixture(scope="module")
def faces():
    """(photo, five landmarks) of 24 LFW photos, as the bundled model's detector finds them."""
    from faceverify import load_rgb
    from faceverify.detect.registry import create_detector

    detector = create_detector("retinaface", torch_free=True)
    people = ("Aaron_Peirsol", "Abdullah_Gul", "Hugo_Chavez", "Colin_Powell", "Serena_Williams", "Tony_Blair")
    photos = [load_rgb(lfw(person, i)) for person in people for i in (1, 2, 3, 4)]
    return [(rgb, found[0].landmarks.astype(np.float32)) for rgb, found in zip(photos, detector.detect(photos))]


def lmeds_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Brute force of OpenCV's LMedS rule: every two-point similarity, the least median of squared
    errors, its inliers, then least squares over them (np.linalg.lstsq)."""
    import itertools

    best = None
    for i, j in itertools.combinations(range(5), 2):
        z = complex(*(dst[j] - dst[i])) / complex(*(src[j] - src[i]))
        t = complex(*dst[i]) - z * complex(*src[i])
        errors = np.array([abs(z * complex(*s) + t - complex(*d)) ** 2 for s, d in zip(src, dst)])
        if best is None or np.median(errors) < best[0]:
            best = (np.median(errors), errors)
    bound = max(2.5 * 1.4826 * (1 + 5 / 3) * np.sqrt(best[0]), 0.001) ** 2
    rows, targets = [], []
    for (x, y), (u, v) in ((s, d) for s, d, e in zip(src, dst, best[1]) if e <= bound):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        targets += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows, np.float64), np.array(targets, np.float64), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def warp_session(template):
    import onnxruntime as ort

    from faceverify.e2e.warp import warp_model

    return ort.InferenceSession(warp_model(template).SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("template_name", ["arcface-112", "dlib-150"])
def test_warp_graph_aligns_as_the_library_does(faces, template_name):
    from faceverify.align import TEMPLATES, align_face, estimate_transform

    template = TEMPLATES[template_name]
    session = warp_session(template)
    for rgb, landmarks in faces:
        crop, matrix = session.run(None, {"image": rgb, "landmarks": landmarks})
        expected = estimate_transform(landmarks, template.points)
        assert np.abs(matrix - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
        # cv2 interpolates with 5-bit fixed-point weights: one grey level apart at most
        assert np.abs(crop.astype(int) - align_face(rgb, landmarks, template).astype(int)).max() <= 1


def test_warp_graph_leaves_out_a_stray_landmark_as_lmeds_does(faces):
    """One landmark thrown 15 px off: least squares over all five would follow it; the graph, the
    brute-force LMedS rule and OpenCV all fit the other four."""
    from faceverify.align import ARCFACE_112, estimate_transform

    session = warp_session(ARCFACE_112)
    for (rgb, landmarks), point in zip(faces[:10], range(10)):
        moved = landmarks.copy()
        moved[point % 5] += (15.0, -9.0)
        _, matrix = session.run(None, {"image": rgb, "landmarks": moved})
        np.testing.assert_allclose(matrix, lmeds_similarity(moved.astype(np.float64), ARCFACE_112.points), atol=2e-3)
        np.testing.assert_allclose(matrix, estimate_transform(moved, ARCFACE_112.points), atol=2e-3)


def test_warp_graph_replicates_borders_for_faces_at_the_edge(faces):
    import cv2

    from faceverify.align import ARCFACE_112

    rgb, landmarks = faces[0]
    corner = np.ascontiguousarray(rgb[: rgb.shape[0] // 2 + 20, : rgb.shape[1] // 2 + 20])  # the face half cut off
    session = warp_session(ARCFACE_112)
    crop, matrix = session.run(None, {"image": corner, "landmarks": landmarks})
    reference = cv2.warpAffine(corner, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert np.abs(crop.astype(int) - reference.astype(int)).max() <= 1


def test_anchor_graph_is_the_librarys_priors_at_any_size():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from faceverify.detect.retinaface import priors
    from faceverify.e2e.detection import anchor_nodes
    from faceverify.e2e.warp import OPSET, Nodes

    g = Nodes("test")
    g.nodes.append(helper.make_node("Identity", [anchor_nodes(g, "height", "width")], ["anchors"]))
    sides = [helper.make_tensor_value_info(n, TensorProto.INT64, [1]) for n in ("height", "width")]
    graph = helper.make_graph(g.nodes, "anchors", sides, [helper.make_tensor_value_info("anchors", TensorProto.FLOAT, [None, 4])],
                              g.initializers)
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for height, width in ((250, 250), (333, 517), (640, 480), (1, 1), (31, 97), (1280, 853)):
        (anchors,) = session.run(None, {"height": np.array([height]), "width": np.array([width])})
        np.testing.assert_array_equal(anchors, priors(height, width).astype(np.float32))


def test_decoding_graph_keeps_the_faces_the_library_keeps():
    """The same boxes, scores and landmarks, in the same order, from the network's outputs for
    single photos and for pairs of photos side by side (two faces, and the bystanders)."""
    import onnxruntime as ort

    from faceverify import load_rgb
    from faceverify.detect.retinaface import RetinaFace
    from faceverify.e2e.detection import decoding_model

    network = RetinaFace()
    photos = [load_rgb(lfw(person, i)) for person in ("Colin_Powell", "Tony_Blair", "Serena_Williams") for i in (1, 2, 3)]
    pairs = [np.concatenate([a, b], axis=1) for a, b in zip(photos[:-1], photos[1:])]
    found = 0
    for batch in (photos, pairs):
        height, width = batch[0].shape[:2]
        session = ort.InferenceSession(decoding_model(height, width).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        for image in batch:
            loc, conf, landmarks = network.network_outputs(image[None])
            boxes, scores, points, count = session.run(None, {"loc": loc, "conf": conf, "landmarks": landmarks})
            expected_boxes, expected_scores, expected_points = network._detections(image[None])[0]
            assert count[0] == len(expected_boxes) == len(boxes)
            np.testing.assert_allclose(boxes, expected_boxes, atol=1e-3)
            np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
            np.testing.assert_allclose(points, expected_points, atol=1e-3)
            found += int(count[0])
    assert found >= len(photos) + 2 * len(pairs)


RUN_WITH_ONNXRUNTIME_ONLY = """
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
out = []
for path in sys.argv[2:]:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    embedding, found, aligned, threshold = session.run(["embedding", "faces_found", "aligned", "threshold"],
                                                       {"image": rgb, "face_policy": np.array([1], np.int64)})
    out.append({"embedding": embedding.tolist(), "found": int(found[0]), "aligned": list(aligned.shape),
                "threshold": float(threshold)})
assert not any(name.startswith("faceverify") for name in sys.modules)
print(json.dumps(out))
"""

PEOPLE = ("Aaron_Peirsol", "Abdullah_Gul", "Hugo_Chavez", "Colin_Powell", "Serena_Williams", "Tony_Blair")


@pytest.fixture(scope="module")
def graphs(end_to_end_onnx, tmp_path_factory) -> dict:
    """The end-to-end graph's file per weight precision."""
    from faceverify.e2e.model import export_end_to_end

    fp16 = tmp_path_factory.mktemp("fp16") / "e2e-fp16.onnx"
    assert export_end_to_end(fp16, precision="fp16")["end_to_end"]["precision"] == "fp16"
    return {"fp32": end_to_end_onnx, "fp16": fp16}


@pytest.mark.slow  # runs both files in a subprocess
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_end_to_end_graph_runs_on_onnxruntime_alone_and_agrees_with_the_library(precision, graphs):
    import json
    import subprocess
    import sys

    from faceverify import Verifier

    from .conftest import BUNDLED_ONNX

    path = graphs[precision]
    assert path.stat().st_size <= 25e6 and graphs["fp16"].stat().st_size < graphs["fp32"].stat().st_size
    photos = [lfw(person, i) for person in PEOPLE for i in (1, 2, 3, 4)]
    done = subprocess.run([sys.executable, "-c", RUN_WITH_ONNXRUNTIME_ONLY, str(path), *map(str, photos)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    reference = Verifier(BUNDLED_ONNX, face_policy="central")
    cosines = [float(np.dot(r["embedding"], e)) for r, e in zip(results, reference.embed(photos))]
    assert all(r["found"] >= 1 for r in results) and min(cosines) > 0.99 and np.median(cosines) > 0.999, cosines
    size = reference.metadata.templates[0].size
    assert all(r["aligned"] == [size, size, 3] and r["threshold"] == pytest.approx(reference.threshold()) for r in results)


def test_detection_graph_detects_large_faces_again_as_the_library_does():
    """RetinaFace splits faces above 256 px into several boxes and its landmarks drift: the graph
    detects them again on a shrunk copy, as `RetinaFace._large_faces_redetected` does (the copy is
    shrunk from float pixels there, from uint8 here: boxes within 2 % of the face)."""
    import cv2
    import onnx
    import onnxruntime as ort

    from faceverify import load_rgb
    from faceverify.detect.retinaface import MEAN_BGR, RetinaFace
    from faceverify.e2e.detection import detection_model

    network = RetinaFace()
    session = ort.InferenceSession(detection_model(onnx.load(str(network.path))).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for person in PEOPLE[3:]:
        image = cv2.resize(load_rgb(lfw(person, 1)), (1000, 1000), interpolation=cv2.INTER_CUBIC)
        first = network._detections(image[None])[0]
        expected_boxes, expected_scores, expected_points = network._large_faces_redetected(image, first)
        centred = (image[..., ::-1] - MEAN_BGR).transpose(2, 0, 1)[None].astype(np.float32)
        boxes, scores, points = session.run(None, {"input": centred})
        side = expected_boxes[0, 2] - expected_boxes[0, 0]
        assert len(first[0]) != len(expected_boxes) or not np.allclose(first[0], expected_boxes)  # a second pass ran
        assert len(boxes) == len(expected_boxes) and side > 256
        np.testing.assert_allclose(boxes, expected_boxes, atol=0.02 * side)
        np.testing.assert_allclose(points, expected_points, atol=0.02 * side)
        np.testing.assert_allclose(scores, expected_scores, atol=0.01)


@pytest.mark.slow  # 1500-px photos through both files
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_end_to_end_graph_detects_large_faces_again_on_a_shrunk_copy(precision, graphs):
    """Faces above 256 px are split into several boxes by RetinaFace's anchors, their landmarks
    drift: the graph detects them again on a shrunk copy, as the library does (without the second
    pass, a face filling a 1500-px photo came out at cosine 0.94 to the library's)."""
    import cv2
    import onnxruntime as ort

    from faceverify import Verifier, load_rgb

    from .conftest import BUNDLED_ONNX

    session = ort.InferenceSession(str(graphs[precision]), providers=["CPUExecutionProvider"])
    reference = Verifier(BUNDLED_ONNX, face_policy="central")
    for person in PEOPLE[:3]:
        photo = load_rgb(lfw(person, 1))
        for size in (None, 1500):
            if size:
                photo = cv2.resize(photo, (size, size), interpolation=cv2.INTER_CUBIC)
            embedding, box, found, aligned = session.run(["embedding", "box", "faces_found", "aligned"],
                                                         {"image": photo, "face_policy": np.array([1], np.int64)})
            (face,) = reference.analyze([photo])
            assert found[0] == 1 and (min(box[2] - box[0], box[3] - box[1]) > 256) == bool(size)
            np.testing.assert_allclose(box, face.face.box, atol=0.03 * (box[2] - box[0]))
            assert float(np.dot(embedding, face.embedding)) > 0.99
            if not size:  # `aligned`: the library's first crop (the same landmarks: within a grey level)
                assert aligned.shape == face.crop.shape and np.abs(aligned.astype(int) - face.crop).mean() < 1


@pytest.mark.slow
def test_end_to_end_graph_answers_bad_photos_with_no_face_not_a_crash(end_to_end_onnx):
    import onnxruntime as ort

    session = ort.InferenceSession(str(end_to_end_onnx), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for photo in (np.full((300, 400, 3), 128, np.uint8), np.zeros((1, 1, 3), np.uint8),
                  rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)):
        embedding, found, aligned = session.run(["embedding", "faces_found", "aligned"],
                                                {"image": photo, "face_policy": np.array([0], np.int64)})
        assert found[0] == 0 and not embedding.any() and np.isfinite(embedding).all() and not aligned.any()


@pytest.mark.parametrize("axis, block", [(None, 0), (0, 0), (1, 0), (1, 4), (0, 3)])
def test_dequantize_as_arithmetic_equals_dequantize_linear(axis, block):
    """Per-tensor, per-axis and blocked int8 weights: onnxruntime's DequantizeLinear and its
    rewrite as Cast, Sub and Mul give the same float32 numbers, bit for bit."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from faceverify.e2e.warp import OPSET
    from faceverify.onnx_graph import dequantize_as_arithmetic

    rng = np.random.default_rng(block)
    weights = rng.integers(-128, 128, (6, 10), dtype=np.int8)
    if axis is None:
        shape, attributes = (), {}
    elif block:  # ceil(side / block) blocks along the axis, the last one shorter
        shape = tuple(-(-side // block) if i == axis else side for i, side in enumerate(weights.shape))
        attributes = {"axis": axis, "block_size": block}
    else:
        shape, attributes = (weights.shape[axis],), {"axis": axis}
    scale = rng.uniform(1e-3, 0.1, shape).astype(np.float32)
    zero = rng.integers(-5, 5, shape, dtype=np.int8)
    inputs = [numpy_helper.from_array(v, n) for v, n in ((weights, "w"), (scale, "s"), (zero, "z"))]
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["w", "s", "z"], ["deq"], **attributes),
                               helper.make_node("Add", ["deq", "x"], ["y"])], "dq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 10])], inputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    x = np.zeros((6, 10), np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rewritten = dequantize_as_arithmetic(model)
    assert "DequantizeLinear" not in {n.op_type for n in rewritten.graph.node}
    found = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(found, expected)


@pytest.mark.slow  # two CLI processes
def test_command_line_exports_the_graph_in_either_precision_and_refuses_mixed_modes(tmp_path):
    import json
    import subprocess
    import sys

    import onnx

    from .conftest import ROOT

    def export(*args):
        return subprocess.run([sys.executable, "-m", "faceverify.cli", "export", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    done = export("--end-to-end", tmp_path / "e2e.onnx", "--precision", "fp16")
    assert done.returncode == 0, done.stderr[-2000:]
    metadata = json.loads(onnx.load(str(tmp_path / "e2e.onnx")).metadata_props[0].value)
    assert metadata["end_to_end"]["precision"] == "fp16" and "(fp16)" in done.stderr
    for args in (("--end-to-end", tmp_path / "a.onnx", "--web", tmp_path / "site"),
                 (tmp_path / "model.pt", "--end-to-end", tmp_path / "b.onnx")):
        refused = export(*args)
        assert refused.returncode == 2 and "error: " in refused.stderr.strip().splitlines()[-1], refused.stderr
        assert "Traceback" not in refused.stderr
    assert not any((tmp_path / name).exists() for name in ("a.onnx", "b.onnx", "site"))
