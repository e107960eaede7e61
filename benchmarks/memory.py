"""Peak memory of certification on large photos: the bounded noise path against the first
release's (float64 noise, a whole request's copies materialised at once).

Each case runs in a fresh Python process, so its peak resident set size (``ru_maxrss``) is
its own. "base" is the process's RSS after imports, the synthetic photo (uint8 RGB) and a
warm-up call on a 64×64 image; "peak" is the highest RSS during the certify call (Linux
VmHWM, reset just before the call; where the kernel cannot reset it, the process's peak).
"reserved" is the most the memory plan reserved at once (its estimate of the noise path). Old-style cases
swap in the first release's noise formula (whole batch in float64) and a memory limit so
large that a whole request is generated at once, which is what the first release did.

    python benchmarks/memory.py            # quick table, a few minutes on 2 cores
    python benchmarks/memory.py --full     # the 6000×4000, N0=20 + N=100 run, and the denoiser cases

The classifier is a function (mean brightness → label): its own cost is negligible, so the
table shows the noise path. The cloud case sends through the local Google emulator with
``resize="fit"``: full-resolution noise, then each query image box-filtered to the 20 MB limit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MB = 1 << 20


def _rss_now() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """The process's peak RSS since the last :func:`_reset_peak` (VmHWM), else since it started."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _reset_peak() -> bool:
    """Start a new peak RSS measurement here (Linux ≥ 4.0: clear_refs 5); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class _FirstReleaseNoise:
    """The first release's NoiseSampler.noisy: the requested copies at once, in float64."""

    def __init__(self, image, image_digest, seed, phase, noise_sd, slab_bytes=None):
        import numpy as np

        from robust_api.noise import noise_key

        self.image, self.noise_sd, self._key = image, float(noise_sd), noise_key(seed, image_digest, phase)
        self._dim = int(image.size)
        words = self._dim + (self._dim % 2)
        self._counters = -(-words // 4)
        self._words = self._counters * 4
        self._np = np

    def noisy(self, start, stop):
        np = self._np
        count = stop - start
        if self.noise_sd == 0.0:
            return np.broadcast_to(self.image, (count,) + self.image.shape).astype(np.float32)
        generator = np.random.Philox(key=self._key, counter=start * self._counters)
        words = generator.random_raw(count * self._words).reshape(count, self._words)
        pairs = self._dim + (self._dim % 2)
        uniforms = ((words[:, :pairs] >> np.uint64(11)).astype(np.float64) + 1.0) * (2.0**-53)
        u1, u2 = uniforms[:, 0::2], uniforms[:, 1::2]
        radius = np.sqrt(-2.0 * np.log(u1))
        normals = np.empty((count, pairs), dtype=np.float64)
        normals[:, 0::2] = radius * np.cos(2.0 * np.pi * u2)
        normals[:, 1::2] = radius * np.sin(2.0 * np.pi * u2)
        noisy = self.image.astype(np.float64) + self.noise_sd * normals[:, : self._dim].reshape((count,) + self.image.shape)
        np.clip(noisy, 0.0, 1.0, out=noisy)
        return noisy.astype(np.float32)


def _photo(height: int, width: int):
    """A synthetic 8-bit RGB photo: smooth gradients plus fine texture (content does not change memory)."""
    import numpy as np

    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    cols = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    image = np.empty((height, width, 3), np.uint8)
    for channel, (a, b) in enumerate(((0.4, 0.2), (0.2, 0.3), (0.1, 0.1))):  # a dark photo, mean ≈ 0.27
        image[:, :, channel] = np.clip(255 * (a * rows + b * cols + 0.05), 0, 255).astype(np.uint8)
    return image


def _brightness(batch):
    return ["dark" if float(x.mean()) < 0.5 else "light" for x in batch]


def child(case: dict) -> dict:
    import numpy as np

    import robust_api
    from robust_api import RobustAPI

    image = _photo(case["height"], case["width"])
    options = {"seed": 0, "log": False, "progress": False, "device": "cpu"}
    if case["mode"] == "old":
        import robust_api.engine.calls as calls_module

        calls_module.NoiseSampler = _FirstReleaseNoise
        options["memory_limit_mb"] = 10**7  # no budget: a whole request at once
    elif case.get("memory_limit_mb"):
        options["memory_limit_mb"] = case["memory_limit_mb"]
    if case.get("denoiser"):
        options["denoiser"] = case["denoiser"]
    stack = None
    if case["provider"] == "google-emulator":
        from robust_api.emulators import emulate

        stack = emulate("google")
        endpoint = stack.__enter__()
        api = RobustAPI("google", endpoint=endpoint, resize="fit", **options)
    else:
        api = RobustAPI(_brightness, **options)
    if case["mode"] == "old" and api.denoiser is not None:
        api.denoiser.activation_bytes = 1 << 50  # the first release: a whole image per forward pass, no tiles
    api.certify(np.zeros((64, 64, 3), np.uint8), noise_sd=0.25, N0=1, N=2)  # warm-up: imports, threads
    reserved_before = api.memory.peak_reserved
    api.memory.peak_reserved = 0
    base = _rss_now()
    reset = _reset_peak()
    began = time.perf_counter()
    try:
        cert = api.certify(image, noise_sd=0.25, N0=case["N0"], N=case["N"], alpha=0.001)
        outcome = {"label": str(cert.label), "queries": cert.queries, "radius": round(float(cert.radius), 4)}
    except robust_api.RobustAPIError as exc:
        outcome = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    wall = time.perf_counter() - began
    if stack is not None:
        stack.__exit__(None, None, None)
    tiles = getattr(api.denoiser, "tiles_run", None)
    return {**case, **outcome, "base_mb": base / MB, "peak_mb": _peak_rss() / MB, "peak_is_the_calls": reset,
            "wall_s": wall, "tiles": tiles, "reserved_peak_mb": api.memory.peak_reserved / MB,
            "warm_up_reserved_mb": reserved_before / MB}


def run_case(case: dict, timeout: float) -> dict:
    try:
        result = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timed out after {timeout:.0f} s"}
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        killed = " (killed: out of memory?)" if result.returncode in (-9, 137) else ""
        return {**case, "error": f"exit {result.returncode}{killed}: {tail[0][:120]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def cases(full: bool) -> list:
    def case(height, width, N0, N, mode="new", provider="function", denoiser=None, memory_limit_mb=None):
        return {"height": height, "width": width, "N0": N0, "N": N, "mode": mode, "provider": provider,
                "denoiser": denoiser, "memory_limit_mb": memory_limit_mb}

    quick = [
        case(800, 600, 10, 40, "old"),
        case(800, 600, 10, 40, "new"),
        case(6000, 4000, 2, 12, "new"),
        case(6000, 4000, 1, 3, "new", provider="google-emulator"),
        case(10000, 10000, 1, 2, "new"),  # 100 MP: above the 50 MP default limit
    ]
    if not full:
        return quick
    return quick + [
        case(6000, 4000, 20, 100, "new"),
        case(1500, 1000, 1, 2, "old", denoiser="photo-dncnn-0.25"),
        case(1500, 1000, 1, 2, "new", denoiser="photo-dncnn-0.25"),
        case(6000, 4000, 1, 1, "new", denoiser="photo-dncnn-0.25"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="add the 6000×4000 N=100 run and the denoiser cases")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per case")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    print(f"# memory benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    print("| image | N0 + N | denoiser | provider | noise path | base RSS MB | peak RSS MB | call adds MB "
          "| reserved MB | wall s | result |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in cases(args.full):
        row = run_case(case, args.timeout)
        size = f"{case['height']}×{case['width']}×3 ({case['height'] * case['width'] / 1e6:g} MP)"
        path = "first release (float64, whole request)" if case["mode"] == "old" else "bounded (1024 MB default)"
        if "error" in row and "peak_mb" not in row:
            result, base, peak, added, reserved, wall = row["error"], "—", "—", "—", "—", "—"
        else:
            result = row.get("error") or f"{row['label']}, r={row['radius']}, {row['queries']} queries" + (
                f", {row['tiles']} denoiser tiles" if row.get("tiles") else "")
            base, peak = f"{row['base_mb']:,.0f}", f"{row['peak_mb']:,.0f}" + ("" if row["peak_is_the_calls"] else "*")
            added = f"{row['peak_mb'] - row['base_mb']:,.0f}"
            reserved, wall = f"{row['reserved_peak_mb']:,.0f}", f"{row['wall_s']:,.1f}"
            if case["mode"] == "old":
                reserved = "—"  # no plan: the first release had none
        print(f"| {size} | {case['N0']} + {case['N']} | {case['denoiser'] or '—'} | {case['provider']} | {path} "
              f"| {base} | {peak} | {added} | {reserved} | {wall} | {result} |", flush=True)


if __name__ == "__main__":
    main()
