"""onnxruntime sessions of the detector and the recogniser must not spin idle pool threads: each session owns a
pool, and on few cores a spinning pool starves the other model (the pipeline on onnxruntime measured 180 ms
end-to-end spinning, 41-72 ms not, paddle 95 ms; see README Benchmarks). Real models, real onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("model", ["det", "rec"])
def test_onnxruntime_sessions_sleep_instead_of_spinning_real_models(models_dir, photos, model):
    pytest.importorskip("onnxruntime")
    from shitu.model_spec import ModelSpec
    from shitu.serving.engine.predictor import Predictor, RuntimeOptions
    from shitu.serving.engine.transforms import Transforms

    spec = ModelSpec.from_dir(models_dir / model)
    pred = Predictor(spec, RuntimeOptions(backend="onnxruntime"))
    options = pred._impl._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    x = Transforms(spec.transform_ops, spec.input_color)(photos["cat"]).image[None]
    out = pred.run({pred.input_names[0]: x})
    assert all(np.isfinite(v).all() for v in out.values())
