"""Fine-tuning the recogniser's last layers through ``paddle.jit.load``, on CPU, after the projection head.

``shitu adapt --method finetune``: the head is first trained on frozen features (:mod:`.adapt`, cheap); then the
inference program is loaded as a trainable layer (``paddle.jit.load``: the weights of the folder's
``model.pdiparams``), every parameter but those of its last ``layers`` convolutions is frozen, and the network,
GeM/GAP pooling and the head are trained together on fresh augmented views (cosine softmax over the gallery's
labels, class centres started at the labels' mean embeddings). Training runs the program in train mode, which for
these exported networks (convolutions with folded batch norm) computes what inference computes.

The result is saved with ``paddle.jit.save`` as ``model.json`` + ``model.pdiparams`` beside the head's
``projection.npy``. The network's ONNX copy is not carried over (its weights are the old ones), so the folder runs
on paddle.inference. Galleries must be embedded again from their images: no linear map takes old vectors there.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shitu.model_spec import ModelSpec
from shitu.serving.adapt.head import AdaptReport, _r1, embed_views, heldout_backgrounds, make_view
from shitu.serving.engine.extraction import l2_normalize
from shitu.serving.engine.transforms import Transforms

__all__ = ["finetune", "save_network"]


def _layer_index(name: str) -> tuple[int, str]:
    """Program order of a parameter (``conv2d_12.w_0_0`` -> 12): names sort ``conv2d_10`` before ``conv2d_2``."""
    m = re.search(r"_(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


class _Net:
    """The loaded program + pooling + head, as paddle tensors."""

    def __init__(
        self,
        spec: ModelSpec,
        pooling: str,
        gem_power: float,
        head: np.ndarray,
        layers: int,
        centre: np.ndarray | None = None,
    ):
        import paddle

        model, _params = spec.files()
        if model.suffix != ".json":
            raise RuntimeError(f"{model}: fine-tuning needs a PIR program (.json); this is {model.suffix}")
        self.layer = paddle.jit.load(str(model.with_suffix("")))
        self.layer.train()
        params = sorted(self.layer.parameters(), key=lambda p: _layer_index(p.name))
        weights = [p for p in params if ".w_" in p.name]
        last = {_layer_index(p.name)[0] for p in weights[-layers:]} if layers > 0 else set()
        self.trainable = [p for p in params if _layer_index(p.name)[0] in last]
        chosen = {p.name for p in self.trainable}  # by name: ``in`` would compare tensors element-wise
        for p in params:
            p.stop_gradient = p.name not in chosen
        self.pooling, self.power = pooling, gem_power
        self.centre = None if centre is None else paddle.to_tensor(np.asarray(centre, np.float32).reshape(1, -1))
        self.head = paddle.create_parameter(
            list(head.shape), "float32", default_initializer=paddle.nn.initializer.Assign(head)
        )
        self.transforms = Transforms(spec.transform_ops, spec.input_color)
        self.input_name = list(getattr(self.layer, "_input_args_names", None) or [])

    def features(self, images: Sequence[np.ndarray]) -> Any:
        import paddle

        x = paddle.to_tensor(np.stack([self.transforms(img).image for img in images]).astype(np.float32))
        out = self.layer(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        if out.ndim == 4:
            if self.pooling == "gem":
                out = paddle.clip(out, min=1e-6).pow(self.power).mean(axis=[2, 3]).pow(1.0 / self.power)
            else:
                out = out.mean(axis=[2, 3])
        out = out.reshape([len(images), -1])
        if self.centre is not None:  # what the extractor subtracts after pooling, before the head
            out = out - self.centre
        return out @ self.head

    def embed(self, images: Sequence[np.ndarray], batch: int = 16) -> np.ndarray:
        import paddle

        with paddle.no_grad():
            parts = [self.features(list(images[i : i + batch])).numpy() for i in range(0, len(images), batch)]
        return np.concatenate(parts).astype(np.float32)


def finetune(*args: Any, **kwargs: Any) -> tuple[_Net, AdaptReport]:
    """Fine-tune the last ``layers`` convolutions of ``spec``'s network with ``head`` after pooling; returns the
    trained net (save it with :func:`save_network`) and a report of held-out R@1 (head only -> fine-tuned).

    Arguments: see :func:`_finetune`. (Paddle 3.3.1 warns on every call of a loaded PIR program that its tensors
    have no place; nothing to act on, so that warning is silenced here.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*do not have 'place' interface.*", category=UserWarning)
        return _finetune(*args, **kwargs)


def _finetune(
    spec: ModelSpec,
    pooling: str,
    gem_power: float,
    head: np.ndarray,
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    backgrounds: Sequence[np.ndarray],
    *,
    steps: int = 40,
    batch: int = 8,
    layers: int = 4,
    lr: float = 1e-4,
    scale: float = 16.0,
    seed: int = 0,
    centre: np.ndarray | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> tuple[_Net, AdaptReport]:
    import paddle
    import paddle.nn.functional as F

    t0 = time.perf_counter()
    paddle.seed(seed)
    rng = np.random.RandomState(seed + 1)
    names = sorted(set(labels))
    target_of = {n: i for i, n in enumerate(names)}
    net = _Net(spec, pooling, gem_power, head, layers, centre)
    gallery0 = net.embed(images)  # held-out views: the head's report's (same seed), made again when needed
    held0, held_owner = embed_views(net.embed, images, heldout_backgrounds(), 3, seed + 1000)
    before = _r1(held0, held_owner, gallery0, labels)
    centres0 = np.stack(
        [l2_normalize(gallery0[[i for i, lab in enumerate(labels) if lab == n]]).mean(0) for n in names]
    ).T
    centres = paddle.create_parameter(
        list(centres0.shape), "float32", default_initializer=paddle.nn.initializer.Assign(centres0)
    )
    opt = paddle.optimizer.Adam(lr, parameters=[*net.trainable, net.head, centres])
    loss = None
    for step in range(steps):  # fresh views every step (nothing kept in memory but the batch)
        owner = rng.randint(len(images), size=batch)
        batch_views = [make_view(images[i], backgrounds[rng.randint(len(backgrounds))], rng) for i in owner]
        z = F.normalize(net.features(batch_views), axis=1)
        y = paddle.to_tensor(np.array([target_of[labels[i]] for i in owner], np.int64))
        loss = F.cross_entropy(scale * z @ F.normalize(centres, axis=0), y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        if step % 10 == 0:
            log(f"fine-tune step {step}/{steps}: loss {float(loss):.3f} ({time.perf_counter() - t0:.0f} s)")
    held1, _ = embed_views(net.embed, images, heldout_backgrounds(), 3, seed + 1000)
    after = _r1(held1, held_owner, net.embed(images), labels)
    report = AdaptReport(
        len(names),
        steps * batch,
        len(held_owner),
        steps,
        float(loss) if loss is not None else float("nan"),
        before,
        after,
        seconds=time.perf_counter() - t0,
        labels=names,
    )
    return net, report


def save_network(net: _Net, spec: ModelSpec, out_dir: Path) -> tuple[str, str]:
    """``paddle.jit.save`` the fine-tuned network into ``out_dir`` as ``model.json`` + ``model.pdiparams`` (the
    input shaped as the pre-processing makes it); returns the two file names."""
    import paddle

    probe = net.transforms(np.zeros((64, 64, 3), np.uint8)).image
    names = net.input_name or ["x"]
    spec_in = paddle.static.InputSpec([None, *probe.shape], "float32", names[0])
    net.layer.eval()
    paddle.jit.save(net.layer, str(Path(out_dir) / "model"), input_spec=[spec_in])
    return "model.json", "model.pdiparams"
