"""Pairs protocols and dataset listings."""
import pytest

from faceverify.data import load_samples, read_pairs
from faceverify.errors import FaceVerifyError

from .conftest import DATA, DEV_PAIRS, LFW


def test_lfw_dev_pairs():
    pairs = read_pairs(DEV_PAIRS, LFW)
    assert len(pairs) == 1200
    assert sum(p.same for p in pairs) == 600
    assert {p.fold for p in pairs} == {0, 1}
    assert all(p.left.is_file() and p.right.is_file() for p in pairs)
    first = pairs[0]
    assert first.same and first.left.name == "Adam_Scott_0001.jpg" and first.right.name == "Adam_Scott_0002.jpg"


def test_csv_pairs(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("left,right,same,fold\na/1.jpg,a/2.jpg,1,0\na/1.jpg,b/1.jpg,0,1\n")
    pairs = read_pairs(csv, tmp_path)
    assert [p.same for p in pairs] == [True, False] and [p.fold for p in pairs] == [0, 1]
    assert pairs[0].left == tmp_path / "a/1.jpg"
    csv.write_text("left,right,same\na.jpg,b.jpg,maybe\n")
    with pytest.raises(FaceVerifyError, match="'same' must be"):
        read_pairs(csv, tmp_path)


@pytest.mark.parametrize("text,message", [
    ("", "first line"), ("2\t300\nAdam\t1\t2\n", "header promises 1200"),
    ("1\t1\nA\t1\nB\t1\t2\t3\n", "expected 3 or 4 fields")])
def test_malformed_lfw_pairs(tmp_path, text, message):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(FaceVerifyError, match=message):
        read_pairs(path, tmp_path)


def test_manifest_and_folders():
    train = load_samples(DATA / "lfw", split="train")
    assert len(train) == 7977 and all(s.split == "train" for s in train)
    folders = load_samples(DATA / "orl" / "images")
    assert len(folders) == 400 and len({s.identity for s in folders}) == 40
    with pytest.raises(FaceVerifyError, match="no images found in split"):
        load_samples(DATA / "orl", split="dev_eval")
