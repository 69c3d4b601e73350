"""int8 versions of a pack's models (``shitu plugins quantize``): calibrate on the pack's own pipeline, quantize with
onnxruntime, compare with fp32 on held-out images, install as a new pack version.

- :mod:`.int8`: one model's ONNX graph -> its int8 graph;
- :mod:`.compare`: the fp32 and int8 engines' answers side by side, and the bounds a version must meet;
- :mod:`.pack`: the whole command, from a pack name to an installed version.
"""
