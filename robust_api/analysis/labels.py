"""Human names for analysis groups: the legends of plots, the rows of LaTeX tables and the
headings of HTML reports.

A group's key holds machine identities (``google:label_detection@127.0.0.1:38775``,
``denoiser:fashion-mnist-dncnn-0.25``, ``N0=20 N=100``); a figure for a paper wants
"Google (emulator), DnCNN σ=0.25, Cohen N=100". Names are built from the key alone (pure
functions, nothing read): the provider, the denoiser with σ, the method with its budget, and
α, the model version or the source only where they tell the groups apart. Two groups that
would get the same name get the longer form, then a number. Identities are text from a log:
escape the names before putting them in HTML or LaTeX, as the report's writers do.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Optional, Sequence
from urllib.parse import urlsplit

__all__ = ["provider_label", "denoiser_label", "method_label", "group_label", "group_labels"]

_CLOUD = {"google": "Google", "aws": "AWS Rekognition", "azure": "Azure", "clarifai": "Clarifai"}
_LOCAL_MODELS = {"fashion_mnist_cnn": "Fashion-MNIST CNN"}
_ARCHITECTURES = {"dncnn": "DnCNN", "photonet": "PhotoNet", "ffdnet": "FFDNet", "unet": "U-Net"}
_OBJECTIVES = {"mse": "MSE", "stab": "stab"}
_DATASETS = {"fashion", "mnist", "photo", "cifar10", "imagenet"}
_NUMBER = re.compile(r"^\d+(\.\d+)?$")


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _endpoint_note(endpoint: str) -> str:
    """"emulator" for a loopback ``host[:port]`` (the emulators bind only there), else the host."""
    if endpoint.startswith("[") and "]" in endpoint:  # [::1]:port
        host = endpoint[: endpoint.find("]") + 1]
    else:
        host = endpoint.partition(":")[0]
    return "emulator" if _is_loopback(host) else host


def provider_label(identity: Optional[str]) -> str:
    """A provider identity as a reader would name it.

    ``google:label_detection`` → "Google", ``google:label_detection@127.0.0.1:38775`` →
    "Google (emulator)", ``azure:image_analysis.v4.tags`` → "Azure v4",
    ``local:fashion_mnist_cnn`` → "Fashion-MNIST CNN (local)", ``callable:pkg.fn`` → "fn
    (callable)", ``legacy:azure`` → "Azure (predecessor log)", ``tsv:/path/log.txt`` →
    "predecessor TSV log.txt" (never a folder). Anything else is returned as it is.
    """
    if not identity:
        return "-"
    kind, _, rest = identity.partition(":")
    if not rest:
        return identity
    if kind in _CLOUD:
        base, at, endpoint = rest.partition("@")
        name = _CLOUD[kind]
        if kind == "azure":
            version = "v4" if ".v4" in base else "v3.2" if ".v3.2" in base else ""
            name = f"{name} {version}".rstrip()
        return f"{name} ({_endpoint_note(endpoint)})" if at else name
    if kind == "local":
        model = _LOCAL_MODELS.get(rest) or (
            "EfficientNet-Lite" + rest[len("efficientnet-lite"):] if rest.startswith("efficientnet-lite") else rest
        )
        return f"{model} (local)"
    if kind == "http":
        host = urlsplit(rest).hostname if "://" in rest else None
        if host is None:
            return f"HTTP {rest}"
        return "HTTP model (local server)" if _is_loopback(host) else f"HTTP model ({host})"
    if kind == "callable":
        return f"{rest.rsplit('.', 1)[-1]} (callable)"
    if kind == "legacy":
        return f"{_CLOUD.get(rest, rest)} (predecessor log)"
    if kind == "tsv":
        return f"predecessor TSV {os.path.basename(rest)}"
    return identity


def denoiser_label(denoiser: Optional[str], noise_sd: Optional[float] = None) -> Optional[str]:
    """A denoiser id as a reader would name it; None without a denoiser.

    ``denoiser:fashion-mnist-dncnn-0.25`` → "DnCNN" (with ``noise_sd`` = 0.25, the σ it was
    trained for), "DnCNN (trained σ=0.25)" when ``noise_sd`` is another σ;
    ``denoiser:photonet-mse`` → "PhotoNet-MSE"; ``module:pkg.MyDenoiser`` → "MyDenoiser".
    """
    if denoiser in (None, "", "none", "-"):
        return None
    kind, _, name = denoiser.partition(":")
    if not name:
        return denoiser
    if kind == "module":
        return name.rsplit(".", 1)[-1]
    tokens = name.lower().split("-")
    arch = [t for t in tokens if t in _ARCHITECTURES]
    if not arch:
        return name
    words = [_ARCHITECTURES[arch[0]]] + [_OBJECTIVES[t] for t in tokens if t in _OBJECTIVES]
    label = "-".join(words)
    trained = [t for t in tokens if _NUMBER.match(t)]
    unknown = [t for t in tokens if t not in _ARCHITECTURES and t not in _OBJECTIVES and t not in _DATASETS
               and not _NUMBER.match(t)]
    if unknown:  # a name this table does not understand: keep all of it
        return name
    if trained and (noise_sd is None or abs(float(trained[-1]) - noise_sd) > 1e-9):
        label += f" (trained σ={float(trained[-1]):g})"
    return label


def method_label(method: Optional[str], settings: Optional[str] = None, verbose: bool = False) -> str:
    """A method and its budget: "Cohen N=100", "top-2 N=40", "sequential r=0.25 N≤400";
    ``verbose`` keeps N0 ("Cohen N0=20 N=100"). Either part may be None (not grouped by)."""
    names = {"cohen": "Cohen", "top2": "top-2", "sequential": "sequential"}
    parts = [names.get(method, method)] if method else []
    if settings and settings != "-":
        words = settings.split()
        clean = "clean" in words
        words = [w for w in words if w != "clean" and (verbose or not w.startswith("N0="))]
        text = " ".join(words).replace("<=", "≤")
        if text:
            parts.append(text)
        if clean:
            parts.append("(clean selection)")
    return " ".join(parts)


def _noise(key: dict) -> Optional[str]:
    """"DnCNN σ=0.25" / "σ=0.12, no denoiser" / "DnCNN" / None, from the fields the key has."""
    sigma = key.get("noise_sd")
    has_denoiser = "denoiser" in key
    denoiser = denoiser_label(key.get("denoiser"), sigma) if has_denoiser else None
    sigma_text = f"σ={sigma:g}" if isinstance(sigma, (int, float)) else None
    if denoiser and sigma_text:
        return f"{denoiser} {sigma_text}"
    if sigma_text:
        return f"{sigma_text}, no denoiser" if has_denoiser and key.get("denoiser") == "none" else sigma_text
    if denoiser:
        return denoiser
    if has_denoiser and key.get("denoiser") == "none":
        return "no denoiser"
    return None


def group_label(key: dict, show: Sequence[str] = (), verbose: bool = False) -> str:
    """One group's human name.

    Args:
        key: the group's key (``GroupSummary.key``): field → value.
        show: optional fields to name as well (``alpha``, ``model_version``, ``source``);
            :func:`group_labels` passes those whose values differ between groups.
        verbose: also N0 and every optional field of the key.
    """
    parts = []
    if "provider" in key:
        parts.append(provider_label(key["provider"]))
    if "model_version" in key and key["model_version"] and (verbose or "model_version" in show):
        parts.append(f"model {key['model_version']}")
    noise = _noise(key)
    if noise:
        parts.append(noise)
    if "method" in key or "settings" in key:
        method = method_label(key.get("method"), key.get("settings"), verbose=verbose)
        if method:
            parts.append(method)
    if "alpha" in key and key["alpha"] is not None and (verbose or "alpha" in show):
        parts.append(f"α={key['alpha']:g}")
    if "source" in key and key["source"] and (verbose or "source" in show):
        parts.append(os.path.basename(str(key["source"])))
    return ", ".join(parts) or "all"


def group_labels(keys: Sequence[dict]) -> list[str]:
    """Human names of several groups, one per key, all different.

    Optional fields (α, model version, source) are named only where the groups differ in
    them. Groups that would share a name get the verbose form; groups that still do get
    " [1]", " [2]" ... in their order.
    """
    keys = list(keys)
    optional = ("alpha", "model_version", "source")
    show = [f for f in optional if len({repr(key.get(f)) for key in keys}) > 1]
    labels = [group_label(key, show) for key in keys]
    counts = Counter(labels)
    labels = [group_label(key, show, verbose=True) if counts[label] > 1 else label
              for key, label in zip(keys, labels)]
    counts = Counter(labels)
    seen: Counter = Counter()
    out = []
    for label in labels:
        if counts[label] > 1:
            seen[label] += 1
            label = f"{label} [{seen[label]}]"
        out.append(label)
    return out
