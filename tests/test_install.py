"""Installed the way users install it: the wheel, in a fresh venv with neither torch nor Gradio, run
from a folder outside the checkout, finds its bundled model and verifies real photos."""
import json
import subprocess
import sys
import zipfile

import pytest

from .conftest import ROOT, lfw

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(out)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = out.glob("faceverify-*.whl")
    return path


def test_wheel_is_lean_and_carries_its_model(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "faceverify/weights/faceverify-default.onnx" in names
    assert {f"faceverify/weights/mtcnn/{n}.onnx" for n in ("pnet", "rnet", "onet")} <= set(names)
    assert {"faceverify/weights/retinaface/retinaface_mv1_0.25.onnx",
            "faceverify/weights/yunet/face_detection_yunet_2023mar_int8bq.onnx"} <= set(names)
    assert not any(n.startswith(("app/", "api/")) for n in names)  # installed as faceverify_app, faceverify_api
    assert {"faceverify_app/main.py", "faceverify_api/main.py", "faceverify_api/routers/people.py",
            "faceverify/access/keys.py", "faceverify/gallery/sqlite_store.py"} <= set(names)
    from faceverify.e2e.web import ORT_WEB_LICENSE, PAGE_FILES

    # what `faceverify export --end-to-end` and `--web` need, but onnxruntime-web (npm)
    assert {"faceverify/e2e/model.py", "faceverify/e2e/web.py",
            *(f"faceverify/e2e/page/{n}" for n in (*PAGE_FILES, ORT_WEB_LICENSE))} <= set(names)
    assert wheel.stat().st_size < 50 << 20


def test_torch_free_install_verifies_from_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[runtime]"],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    python, cli = str(venv / "bin" / "python"), str(venv / "bin" / "faceverify")
    absent = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('gradio'))"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert absent.stdout.split() == ["None", "None"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_WAIT_POLICY": "PASSIVE"}
    same = subprocess.run([cli, "verify", str(lfw("Abdullah_Gul", 1)), str(lfw("Abdullah_Gul", 3))],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert same.returncode == 0, same.stderr[-2000:]
    assert same.stdout.startswith("same person")
    named = subprocess.run([cli, "verify", "--json", str(lfw("Abdullah_Gul", 1)), str(lfw("Abdullah_Gul", 3))],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    assert json.loads(named.stdout)["detector"] == "retinaface"  # the model's own detector, installed with it
    different = subprocess.run([cli, "verify", str(lfw("Abdullah_Gul", 1)), str(lfw("Aaron_Peirsol", 1))],
                               capture_output=True, text=True, cwd=tmp_path, env=env)
    assert different.returncode == 0 and different.stdout.startswith("different people")
    api = subprocess.run([python, "-c", "from faceverify import Verifier; v = Verifier(); print(v.providers)"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert api.returncode == 0 and "CPUExecutionProvider" in api.stdout, api.stderr[-2000:]
    serve = subprocess.run([cli, "serve"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert serve.returncode == 2
    assert serve.stderr.strip() == "faceverify: error: the web UI needs Gradio: pip install 'faceverify[app]'"
    rest = subprocess.run([cli, "api"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert rest.returncode == 2, rest.stderr[-2000:]
    assert rest.stderr.strip() == "faceverify: error: the API needs FastAPI and uvicorn: pip install 'faceverify[api]'"
    graph = subprocess.run([cli, "export", "--end-to-end", "e2e.onnx"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert graph.returncode == 2 and graph.stderr.strip().startswith(
        "faceverify: error: exporting a graph needs onnx: pip install 'faceverify[export]'"), graph.stderr[-2000:]
    key = subprocess.run([cli, "keys", "add", "reception", "--scope", "verify", "--gallery", "g.db"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)  # keys need no server stack
    assert key.returncode == 0 and key.stdout.startswith("fvk_"), key.stderr[-2000:]
