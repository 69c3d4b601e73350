"""What a gallery imposes on the requests that search it: its framing rule and its ``score_thres: auto`` (issue #28).

:class:`GalleryRules` reads both from the gallery's record (:mod:`shitu.serving.gallery.settings`), caches them per
open gallery and writes them when a gallery is built or grows:

- **framing** -- an empty gallery adopts the engine's ``Global.framing`` / ``Global.crop_padding`` when its first
  items are embedded, and keeps that rule: every later add embeds with it, every search crops with it
  (:mod:`.framing`). A gallery that records none but has items (built before issue #28 or made elsewhere) keeps
  the pre-#28 rule: ``whole_image`` with the engine's ``crop_padding``.
- **score_thres** -- ``auto`` resolves to the gallery's recorded threshold (:mod:`.calibration`), computed when the
  gallery records none (:data:`~.calibration.FALLBACK` for a gallery that cannot give one, e.g. of one label).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shitu.params import Params, flatten
from shitu.serving.engine import calibration
from shitu.serving.engine.framing import Framing, fill_colour, frame_image
from shitu.serving.gallery.settings import can_record, read_settings, update_settings


class GalleryRules:
    """Per-gallery framing and threshold for one engine (its parameters give the defaults)."""

    def __init__(self, params: Params, transform_ops: Sequence[dict[str, Any]]):
        self.params = params
        self.fill = fill_colour(transform_ops)
        #: id(gallery) -> (gallery, item count, settings); the gallery is kept so that its id is not reused
        self._cache: dict[int, tuple[Any, int, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    # -- reading --------------------------------------------------------------------------------------------------
    def settings(self, gallery: Any) -> dict[str, Any]:
        """The gallery's record, re-read when its item count changed (another process may have written it)."""
        n = len(gallery)
        with self._lock:
            hit = self._cache.get(id(gallery))
        if hit is not None and hit[0] is gallery and hit[1] == n:
            return hit[2]
        s = read_settings(gallery)
        with self._lock:
            self._cache[id(gallery)] = (gallery, n, s)
        return s

    def _forget(self, gallery: Any) -> None:
        with self._lock:
            self._cache.pop(id(gallery), None)

    def framing(self, gallery: Any) -> Framing:
        """The rule queries against ``gallery`` follow."""
        recorded = Framing.from_dict(self.settings(gallery).get("framing"))
        if recorded is not None:
            return recorded
        if len(gallery) == 0 and can_record(gallery):
            return Framing.of(self.params)  # what its first items will be embedded with, recorded then
        return Framing("whole_image", float(self.params["Global.crop_padding"]))

    def score_thres(self, gallery: Any) -> float:
        """``auto``'s value for ``gallery``."""
        record = self.settings(gallery).get("score_thres")
        if isinstance(record, dict) and isinstance(record.get("auto"), (int, float)):
            return float(record["auto"])
        record = self.recalibrate(gallery)
        return float(record["auto"]) if record else calibration.FALLBACK

    def apply(self, params: Params, gallery: Any, overrides: dict[str, Any] | None = None) -> Params:
        """``params`` for a request against ``gallery``: its framing (a ``crop_padding`` the request itself gives,
        ``overrides``, still wins), and ``auto`` resolved."""
        framing = self.framing(gallery)
        changes: dict[str, Any] = {"Global.framing": framing.rule, "Global.crop_padding": framing.padding}
        if overrides is not None:
            explicit = "Global.crop_padding" in flatten(overrides)
        else:  # merged at the request's edge (``params=``): a padding other than the engine's is the request's own
            explicit = params["Global.crop_padding"] != self.params["Global.crop_padding"]
        if explicit:
            del changes["Global.crop_padding"]
        if params["IndexProcess.score_thres"] == "auto":
            changes["IndexProcess.score_thres"] = self.score_thres(gallery)
        return params.apply(changes)  # canonical names and values this module made: nothing to validate again

    # -- writing --------------------------------------------------------------------------------------------------
    def adopt(self, gallery: Any) -> Framing:
        """The rule new items of ``gallery`` are embedded with; an empty gallery records the engine's now."""
        framing = self.framing(gallery)
        if "framing" not in self.settings(gallery) and len(gallery) == 0:
            update_settings(gallery, framing=framing.as_dict())
            self._forget(gallery)
        return framing

    def embedder(
        self, gallery: Any, embed: Callable[[Sequence[np.ndarray]], np.ndarray]
    ) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
        """``embed`` (whole images -> vectors) framing each image as ``gallery`` records (adopting the engine's rule
        when it is empty; ``None``: a gallery about to be made, the engine's rule)."""
        framing = Framing.of(self.params) if gallery is None else self.adopt(gallery)
        return FramedEmbedder(embed, framing, self.fill)

    def recalibrate(self, gallery: Any) -> dict[str, Any] | None:
        """Compute and record ``gallery``'s ``auto`` threshold; the record (``None``: no estimate)."""
        record = calibration.calibrate(gallery)
        if record is not None:
            update_settings(gallery, score_thres=record)
            s = {**self.settings(gallery), "score_thres": record}  # a read-only gallery keeps it in memory
            with self._lock:
                self._cache[id(gallery)] = (gallery, len(gallery), s)
        return record

    def after_add(self, gallery: Any) -> None:
        """Recompute ``auto`` after items were added, when :func:`~.calibration.needs_recompute` says so."""
        if calibration.needs_recompute(self.settings(gallery).get("score_thres"), len(gallery)):
            self.recalibrate(gallery)


class FramedEmbedder:
    """Whole images -> vectors through a framing rule; ``framing`` says which (recorded by a pack gallery build)."""

    def __init__(self, embed: Callable[[Sequence[np.ndarray]], np.ndarray], framing: Framing, fill: Sequence[float]):
        self.embed, self.framing, self.fill = embed, framing, fill

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed([frame_image(img, self.framing, self.fill) for img in images])
