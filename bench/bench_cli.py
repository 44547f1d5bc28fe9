"""CLI start-up and one-pair verify, wall time of whole processes as a user runs them.

"before" reproduces the old start-up, whose parser imported Gradio through the `serve` plugin:
the same command with Gradio imported first. "after" is the command as shipped (Gradio loads
only when `serve` runs). Both measured side by side in this run.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

from common import ROOT, lfw_photos, median_seconds, table

CLI = shutil.which("faceverify", path=str(ROOT / ".venv" / "bin")) or shutil.which("faceverify")
BEFORE = [sys.executable, "-c", "import sys, gradio; from faceverify.cli import main; sys.exit(main(sys.argv[1:]))"]


def run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    a, b = (str(p) for p in lfw_photos(2))
    rows = []
    for verb, args in (("--help", ["--help"]), ("verify A B", ["verify", a, b, "--threshold", "2"])):
        before = median_seconds(lambda: run([*BEFORE, *args]), repeat=3)
        after = median_seconds(lambda: run([CLI, *args]), repeat=3)
        rows.append([f"faceverify {verb}", before, after, before / after])
    table("CLI wall time (s), 2-core CPU, bundled ONNX model", ["command", "before (Gradio at start-up)",
          "after", "speed-up"], rows)


if __name__ == "__main__":
    main()
