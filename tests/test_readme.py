"""Every Python snippet in the README runs as written."""
import re
import subprocess
import sys

import pytest

from .conftest import ROOT

SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.parametrize("code", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_readme_snippet(code, tmp_path):
    code = code.replace("/tmp/readme-gallery.db", str(tmp_path / "g.db"))
    if "/tmp/e2e.onnx" in code:  # the README exports it first, in a shell
        from faceverify.e2e.model import export_end_to_end

        export_end_to_end(tmp_path / "e2e.onnx")
        code = code.replace("/tmp/e2e.onnx", str(tmp_path / "e2e.onnx"))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()
