"""Operations for *browsing* galleries (the web page's gallery view), mixed into ``image_recognition``.

- ``galleries``: the galleries of the scenario (the pack's declared ones and those created by ``add``), which is
  the default, and the scenario's values of the parameters the page shows as sliders;
- ``labels``: labels with their item counts and the first items of each, with thumbnails (data URLs), optionally
  only labels containing ``contains`` (case-insensitive), ``limit`` labels from ``offset``.

Both are reads: they need the admin token only when the server protects reads (``protect_reads``).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from shitu.serving.engine.engine import Engine

if TYPE_CHECKING:
    from shitu.serving.hub.request_models import LabelsRequest, Request
    from shitu.serving.hub.service import Call

#: The parameters the web page offers as sliders, by short name.
PAGE_PARAMS = ("Global.threshold", "Global.max_det_results", "IndexProcess.score_thres")


def gallery_names(engine: Engine) -> list[str]:
    """The pack's declared galleries, then every gallery folder of the scenario, sorted; the default first."""
    from shitu.plugins import registry
    from shitu.plugins.errors import PackError
    from shitu.serving.gallery.local import DB_NAME

    names = {engine.default_gallery}
    try:
        names.update(registry.get_pack(engine.scenario).galleries)
    except PackError:  # an engine built from model folders, not from a pack
        pass
    root = engine.gallery_root
    if root is not None and root.is_dir():
        names.update(d.name for d in root.iterdir() if (d / DB_NAME).is_file())
    return [engine.default_gallery] + sorted(names - {engine.default_gallery})


class GalleryViewOps:
    """``op_galleries`` and ``op_labels``; used as a base of :class:`~shitu.serving.hub.service.RecognitionService`."""

    def op_galleries(self, call: Call[Request]) -> dict[str, Any]:
        engine = call.engine
        return {
            "scenario": engine.scenario,
            "default": engine.default_gallery,
            "galleries": gallery_names(engine),
            "params": {name.split(".", 1)[1]: engine.params[name] for name in PAGE_PARAMS},
        }

    def op_labels(self, call: Call[LabelsRequest]) -> dict[str, Any]:
        from shitu.serving.gallery import thumbnails

        r, gallery = call.request, call.gallery
        limit, offset, per_label = r.limit, r.offset, r.per_label
        needle = r.contains.casefold()
        counts = [(lab, n) for lab, n in gallery.label_counts().items() if needle in lab.casefold()]
        page = counts[offset : offset + limit]
        items = {lab: gallery.list(label=lab, limit=per_label) if per_label else [] for lab, _ in page}
        thumbs = thumbnails.fetch(gallery, (r["id"] for rows in items.values() for r in rows))

        def item(record: dict[str, Any]) -> dict[str, Any]:
            jpeg = thumbs.get(record["id"])
            return {
                "id": record["id"],
                "thumbnail": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode() if jpeg else None,
            }

        return {
            "total": len(counts),
            "offset": offset,
            "labels": [{"label": lab, "count": n, "items": [item(r) for r in items[lab]]} for lab, n in page],
        }
