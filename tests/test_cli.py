"""The command line: exit codes (0 ok, 2 input error with one line on stderr), JSON output."""
import json
import subprocess
import sys

import numpy as np
import pytest

from .conftest import BUNDLED, LFW, ROOT, lfw

SAME = (lfw("Aaron_Peirsol", 1), lfw("Aaron_Peirsol", 2))
OTHER = lfw("Alicia_Silverstone", 1)


def faceverify(*args, check_rc=None):
    done = subprocess.run([sys.executable, "-m", "faceverify.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if check_rc is not None:
        assert done.returncode == check_rc, done.stderr[-2000:]
    return done


def test_verify_same_and_different_with_the_bundled_model():
    same = faceverify("verify", *SAME, "--json", check_rc=0)
    result = json.loads(same.stdout)
    assert result["same"] is True and result["score"] >= result["threshold"]
    assert len(result["faces"]) == 2 and len(result["faces"][0]["landmarks"]) == 5
    different = faceverify("verify", SAME[0], OTHER, check_rc=0)
    assert different.stdout.startswith("different people")


@pytest.mark.parametrize("make_bad,message", [
    (lambda d: d / "missing.jpg", "no such file"),
    (lambda d: (d / "notes.jpg").write_text("hello") and d / "notes.jpg", "not a readable image"),
    (lambda d: (d / "half.jpg").write_bytes(SAME[0].read_bytes()[:3000]) and d / "half.jpg",
     "corrupt or truncated"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, make_bad, message):
    done = faceverify("verify", SAME[0], make_bad(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("faceverify: error:") and message in lines[0]


def test_no_face_and_several_faces(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(tmp_path / "wall.png")
    done = faceverify("verify", SAME[0], tmp_path / "wall.png")
    assert done.returncode == 2 and "no face found" in done.stderr
    both = np.concatenate([np.asarray(Image.open(SAME[0])), np.asarray(Image.open(OTHER))], axis=1)
    Image.fromarray(both).save(tmp_path / "two.jpg")
    done = faceverify("verify", SAME[0], tmp_path / "two.jpg")
    assert done.returncode == 2 and "2 faces found" in done.stderr and "--face-policy" in done.stderr
    faceverify("verify", SAME[0], tmp_path / "two.jpg", "--face-policy", "largest", check_rc=0)


def test_embed_writes_npz_with_status(tmp_path):
    (tmp_path / "bad.jpg").write_text("x")
    out = tmp_path / "e.npz"
    faceverify("embed", *SAME, tmp_path / "bad.jpg", "--out", out, check_rc=0)
    with np.load(out) as z:
        assert z["embeddings"].shape[0] == 3 and list(z["ok"]) == [True, True, False]
        assert np.allclose(np.linalg.norm(z["embeddings"][:2], axis=1), 1, atol=1e-4)
        assert "not a readable image" in z["status"][2]
        assert not z["flip"]  # the bundled model's thresholds are for plain embeddings


def four_pairs(folder):
    """Two genuine and two impostor LFW pairs over two folds, as a CSV pairs file."""
    rows = ["left,right,same,fold",
            "Aaron_Peirsol/Aaron_Peirsol_0001.jpg,Aaron_Peirsol/Aaron_Peirsol_0002.jpg,1,0",
            "Aaron_Peirsol/Aaron_Peirsol_0003.jpg,Aaron_Peirsol/Aaron_Peirsol_0004.jpg,1,1",
            "Aaron_Peirsol/Aaron_Peirsol_0001.jpg,Alicia_Silverstone/Alicia_Silverstone_0001.jpg,0,0",
            "Abdullah_Gul/Abdullah_Gul_0001.jpg,Alicia_Silverstone/Alicia_Silverstone_0002.jpg,0,1"]
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def test_evaluate_csv_pairs(tmp_path):
    faceverify("evaluate", "--pairs", four_pairs(tmp_path), "--root", LFW, "--json",
               tmp_path / "m.json", "--roc", tmp_path / "roc.png", "--quiet", check_rc=0)
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["pairs"] == 4 and report["folds"] == 2 and report["failed_pairs"] == 0
    assert report["auc"] == 1.0
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # a CLI subprocess on the torch path: runs in the full suite
def test_calibrating_with_flip_makes_it_the_models_default(tmp_path):
    from faceverify.models import load_checkpoint

    model = tmp_path / "model.pt"
    model.write_bytes(BUNDLED.read_bytes())  # calibrated without flip
    pairs = four_pairs(tmp_path)
    done = faceverify("calibrate", "--model", model, "--pairs", pairs, "--root", LFW, "--flip", "--quiet",
                      check_rc=0)
    assert "calibrated without flip-averaging: dropped" in done.stderr
    _, metadata = load_checkpoint(model)
    # the bundled model's all-pairs ROC (unflipped) is gone; 2 impostor pairs give no FAR 1e-2 point
    assert metadata.flip and set(metadata.thresholds) == {"best_accuracy", "roc"}
    for flag, flipped in ((None, True), ("--no-flip", False)):
        faceverify("evaluate", "--model", model, "--pairs", pairs, "--root", LFW, "--json", tmp_path / "m.json",
                   "--quiet", *([flag] if flag else []), check_rc=0)
        assert json.loads((tmp_path / "m.json").read_text())["flip"] is flipped, flag


@pytest.mark.slow  # a CLI subprocess on the torch path: runs in the full suite
def test_prepare_lists_failures(tmp_path):
    src = tmp_path / "src"
    (src / "Aaron_Peirsol").mkdir(parents=True)
    for i in (1, 2):
        (src / "Aaron_Peirsol" / f"a{i}.jpg").write_bytes(lfw("Aaron_Peirsol", i).read_bytes())
    (src / "Aaron_Peirsol" / "broken.jpg").write_text("not an image")
    faceverify("prepare", src, tmp_path / "out", check_rc=0)
    manifest = (tmp_path / "out" / "manifest.csv").read_text().splitlines()
    failures = (tmp_path / "out" / "failures.csv").read_text().splitlines()
    assert len(manifest) == 3 and len(failures) == 2 and "not a readable image" in failures[1]
    done = faceverify("prepare", src, tmp_path / "out", check_rc=0)  # resumable: nothing to redo
    assert "already done 3" in done.stderr


@pytest.mark.slow  # a CLI subprocess on the torch path: runs in the full suite
def test_prepare_never_writes_over_its_sources(tmp_path):
    """Crops land under the destination even when a manifest lists absolute paths, and a
    destination that would replace the photos themselves is refused."""
    src = tmp_path / "src" / "Aaron_Peirsol"
    src.mkdir(parents=True)
    originals = {}
    for i in (1, 2):
        originals[src / f"a{i}.jpg"] = lfw("Aaron_Peirsol", i).read_bytes()
        (src / f"a{i}.jpg").write_bytes(originals[src / f"a{i}.jpg"])
    manifest = tmp_path / "absolute.csv"
    manifest.write_text("path,identity,split\n" + "".join(f"{p},Aaron_Peirsol,train\n" for p in originals))
    faceverify("prepare", manifest, tmp_path / "out", check_rc=0)
    crops = sorted((tmp_path / "out").rglob("*.jpg"))
    assert len(crops) == 2 and all(c.is_relative_to(tmp_path / "out") for c in crops)
    nested = faceverify("prepare", tmp_path / "src", tmp_path / "src" / "aligned")
    assert nested.returncode != 0 and "inside the source folder" in nested.stderr
    (tmp_path / "src" / "manifest.csv").write_text("path,identity\nAaron_Peirsol/a1.jpg,Aaron_Peirsol\n")
    in_place = faceverify("prepare", tmp_path / "src" / "manifest.csv", tmp_path / "src")
    assert in_place.returncode != 0 and "would overwrite source images" in in_place.stderr
    assert all(path.read_bytes() == data for path, data in originals.items())


def test_unknown_model_file(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"garbage")
    done = faceverify("verify", *SAME, "--model", tmp_path / "m.pt")
    assert done.returncode == 2 and "not a faceverify checkpoint" in done.stderr


def one_line_error(done, message: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("faceverify: error:") and message in lines[0], lines


def test_gallery_verbs_check_their_options_and_report(tmp_path):
    gallery = tmp_path / "g.db"
    model = ("--gallery", gallery, "--model", ROOT / "weights" / "faceverify-default.onnx")
    faceverify("enroll", "--name", "Aaron", *SAME, *model, check_rc=0)
    one_line_error(faceverify("gallery", "rename", "--name", "Aaron", *model), "rename needs --new-name")
    one_line_error(faceverify("gallery", "show", *model), "show needs --name")
    one_line_error(faceverify("gallery", "remove-image", *model), "remove-image needs --image-id")
    one_line_error(faceverify("gallery", "rename", "--name", "Aaron", "--new-name", " ", *model), "empty name")
    done = faceverify("gallery", "rename", "--name", "Aaron", "--new-name", "Aaron Peirsol", *model, check_rc=0)
    assert "renamed 'Aaron' -> 'Aaron Peirsol'" in done.stderr
    faceverify("gallery", "export", "--file", tmp_path / "g.npz", *model, check_rc=0)
    # import may start a new gallery file
    done = faceverify("gallery", "import", "--file", tmp_path / "g.npz", "--gallery", tmp_path / "new.db",
                      "--model", ROOT / "weights" / "faceverify-default.onnx", check_rc=0)
    assert "imported 2 images" in done.stderr
    done = faceverify("gallery", "remove", "--name", "Aaron Peirsol", *model, check_rc=0)
    assert "removed 'Aaron Peirsol'" in done.stderr
    assert faceverify("gallery", "list", *model, check_rc=0).stdout == ""


def test_serve_is_registered_and_help_needs_no_ui():
    done = faceverify("--help", check_rc=0)
    assert "serve" in done.stdout and "api" in done.stdout
    loaded = subprocess.run([sys.executable, "-c", "import sys; from faceverify.cli import build_parser; "
                             "build_parser(); print(sorted(m for m in ('gradio', 'torch', 'fastapi', 'uvicorn') "
                             "if m in sys.modules))"],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.slow  # a dozen CLI subprocesses: runs in the full suite
def test_keys_users_and_the_audit_trail_from_the_command_line(tmp_path):
    model = ("--gallery", tmp_path / "g.db", "--model", ROOT / "weights" / "faceverify-default.onnx")
    added = faceverify("keys", "add", "reception", "--scope", "verify", "--scope", "identify", *model, check_rc=0)
    token = added.stdout.strip()
    assert token.startswith("fvk_") and "shown this once" in added.stderr  # a new gallery, made for the key
    one_line_error(faceverify("keys", "add", "reception", "--scope", "verify", *model), "is in force")
    one_line_error(faceverify("keys", "add", "nobody", *model), "none given")
    listed = faceverify("keys", "list", "--json", *model, check_rc=0).stdout
    assert json.loads(listed)[0]["scopes"] == "identify verify" and token.split("_")[2] not in listed
    assert "hash" not in listed
    faceverify("keys", "revoke", "reception", *model, check_rc=0)
    one_line_error(faceverify("keys", "revoke", "reception", *model), "no key in force")
    faceverify("enroll", "--name", "Aaron", *SAME, *model, check_rc=0)
    lines = [json.loads(line) for line in faceverify("gallery", "audit", "--json", *model, check_rc=0).stdout.splitlines()]
    assert [(x["action"], x["outcome"].split(":")[0]) for x in lines] == [
        ("key-add", "added"), ("key-add", "refused"), ("key-revoke", "revoked"), ("key-revoke", "refused"),
        ("enrol", "added 2 photo(s)")]
    assert all(x["actor"].startswith("local") for x in lines)
    assert faceverify("gallery", "audit", "--person", "Aaron", *model, check_rc=0).stdout.count("\n") == 1
    assert faceverify("gallery", "audit", "--since", "2999-01-01", *model, check_rc=0).stdout == ""
    assert faceverify("gallery", "audit", "--since", "1h", *model, check_rc=0).stdout.count("\n") == 5
    one_line_error(faceverify("gallery", "audit", "--since", "yesterday", *model), "--since")

    users = ("--auth-file", tmp_path / "users.json")
    done = subprocess.run([sys.executable, "-m", "faceverify.cli", "users", "add", "alice", *map(str, users),
                           "--password-stdin"], input="short\n", cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "at least" in done.stderr
    subprocess.run([sys.executable, "-m", "faceverify.cli", "users", "add", "alice", *map(str, users),
                    "--password-stdin"], input="a long enough secret\n", cwd=ROOT, check=True, capture_output=True, text=True)
    assert faceverify("users", "list", *users, check_rc=0).stdout.split() == ["alice"]
    assert "a long enough secret" not in (tmp_path / "users.json").read_text()
    faceverify("users", "remove", "alice", *users, check_rc=0)
    one_line_error(faceverify("users", "remove", "alice", *users), "no user named")
