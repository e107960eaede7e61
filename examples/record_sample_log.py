"""Record the sample query log shipped in query_logs/ (bundled model, first 10 example images).

Run from the repository root:  python examples/record_sample_log.py
Writes query_logs/fashion_mnist_local_seed0.jsonl: for each image one clean predict call
(N=1, noise_sd=0) and certify calls at noise_sd 0.12 and 0.25 (N0=20, N=100), seed 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from robust_api import RobustAPI, export_jsonl  # noqa: E402


def main() -> None:
    api = RobustAPI("local", log=False, seed=0, device="cpu")
    for path in sorted((ROOT / "examples" / "images").glob("*.png"))[:10]:
        api.predict(path, N=1, noise_sd=0)
        for noise_sd in (0.12, 0.25):
            api.certify(path, noise_sd=noise_sd, N0=20, N=100, alpha=0.001)
    out = ROOT / "query_logs" / "fashion_mnist_local_seed0.jsonl"
    out.parent.mkdir(exist_ok=True)
    count = export_jsonl(api.log, out)
    print(f"wrote {count} calls to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
