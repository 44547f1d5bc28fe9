"""Run every benchmark in turn (what `make bench` does); the training and search benchmarks run on
ORL, prepared into a temporary folder first."""
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        orl = Path(tmp) / "orl"
        subprocess.run([sys.executable, "-m", "faceverify.cli", "prepare", str(DATA / "orl"), str(orl)],
                       check=True)
        for script, args in [("bench_cli.py", []), ("bench_inference.py", []), ("bench_pipeline.py", []),
                             ("bench_gallery.py", []),
                             # real templates from ORL here; the README's figures use the extra set
                             ("bench_search.py", [str(orl), str(DATA / "orl"), "--real", "400", "--queries", "10",
                                                  "--sizes", "1000", "100000"]),
                             ("bench_training.py", [str(orl)]),
                             ("bench_openset.py", ["--counts", "0", "--plot", str(Path(tmp) / "openset.png")]),
                             ("bench_cluster.py", []), ("bench_quality.py", []), ("bench_gates.py", []),
                             ("bench_crops.py", []), ("bench_api.py", []),
                             ("bench_e2e.py", []), ("bench_web.py", []),  # needs Chromium and `make js`
                             ("bench_node.py", [])]:  # skipped without node; needs `make js`
            print(f"\n## {script}", flush=True)
            subprocess.run([sys.executable, str(HERE / script), *args], check=True)
