"""`faceverify finetune` end to end on real photos: AT&T/ORL identity folders, an identity-disjoint
split, a run killed mid-training and resumed, a report that `evaluate` confirms."""
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .conftest import DATA, ROOT, lfw


def finetune_args(dataset, out, *extra):
    return [sys.executable, "-m", "faceverify.cli", "finetune", str(dataset), "--out", str(out), "--quiet", *extra]


@pytest.mark.slow
def test_finetune_killed_resumed_and_reported(tmp_path):
    out, work = tmp_path / "orl.pt", tmp_path / "orl-finetune"
    args = finetune_args(DATA / "orl" / "manifest.csv", out, "--steps", "30", "--json")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while not (work / "run" / "state.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before its first training checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    split = json.loads((work / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"]) and report["val_identities"] == len(split["val"]) == 12
    with open(work / "run" / "history.jsonl") as fh:
        steps = [r["step"] for r in map(json.loads, fh) if "loss" in r]
    assert steps[-1] == 30 and min(steps) < 25  # resumed from the checkpoint, not started again
    assert out.with_suffix(".onnx").is_file() and (work / "report.png").stat().st_size > 10_000
    # the report's figures are what `evaluate` measures on the held-out identities
    check = tmp_path / "check.json"
    evaluated = subprocess.run([sys.executable, "-m", "faceverify.cli", "evaluate", "--model", str(out.with_suffix(".onnx")),
                                "--identities", str(work / "val.csv"), "--json", str(check), "--quiet"],
                               cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    measured = json.loads(check.read_text())
    assert measured["genuine_pairs"] == report["finetuned"]["genuine_pairs"]
    assert measured["auc"] == pytest.approx(report["finetuned"]["auc"], abs=2e-3)
    from faceverify.models import load_checkpoint

    _, metadata = load_checkpoint(out)
    assert metadata.training["finetune"]["val_identities"] == sorted(split["val"])
    assert metadata.all_pairs_roc["source"].startswith("finetune validation") and metadata.threshold() > 0


def test_too_few_people_is_a_clear_error(tmp_path):
    for person in ("Aaron_Peirsol", "Abdullah_Gul"):
        (tmp_path / "people" / person).mkdir(parents=True)
        for i in (1, 2):
            shutil.copy(lfw(person, i), tmp_path / "people" / person)
    done = subprocess.run(finetune_args(tmp_path / "people", tmp_path / "m.pt"), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"faceverify: error: {tmp_path / 'people'}: 2 identities with at least 2 photos; fine-tuning "
        "needs 6 or more (one sub-folder per person)"]


def test_split_holds_out_identities_within_the_photo_cap(tmp_path):
    """30 % of ORL's 40 people are held out (12, 10 photos each), fewer where the cap on held-out
    photos (every pair of them is scored) says so; never a person on both sides."""
    from faceverify.train.finetune import identity_split

    manifest = DATA / "orl" / "manifest.csv"
    for cap, held in ((10_000, 12), (35, 3), (5, 2)):
        split = identity_split(manifest, tmp_path / f"split-{cap}.json", 0.3, 0, cap)
        assert len(split["val"]) == held and len(split["train"]) == 40 - held
        assert not set(split["val"]) & set(split["train"])


def test_default_steps_are_two_passes_within_bounds():
    from faceverify.train.finetune import MAX_STEPS, MIN_STEPS, training_steps

    assert training_steps(969, 64) == MIN_STEPS  # Yale B's training side: 30 steps would not move it
    assert training_steps(64_000, 64) == 2_000
    assert training_steps(300_000, 64) == MAX_STEPS
