"""Distillation: the loss terms against brute force, the dlib teacher pass on real photos (resumes
after SIGKILL), the MobileFaceNet teacher on real photos (where its files are), and a student that learns from real teacher embeddings (its distillation loss
falls; a killed distillation run resumes)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceverify.data import load_samples
from faceverify.detect import select_face
from faceverify.images import load_rgb
from faceverify.train import Trainer, load_config
from faceverify.train.distill import DistillConfig, Distillation, centred, cosine_term, relation_term
from faceverify.train.teachers import load_teacher_parts

from .conftest import ROOT, celeba_subset, lfw

TEACHER_SCRIPT = str(ROOT / "training" / "teacher_embed.py")


@pytest.mark.data_free
def test_cosine_term_is_one_minus_mean_cosine():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    expected = np.mean([1 - x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, b)])
    assert float(cosine_term(torch.tensor(a), torch.tensor(b))) == pytest.approx(expected, abs=1e-9)


@pytest.mark.data_free
def test_an_anchor_holds_embeddings_where_the_base_model_put_them():
    """`anchor`: no projector, no fitting: the term is 1 − cos(student, base) itself."""
    rng = np.random.default_rng(2)
    student, base = torch.tensor(rng.normal(size=(6, 4))), torch.tensor(rng.normal(size=(6, 4)))
    anchor = Distillation(4, {"base": 4}, DistillConfig(teachers=["base"], anchor=True))
    assert anchor.fit_projectors(student, {"base": base}) == {}
    loss, stats = anchor(student, {"base": base})
    assert float(loss) == pytest.approx(float(cosine_term(student, base)), abs=1e-6)  # float32 inside
    assert float(anchor(base, {"base": base})[0]) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="student's 4-d space"):
        Distillation(4, {"base": 8}, DistillConfig(teachers=["base"], anchor=True))


@pytest.mark.data_free
def test_relation_term_is_one_minus_correlation_of_pairwise_cosines():
    rng = np.random.default_rng(2)
    student, teacher = rng.normal(size=(9, 6)), rng.normal(size=(9, 4))

    def cosines(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return [(x @ x.T)[i, j] for i in range(len(x)) for j in range(len(x)) if i != j]

    expected = 1 - np.corrcoef(cosines(student), cosines(teacher))[0, 1]
    got = float(relation_term(torch.tensor(student), torch.tensor(teacher)))
    assert got == pytest.approx(expected, abs=1e-9)
    # invariant to the teacher's cosine scale: only the relative geometry is taught
    assert float(relation_term(torch.tensor(teacher), torch.tensor(teacher))) == pytest.approx(0, abs=1e-9)


@pytest.mark.data_free
def test_faces_without_teacher_embedding_are_left_out():
    torch.manual_seed(0)
    distill = Distillation(8, {"a": 4, "b": 3}, DistillConfig(weight=1.0, relation_weight=0.5))
    student = torch.randn(6, 8)
    targets = {"a": torch.randn(6, 4), "b": torch.randn(6, 3)}
    targets["a"][4:] = float("nan")  # teacher a never saw the last two faces
    with torch.no_grad():
        loss, stats = distill(student, targets)
        a, b = distill.projectors["a"], distill.projectors["b"]
        unit = F.normalize(student, dim=1)
        expected = {"distill_a_cosine_loss": cosine_term(a(unit[:4]), targets["a"][:4]),
                    "distill_a_relation_loss": relation_term(student[:4], targets["a"][:4]),
                    "distill_b_cosine_loss": cosine_term(b(unit), targets["b"]),
                    "distill_b_relation_loss": relation_term(student, targets["b"])}
    assert set(stats) == set(expected)
    for key, value in expected.items():
        assert float(stats[key]) == pytest.approx(float(value), abs=1e-6), key
    total = sum(float(v) * (0.5 if "relation" in k else 1.0) for k, v in expected.items())
    assert float(loss) == pytest.approx(total, abs=1e-5)


@pytest.mark.data_free
def test_teacher_targets_are_centred_on_the_faces_it_embedded():
    rng = np.random.default_rng(4)
    cone = (rng.normal(size=(500, 16)) * 0.3 + 3.0).astype(np.float16)  # every pair scores ~0.9
    cone[::5] = np.nan  # faces this teacher did not embed
    out = centred(cone)
    assert np.isnan(out[::5]).all() and not np.isnan(np.delete(out, np.s_[::5], 0)).any()
    kept = np.delete(out, np.s_[::5], 0)
    np.testing.assert_allclose(kept.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(kept, np.delete(cone, np.s_[::5], 0).astype(np.float32)
                               - np.nanmean(cone.astype(np.float32), 0), atol=1e-6)
    unit = kept / np.linalg.norm(kept, axis=1, keepdims=True)
    assert abs(np.mean(unit[:200] @ unit[200:].T)) < 0.05  # random pairs no longer look alike


@pytest.mark.data_free
def test_projectors_start_at_the_least_squares_map_to_each_teacher():
    rng = np.random.default_rng(3)
    student = rng.normal(size=(120, 8))
    targets = {"a": student @ rng.normal(size=(8, 4)) + 0.1 * rng.normal(size=(120, 4)),
               "b": rng.normal(size=(120, 3))}
    targets["b"][:70] = np.nan  # teacher b embedded only the last 50 faces
    distill = Distillation(8, {"a": 4, "b": 3}, DistillConfig())
    as_tensors = {name: torch.tensor(t) for name, t in targets.items()}
    before = a_cosine_term(distill, student, as_tensors["a"])
    fitted = distill.fit_projectors(torch.tensor(student), as_tensors, ridge=0.0)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    for name, rows in (("a", slice(None)), ("b", slice(70, None))):  # brute force: numpy lstsq
        inputs = np.c_[unit(student)[rows], np.ones(len(unit(student)[rows]))]  # affine: a bias column
        solution = np.linalg.lstsq(inputs, unit(targets[name][rows]), rcond=None)[0]
        projector = distill.projectors[name]
        np.testing.assert_allclose(projector.weight.detach().numpy(), solution[:-1].T, atol=1e-4)
        np.testing.assert_allclose(projector.bias.detach().numpy(), solution[-1], atol=1e-4)
        projected = unit(inputs @ solution)
        assert fitted[name] == pytest.approx(np.mean(np.sum(projected * unit(targets[name][rows]), 1)),
                                             abs=1e-4)
    after = a_cosine_term(distill, student, as_tensors["a"])
    assert after < 0.1 < before  # the cosine term starts near its floor, not at a random projection
    default = Distillation(8, {"a": 4, "b": 3}, DistillConfig()).fit_projectors(torch.tensor(student), as_tensors)
    assert fitted["a"] - 0.05 < default["a"] <= fitted["a"] + 1e-6  # the default ridge costs little


@pytest.mark.data_free
def test_a_student_in_a_cone_meets_its_own_centred_embeddings():
    """dlib-like embeddings all near one axis, and targets that are those same embeddings centred:
    the fitted projector reproduces them (a ridge scaled by the uncentred Gram, which the axis
    dominates, would damp the directions that tell faces apart)."""
    rng = np.random.default_rng(4)
    axis = rng.normal(size=16)
    student = torch.tensor(axis + 0.3 * rng.normal(size=(400, 16)), dtype=torch.float32)
    targets = {"self": torch.tensor(centred(F.normalize(student, dim=1).numpy()))}
    fitted = Distillation(16, {"self": 16}, DistillConfig()).fit_projectors(student, targets)
    assert fitted["self"] > 0.99


@torch.no_grad()
def a_cosine_term(distill, student, target):
    return float(cosine_term(distill.projectors["a"](F.normalize(torch.tensor(student).float(), dim=1)), target))


@pytest.fixture(scope="module")
def taught(tmp_path_factory, torch_detector):
    """24 CelebA identities × 4 photos prepared, then embedded by the real dlib teacher (CLI)."""
    pytest.importorskip("dlib", reason="the dlib teacher needs faceverify[distill]")
    manifest = celeba_subset(tmp_path_factory.mktemp("celeba-small"), 24, 4)
    from faceverify.prepare import prepare_dataset

    dest = tmp_path_factory.mktemp("aligned-small") / "celeba"
    prepare_dataset(manifest, dest, torch_detector, progress=False)
    done = subprocess.run([sys.executable, TEACHER_SCRIPT, str(manifest), str(dest),
                           "--teacher", "dlib"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return manifest, dest


@pytest.mark.slow
def test_teacher_pass_embeds_every_crop_and_knows_people(taught):
    _, dest = taught
    keys, vectors = load_teacher_parts(dest / "teachers" / "dlib")
    with open(dest / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(keys) == sorted(r["path"] for r in rows)
    assert vectors.shape == (len(rows), 128)
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=2e-3)
    identity = {r["path"]: r["identity"] for r in rows}
    sims = vectors.astype(np.float32) @ vectors.astype(np.float32).T
    same = np.array([[identity[a] == identity[b] for b in keys] for a in keys])
    off = ~np.eye(len(keys), dtype=bool)
    # a real face model: photos of one person are far more alike than photos of two
    assert sims[same & off].mean() > sims[~same].mean() + 0.08


@pytest.mark.slow
def test_teacher_pass_resumes_after_sigkill(taught, tmp_path):
    source, dest = taught
    import shutil

    copy = tmp_path / "celeba"
    shutil.copytree(dest, copy, ignore=shutil.ignore_patterns("teachers"))
    args = [sys.executable, TEACHER_SCRIPT, str(source), str(copy), "--teacher", "dlib", "--part-size", "8"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = copy / "teachers" / "dlib"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("part-*.npz"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(load_teacher_parts(parts)[0])
    assert 0 < before < 96
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(f"{len(load_teacher_parts(dest / 'teachers' / 'dlib')[0]) - before} faces embedded")
    keys, vectors = load_teacher_parts(parts)
    reference = dict(zip(*load_teacher_parts(dest / "teachers" / "dlib")))
    assert sorted(keys) == sorted(reference)  # every crop once, none twice
    for key, vector in zip(keys, vectors):
        np.testing.assert_allclose(vector, reference[key], atol=2e-3)


def distill_config(tmp_path, dest, *overrides):
    return load_config(ROOT / "training" / "configs" / "cpu.yaml", [
        f"out_dir={tmp_path}", f"data.datasets=[{dest}]", "model.arch=resnet18-half-fast",
        "model.embedding_dim=64", "data.p=8", "data.k=4", "optim.time_budget_min=0",
        "optim.warmup_steps=3", "log_every=1", "eval.pairs=null", "objective.name=supcon",
        "distill.teachers=[dlib]", "distill.relation_weight=1.0", *overrides])


@pytest.mark.slow
def test_student_learns_from_real_teacher_embeddings(taught, tmp_path):
    _, dest = taught
    trainer = Trainer(distill_config(tmp_path, dest, "optim.steps=30"), progress=False)
    assert set(trainer.targets) == {"dlib"} and not torch.isnan(trainer.targets["dlib"]).any()
    batch = next(trainer.batches.epoch(0))
    trainer.batches.epoch = lambda epoch, skip=0: iter([batch] * (30 - skip))
    trainer.fit()
    with open(tmp_path / "history.jsonl") as fh:
        records = [r for r in map(json.loads, fh) if "loss" in r]
    for term in ("distill_dlib_cosine_loss", "distill_dlib_relation_loss"):
        history = [r[term] for r in records]
        assert np.mean(history[-5:]) < 0.9 * np.mean(history[:5]), (term, history)
    state = torch.load(tmp_path / "state.pt", weights_only=True)["method"]
    assert state["distillation.projectors.dlib.weight"].shape == (128, 64)
    from faceverify.models import load_checkpoint

    student, metadata = load_checkpoint(tmp_path / "final.pt")  # the embedder alone: no projector
    assert "public domain" in metadata.training["distillation"]["licences"]["dlib"]
    assert student.embedding_dim == 64


@pytest.mark.slow
def test_killed_distillation_run_resumes(taught, tmp_path):
    from .test_training import kill_and_resume, run_training

    _, dest = taught
    kill_and_resume(tmp_path, run_training(tmp_path, dest, "optim.steps=40", "checkpoint_every=10",
                                           "objective.name=supcon", "distill.teachers=[dlib]",
                                           "distill.relation_weight=1.0"), total=40)
    with open(tmp_path / "history.jsonl") as fh:
        assert all("distill_dlib_cosine_loss" in r for r in map(json.loads, fh) if "loss" in r)


def mobilefacenet_teacher():
    from faceverify.train.teachers import MobileFaceNetTeacher

    pytest.importorskip("ncnn", reason="the mobilefacenet teacher needs faceverify[distill]")
    folder = os.environ.get(MobileFaceNetTeacher.ENV)
    if not folder:
        pytest.skip(f"set {MobileFaceNetTeacher.ENV} to the folder of insightface_mfnet_mxnet.param/.bin "
                    "(github:CrD1997/mobilefacenet_ncnn, models/): it is not redistributable")
    return MobileFaceNetTeacher(folder)


def test_mobilefacenet_teacher_knows_people(torch_detector):
    teacher = mobilefacenet_teacher()
    people = [("Aaron_Peirsol", 1), ("Aaron_Peirsol", 3), ("Abdullah_Gul", 1), ("Abdullah_Gul", 3), ("Adrien_Brody", 2)]
    images = [load_rgb(lfw(name, i)) for name, i in people]
    faces = [select_face(found, image.shape, "central") for found, image in zip(torch_detector.detect(images), images)]
    vectors = np.concatenate([teacher.embed(image, [face]) for image, face in zip(images, faces)])
    assert vectors.shape == (5, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    sims = vectors @ vectors.T
    assert min(sims[0, 1], sims[2, 3]) > 0.5 > max(sims[0, 2], sims[0, 4], sims[1, 3], sims[2, 4])


@pytest.mark.data_free
def test_mobilefacenet_teacher_without_its_files_says_where_to_get_them(tmp_path):
    pytest.importorskip("ncnn", reason="the mobilefacenet teacher needs faceverify[distill]")
    from faceverify.errors import FaceVerifyError
    from faceverify.train.teachers import MobileFaceNetTeacher

    with pytest.raises(FaceVerifyError, match="CrD1997/mobilefacenet_ncnn"):
        MobileFaceNetTeacher(tmp_path)


@pytest.mark.data_free
def test_packs_carry_teacher_embeddings(tmp_path):
    from faceverify.errors import FaceVerifyError
    from faceverify.train.face_array import FaceArray, load_face_array, pack_face_array

    rng = np.random.default_rng(5)
    crops = np.repeat(rng.integers(0, 255, (12, 1, 1, 3), dtype=np.uint8), 112, 1).repeat(112, 2)
    dlib = rng.normal(size=(12, 128)).astype(np.float16)
    dlib[[2, 7]] = np.nan  # faces the teacher did not embed
    faces = FaceArray(crops, np.arange(12) // 3, ["a/x", "a/y", "b/x", "b/z"], {"dlib": dlib})
    packs = pack_face_array(faces, tmp_path / "pack", max_bytes=2000)  # several packs
    assert len(packs) > 1
    loaded = load_face_array(packs, teachers=["dlib"], progress=False)
    assert loaded.identities == faces.identities and (loaded.labels == faces.labels).all()
    np.testing.assert_array_equal(loaded.teachers["dlib"], dlib)  # NaN rows included
    assert np.abs(loaded.crops.astype(int) - crops).max() <= 8  # WebP, lossy
    with pytest.raises(FaceVerifyError, match="packed without the mobilefacenet teacher"):
        load_face_array(packs, teachers=["mobilefacenet"], progress=False)
    with pytest.raises(FaceVerifyError, match="unknown teacher"):
        load_face_array(packs, teachers=["dlibb"], progress=False)


@pytest.mark.slow
def test_ensemble_teacher_and_realignment_use_the_recorded_faces(taught, tmp_path):
    """The bundled model as teacher embeds each prepared face exactly as `Verifier` embeds that
    face (same landmarks, each member on its own template); the set re-aligned to dlib-150 holds
    the same faces, warped from the source photos with the recorded landmarks."""
    from faceverify.align import DLIB_150, align_face
    from faceverify.detect import AlignedFace
    from faceverify.detect.aligned import align_templates
    from faceverify.prepare import face_from_manifest, realign_prepared
    from faceverify.train.teachers import ModelTeacher, embed_prepared
    from faceverify.verifier import Verifier

    source, dest = taught
    teacher = ModelTeacher()
    assert embed_prepared(source, dest, teacher, progress=False) > 0
    keys, vectors = load_teacher_parts(dest / "teachers" / "ensemble")
    with open(dest / "manifest.csv") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    assert sorted(keys) == sorted(rows) and vectors.shape[1] == teacher.dim == 256
    photos = {s.key: s.path for s in load_samples(source)}
    verifier = Verifier()
    for key, vector in list(zip(keys, vectors))[:4]:
        row, face = rows[key], face_from_manifest(rows[key])
        photo = load_rgb(photos[row["source"]])
        (expected,) = verifier.embed_faces([AlignedFace(face, align_templates(photo, face, verifier.templates), 1)])
        assert float(expected.embedding @ vector.astype(np.float32)) > 0.9999  # fp16-stored parts
    realigned = tmp_path / "dlib150"
    assert realign_prepared(dest, source, realigned, DLIB_150, progress=False) == len(rows)
    assert realign_prepared(dest, source, realigned, DLIB_150, progress=False) == 0  # resumable
    key = keys[0]
    crop = cv2.cvtColor(cv2.imread(str(realigned / key)), cv2.COLOR_BGR2RGB)
    expected = align_face(load_rgb(photos[rows[key]["source"]]), face_from_manifest(rows[key]).landmarks, DLIB_150)
    assert crop.shape == (150, 150, 3) and np.abs(crop.astype(int) - expected).mean() < 3  # JPEG


@pytest.mark.slow
def test_dlib_student_fine_tunes_toward_the_ensemble(taught, tmp_path):
    """The issue-24 recipe at toy scale: dlib's ResNet from its converted weights, on dlib-150
    crops, triplet + distillation toward the ensemble; the frozen stem stays, the rest moves, and
    the checkpoint is a one-member model on the dlib-150 template."""
    from faceverify.align import DLIB_150
    from faceverify.models import load_checkpoint
    from faceverify.models.members import pretrained_student
    from faceverify.prepare import realign_prepared
    from faceverify.train.teachers import ModelTeacher, embed_prepared

    source, dest = taught
    embed_prepared(source, dest, ModelTeacher(), progress=False)  # resumes: a no-op if done
    crops = tmp_path / "dlib150" / "celeba"
    realign_prepared(dest, source, crops, DLIB_150, progress=False)
    (crops / "teachers").mkdir()
    (crops / "teachers" / "ensemble").symlink_to(dest / "teachers" / "ensemble")
    cfg = load_config(ROOT / "training" / "configs" / "student.yaml", [
        f"out_dir={tmp_path / 'run'}", f"data.datasets=[{crops}]", "data.p=8", "data.k=4",
        "optim.steps=6", "optim.warmup_steps=1", "optim.time_budget_min=0", "eval.pairs=null",
        "checkpoint_every=3"])
    trainer = Trainer(cfg, progress=False)
    assert trainer.templates == (DLIB_150,) and set(trainer.targets) == {"ensemble"}
    trainer.fit()
    student, metadata = load_checkpoint(tmp_path / "run" / "final.pt")
    start = pretrained_student("dlib-resnet-v1")
    assert metadata.templates == (DLIB_150,) and [m["arch"] for m in metadata.members] == ["dlib-resnet-v1"]
    before, after = start.state_dict(), student.state_dict()
    stem = [k for k in before if ".stem." in k and before[k].is_floating_point()]
    late = [k for k in before if ".blocks.13." in k and before[k].is_floating_point()]
    assert stem and all(torch.equal(before[k], after[k]) for k in stem)
    assert any(not torch.equal(before[k], after[k]) for k in late)
    with open(tmp_path / "run" / "history.jsonl") as fh:
        assert all("distill_ensemble_cosine_loss" in r for r in map(json.loads, fh) if "loss" in r)
