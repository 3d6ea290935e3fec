"""Copy the CA certificates of one PEM bundle that another bundle lacks into a folder
(one .crt file each, the layout update-ca-certificates reads).

    python3 extra_cas.py HOST_BUNDLE IMAGE_BUNDLE OUT_DIR
"""

import re
import sys
from pathlib import Path

PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def certs(path: str) -> list[str]:
    p = Path(path)
    return PEM.findall(p.read_text()) if p.exists() else []


def main(host: str, image: str, out: str) -> int:
    have = {"".join(c.split()) for c in certs(image)}
    extra = [c for c in certs(host) if "".join(c.split()) not in have]
    Path(out).mkdir(parents=True, exist_ok=True)
    for i, cert in enumerate(extra):
        (Path(out) / f"host-extra-{i:03d}.crt").write_text(cert + "\n")
    print(f"{len(extra)} extra CA certificate(s) added")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
