"""Print the third-party requirements of tuneloop projects, for an image's dependency layer.

    python pydeps.py shared services/trainer > requirements.txt
    python pydeps.py --constraints constraints.txt > constraints.image.txt

Reads only the ``pyproject.toml`` files (copied before the source), so the dependency layer is
rebuilt only when dependencies change, not on every code change. Packages the image's engine
already provides (``TUNELOOP_ENGINE_PROVIDES``, e.g. ``torch`` in a CUDA PyTorch base) and the
projects themselves (``tuneloop``) are left out, from requirements and constraints alike.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tomllib
from pathlib import Path

LOCAL = {"tuneloop"}


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("projects", nargs="*", help="folders holding a pyproject.toml")
    p.add_argument("--constraints", help="filter this constraints file instead")
    a = p.parse_args(argv)
    skip = LOCAL | {_name(n) for n in os.environ.get("TUNELOOP_ENGINE_PROVIDES", "").split()}
    if a.constraints:
        lines = Path(a.constraints).read_text().splitlines()
        out = [ln for ln in lines if not ln.strip() or ln.lstrip().startswith("#")
               or _name(ln) not in skip]
    else:
        out = []
        for project in a.projects:
            meta = tomllib.loads((Path(project) / "pyproject.toml").read_text())["project"]
            out += [d for d in meta.get("dependencies", []) if _name(d) not in skip and d not in out]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
