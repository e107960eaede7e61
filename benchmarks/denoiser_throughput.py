"""Denoiser throughput (images/s): one image at a time in fp32 versus the SDK's batched runner.

For two input shapes — 28x28x1 (a DnCNN of the shipped Fashion-MNIST size: depth 10, 32
channels) and 224x224x3 (the paper's DnCNN-17, 64 channels) — it times, side by side:
  fp32-loop         the predecessor's way: each image alone as a [1, C, H, W] fp32 tensor
                    through the module (eval mode, torch.inference_mode);
  batched           ModuleDenoiser(module, device, mixed_precision=False) on the whole NHWC
                    float32 batch (the SDK path; it chunks internally);
  batched+amp       ModuleDenoiser(module, device), the default: autocast bf16/fp16 and
                    channels_last on CUDA; on CPU the default is fp32, so reported as n/a;
  batched+bf16-cpu  (CPU only) the batched path under torch.autocast("cpu", dtype=bfloat16).
Before timing, every mode's output on the first --check images is compared with fp32-loop
(assert_close; looser tolerance for bf16/fp16), so a broken path cannot be timed silently.
Weights are random (throughput does not depend on them); inputs are noisy copies (sigma 0.25)
from NoiseSampler. Each mode gets one untimed warm-up run; the median of --repeats runs is shown.

Run:  python benchmarks/denoiser_throughput.py [--device cpu|cuda] [--repeats 3] [--threads T]
          [--images-28 N] [--images-224 N] [--depth-28 10] [--channels-28 32]
          [--depth-224 17] [--channels-224 64] [--check 4] [--no-cpu-bf16]
(default devices: CPU, plus CUDA when available; default image counts: 512 / 8 on CPU,
4096 / 256 on CUDA)
"""

from __future__ import annotations

import argparse
import copy
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robust_api.denoisers.dncnn import DnCNN  # noqa: E402
from robust_api.images import image_digest  # noqa: E402
from robust_api.noise import NoiseSampler  # noqa: E402
from robust_api.torch_utils import ModuleDenoiser  # noqa: E402

DEFAULT_IMAGES = {"cpu": (512, 8), "cuda": (4096, 256)}
# max |output - fp32-loop| allowed in the check, per precision (outputs are clamped to [0, 1]).
# CUDA fp32 convolutions may use TF32 (cudnn.allow_tf32 defaults to True), hence the looser bound.
TOLERANCE = {"fp32-cpu": 1e-4, "fp32-cuda": 2e-3, "bfloat16": 5e-2, "float16": 1e-2}


def random_dncnn(image_channels: int, depth: int, channels: int, seed: int = 0) -> DnCNN:
    """A DnCNN with random weights whose last layer is not zero (a fresh DnCNN is the identity,
    which would make the output check vacuous): rescaled so the predicted noise has std 0.1."""
    torch.manual_seed(seed)
    module = DnCNN(image_channels, depth, channels).eval()
    last = module.dncnn[-1]
    torch.nn.init.normal_(last.weight)
    with torch.inference_mode():
        residual = module.dncnn(torch.rand(2, image_channels, 28, 28))
        last.weight.mul_(0.1 / residual.std().clamp_min(1e-12))
    return module


def noisy_inputs(count: int, shape: tuple) -> np.ndarray:
    clean = np.random.default_rng(0).random(shape, dtype=np.float32)
    return NoiseSampler(clean, image_digest(clean), 1, "estimation", 0.25).noisy(0, count)


def make_modes(module, device, cpu_bf16: bool) -> dict:
    """name -> (callable on NHWC float32 numpy -> NHWC float32 numpy, precision) or a note string."""
    loop_module = copy.deepcopy(module).to(device).eval()

    def fp32_loop(images):
        outputs = []
        with torch.inference_mode():
            for image in images:
                x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).to(device)
                outputs.append(loop_module(x).to("cpu"))
        return torch.cat(outputs).permute(0, 2, 3, 1).numpy()

    fp32 = ModuleDenoiser(copy.deepcopy(module), device, mixed_precision=False)
    modes = {"fp32-loop": (fp32_loop, f"fp32-{device.type}"), "batched": (fp32, f"fp32-{device.type}")}
    if device.type == "cuda":
        amp = ModuleDenoiser(copy.deepcopy(module), device)
        modes["batched+amp"] = (amp, str(amp.autocast_dtype).replace("torch.", ""))
    else:
        modes["batched+amp"] = "n/a (CPU: fp32)"
        if cpu_bf16:
            def bf16_cpu(images):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return fp32(images)

            modes["batched+bf16-cpu"] = (bf16_cpu, "bfloat16")
    return modes


def median_seconds(fn, images, repeats: int, device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn(images)  # warm-up (lazy initialisation, allocator, cuDNN algorithm choice)
    times = []
    for _ in range(repeats):
        sync()
        began = time.perf_counter()
        fn(images)
        sync()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def bench_shape(device, label, module, images, args) -> list:
    modes = make_modes(module, device, args.cpu_bf16)
    probe = images[: args.check]
    reference = np.clip(modes["fp32-loop"][0](probe), 0.0, 1.0)
    rows, loop_seconds = [], None
    for name, mode in modes.items():
        if isinstance(mode, str):
            rows.append((device.type, label, name, len(images), mode, "", ""))
            continue
        fn, precision = mode
        output = fn(probe)
        difference = float(np.abs(np.clip(output, 0.0, 1.0) - reference).max())
        torch.testing.assert_close(
            torch.from_numpy(np.clip(output, 0.0, 1.0)), torch.from_numpy(reference),
            rtol=0.0, atol=TOLERANCE[precision], msg=lambda m: f"{device.type} {label} {name}: {m}",
        )
        seconds = median_seconds(fn, images, args.repeats, device)
        loop_seconds = seconds if name == "fp32-loop" else loop_seconds
        rows.append((device.type, label, f"{name} ({precision.split('-')[0]})", len(images),
                     f"{len(images) / seconds:,.1f}", f"{loop_seconds / seconds:.2f}x", f"{difference:.1e}"))
    return rows


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} torch threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cpu, plus cuda when available")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median reported)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--images-28", type=int, help="images of 28x28x1 (default 512 CPU / 4096 CUDA)")
    parser.add_argument("--images-224", type=int, help="images of 224x224x3 (default 8 CPU / 256 CUDA)")
    parser.add_argument("--depth-28", type=int, default=10)
    parser.add_argument("--channels-28", type=int, default=32)
    parser.add_argument("--depth-224", type=int, default=17)
    parser.add_argument("--channels-224", type=int, default=64)
    parser.add_argument("--check", type=int, default=4, help="images compared across modes before timing")
    parser.add_argument("--cpu-bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the batched path under CPU autocast bfloat16")
    args = parser.parse_args()
    if args.check < 1 or args.repeats < 1:
        parser.error("--check and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    names = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = [torch.device(name) for name in names]

    print("# Denoiser throughput\n")
    print(f"command: `{shlex.join([sys.executable] + sys.argv)}`  ")
    print(f"torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}  ")
    for device in devices:
        print(f"{device.type}: {device_name(device)}  ")
    print("weights: random (throughput does not depend on them); inputs: noisy copies (sigma 0.25)  ")
    print(f"timing: median of {args.repeats} run(s) after 1 warm-up; outputs of every mode checked "
          f"against fp32-loop on the first {args.check} images (max abs diff column)\n")

    specs = [("28x28x1", (28, 28, 1), args.depth_28, args.channels_28, args.images_28, 0),
             ("224x224x3", (224, 224, 3), args.depth_224, args.channels_224, args.images_224, 1)]
    rows = []
    for device in devices:
        for label, shape, depth, channels, count, which in specs:
            count = count or DEFAULT_IMAGES[device.type][which]
            module = random_dncnn(shape[2], depth, channels)
            rows += bench_shape(device, f"{label}, DnCNN d{depth}/c{channels}", module,
                                noisy_inputs(count, shape), args)

    header = ("device", "input, model", "mode (precision)", "images", "images/s", "vs fp32-loop", "max abs diff")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" if i >= 3 else "---" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


if __name__ == "__main__":
    main()
