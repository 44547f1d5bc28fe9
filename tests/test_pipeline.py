"""Folders at speed: batched ONNX MTCNN gives each image the faces it gets alone; decoding runs
ahead in bounded memory and in order; the streamed analysis equals one-by-one verification."""
import subprocess
import sys

import numpy as np
import pytest

from faceverify.detect import OnnxMTCNN
from faceverify.errors import FaceVerifyError, InvalidImageError
from faceverify.images import load_rgb
from faceverify.pipeline import decode_ahead, pixel_batches, run_ahead

from .conftest import BUNDLED_ONNX, LFW, ROOT

PHOTOS = sorted(LFW.glob("*/*.jpg"))[::211][:12]


def test_batched_onnx_mtcnn_equals_one_image_at_a_time():
    images = [load_rgb(p) for p in PHOTOS]
    images += [np.concatenate(images[:2], axis=1),  # another size, two faces
               np.zeros((200, 300, 3), np.uint8)]  # no face
    detector = OnnxMTCNN(workers=3)  # three shards of 5, 5 and 4 images, detected concurrently
    together = detector.detect(images)
    assert detector.detect([]) == []
    alone = [detector.detect([image])[0] for image in images]
    assert [len(f) for f in together] == [len(f) for f in alone] and len(together[-2]) == 2
    assert together[-1] == []
    for mine, single in zip(together, alone):
        for a, b in zip(mine, single):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)


@pytest.mark.data_free
def test_decode_ahead_keeps_order_and_errors_and_stays_bounded(tmp_path):
    (tmp_path / "bad.jpg").write_text("not an image")
    inputs = [np.full((4, 4, 3), i, np.uint8) for i in range(50)]
    inputs[7] = tmp_path / "bad.jpg"
    consumed = []

    def source():
        for i, item in enumerate(inputs):
            consumed.append(i)
            yield item

    for yielded, decoded in enumerate(decode_ahead(source(), workers=2, lookahead=5)):
        assert len(consumed) <= yielded + 6  # never more than the lookahead read ahead
        if yielded == 7:
            assert isinstance(decoded, InvalidImageError) and "bad.jpg" in str(decoded)
        else:
            assert decoded[0, 0, 0] == yielded
    assert len(consumed) == 50


@pytest.mark.data_free
def test_run_ahead_keeps_order_stays_one_ahead_and_raises():
    produced = []

    def batches():
        for k in range(5):
            produced.append(k)
            yield k
        raise InvalidImageError("broken at the end")

    consumed = []
    with pytest.raises(InvalidImageError, match="broken at the end"):
        for item in run_ahead(batches()):
            assert len(produced) <= item + 2  # the current item and at most one ahead
            consumed.append(item)
    assert consumed == [0, 1, 2, 3, 4]

    closed = []

    def endless():
        try:
            yield from range(10 ** 9)
        finally:
            closed.append(True)

    for item in run_ahead(endless()):
        if item == 2:
            break
    assert closed == [True]  # a consumer that stops early leaves nothing running


@pytest.mark.data_free
def test_pixel_batches_respect_both_limits():
    rng = np.random.default_rng(0)
    items = [np.zeros((int(rng.integers(1, 40)), 10, 3), np.uint8) if rng.random() > 0.1
             else FaceVerifyError("x") for _ in range(200)]
    batches = list(pixel_batches(items, max_images=7, max_pixels=1000))
    assert [x for batch in batches for x in batch] == items  # everything, in order
    for batch in batches:
        pixels = sum(x.shape[0] * x.shape[1] for x in batch if isinstance(x, np.ndarray))
        assert len(batch) <= 7 and (pixels <= 1000 or len(batch) == 1)
    # greedy: a batch closes only when the next item would break a limit
    for batch, following in zip(batches, batches[1:]):
        nxt = following[0]
        size = nxt.shape[0] * nxt.shape[1] if isinstance(nxt, np.ndarray) else 0
        pixels = sum(x.shape[0] * x.shape[1] for x in batch if isinstance(x, np.ndarray))
        assert len(batch) == 7 or pixels + size > 1000


def test_streamed_folder_equals_one_by_one(tmp_path):
    from faceverify import Verifier

    verifier = Verifier.from_onnx(BUNDLED_ONNX)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 truncated")
    inputs = [*PHOTOS[:5], tmp_path / "corrupt.jpg", *PHOTOS[5:8]]
    streamed = list(verifier.analyze_stream(inputs, workers=2))
    assert isinstance(streamed[5], InvalidImageError)
    for path, result in zip(inputs, streamed):
        (alone,) = verifier.analyze([path])
        if isinstance(alone, FaceVerifyError):  # the corrupt file, a photo of several people
            assert type(result) is type(alone) and str(result) == str(alone)
        else:
            np.testing.assert_allclose(result.embedding, alone.embedding, atol=1e-5)
    assert sum(not isinstance(r, FaceVerifyError) for r in streamed) >= 6

    out = tmp_path / "e.npz"
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in PHOTOS[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    done = subprocess.run([sys.executable, "-m", "faceverify.cli", "embed", str(folder), "--out", str(out),
                           "--model", str(BUNDLED_ONNX)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1000:]
    saved = np.load(out)
    assert len(saved["paths"]) == 3 and saved["ok"].sum() == sum(
        not isinstance(r, FaceVerifyError) for r in streamed[:3])
    if saved["ok"][0]:
        np.testing.assert_allclose(saved["embeddings"][0], streamed[0].embedding, atol=1e-5)
