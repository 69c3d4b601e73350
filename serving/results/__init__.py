"""Result types shared by the engine, the server, the video tools and the client SDK; a leaf of the house.

- :mod:`.types` -- :class:`Detections`, :class:`Match`, :class:`Recognition`.
- :mod:`.explanation` -- :class:`~.explanation.Explanation`: why an answer came out as it did (``explain``).
- :mod:`.draw` -- annotated copies (boxes, labels, the explanation's dashed boxes, video tracks), with PIL.

Imports numpy and PIL only: never paddle, OpenCV, faiss, nor any other room of the house, so ``pip install
shitu-hub`` (the client) can use all of it.
"""

from shitu.serving.results.types import Detections, Match, Recognition

__all__ = ["Detections", "Match", "Recognition"]
