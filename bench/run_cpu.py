"""`make bench`: run the CPU benchmarks one after another (each writes bench/results/<name>.json
with its baseline measured in the same run). GPU benches (trainer_gpu.py, inference_gpu.py) run
on a GPU machine; see docs/trainer.md and docs/inference.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CPU_BENCHES = ["dataset_validate.py", "inference_proxy.py", "gateway_overhead.py",
               "serve_load.py --cpu", "serve_load.py --fake-engine"]


def main() -> int:
    names = sys.argv[1:] or CPU_BENCHES
    failed = []
    for name in names:
        print(f"== bench/{name}", flush=True)
        script, *args = name.split()
        if subprocess.call([sys.executable, str(HERE / script), *args], cwd=HERE.parent) != 0:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
