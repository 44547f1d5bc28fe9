"""Image input: every odd mode converts to RGB uint8; bad input gives a typed, readable error."""
import io

import numpy as np
import pytest
from PIL import Image

from faceverify.errors import ImageTooLargeError, InvalidImageError
from faceverify.images import load_rgb

from .conftest import lfw


@pytest.fixture(scope="module")
def photo():
    return Image.open(lfw("Aaron_Peirsol", 1)).convert("RGB")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def close_to(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    return float(np.abs(a.astype(float) - b.astype(float)).mean()) < tol


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_odd_modes_become_rgb(photo, mode, tmp_path):
    if mode == "I;16":  # 16-bit grayscale PNG: values spread over 0..65535
        grey = np.asarray(photo.convert("L"), np.uint16) * 257
        image = Image.fromarray(grey)
    elif mode == "P":
        image = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        image = photo.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = tmp_path / f"face.{fmt.lower()}"
    path.write_bytes(encode(image, fmt))
    out = load_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (250, 250, 3)
    if mode in ("L", "I;16", "LA"):
        assert close_to(out[:, :, 0], np.asarray(photo.convert("L")), 2.0)
    elif mode != "1":
        assert close_to(out, np.asarray(photo), 12.0)


def test_rgba_transparency_composites_on_white(photo):
    rgba = photo.convert("RGBA")
    rgba.putalpha(0)
    assert (load_rgb(rgba) == 255).all()


def test_exif_orientation_is_applied(photo, tmp_path):
    rotated = photo.transpose(Image.Transpose.ROTATE_90)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...with "rotate 90° clockwise to display"
    path = tmp_path / "sideways.jpg"
    rotated.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    assert close_to(load_rgb(path), np.asarray(photo), 6.0)


@pytest.mark.parametrize("array,expected", [
    (np.full((4, 5), 200, np.uint8), 200),
    (np.full((4, 5, 3), 0.5, np.float32), 128),
    (np.full((4, 5, 3), 51400, np.uint16), 200),
    (np.full((4, 5, 1), 7, np.uint8), 7),
])
def test_numpy_inputs(array, expected):
    out = load_rgb(array)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and (out == expected).all()


def test_bytes_and_pil_inputs(photo):
    assert np.array_equal(load_rgb(photo), load_rgb(encode(photo, "PNG")))


@pytest.mark.parametrize("payload,message", [
    (b"", "not a readable image"),
    (b"definitely not an image", "not a readable image"),
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "not a readable image"),
])
def test_non_images_are_rejected(payload, message, tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(payload)
    with pytest.raises(InvalidImageError, match=message):
        load_rgb(path)


def test_truncated_jpeg(tmp_path):
    data = lfw("Aaron_Peirsol", 1).read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError, match="corrupt or truncated"):
        load_rgb(path)


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(InvalidImageError, match="no such file"):
        load_rgb(tmp_path / "missing.jpg")
    with pytest.raises(InvalidImageError, match="unsupported image input"):
        load_rgb(42)
    with pytest.raises(InvalidImageError, match="not an HxW"):
        load_rgb(np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(InvalidImageError, match="NaN"):
        load_rgb(np.full((2, 2), np.nan))


def test_huge_image_refused_before_decoding(tmp_path):
    # a 12000 x 8000 PNG compresses to a few hundred kB: a decompression bomb in miniature
    huge = Image.new("L", (12000, 8000))
    path = tmp_path / "huge.png"
    huge.save(path, optimize=False)
    with pytest.raises(ImageTooLargeError, match="96.0 MP, over the 40 MP limit"):
        load_rgb(path)
    assert load_rgb(path, max_pixels=100_000_000).shape == (8000, 12000, 3)
