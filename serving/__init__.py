"""The runtime the hub modules share. Importing this package imports nothing else; pick the module you need.

Engine (needs paddle):

- :mod:`.predictor` -- one wrapper over paddle.inference (and onnxruntime) for every model.
- :mod:`.model_spec` -- what a model folder is (``shitu_model.yml`` / PaddleDetection's ``infer_cfg.yml``).
- :mod:`.transforms` -- pre-processing from PaddleClas op lists.
- :mod:`.detection`, :mod:`.extraction`, :mod:`.pipeline` -- mainbody boxes, embeddings, recognition.
- :mod:`.engine` -- ``load_engine()``: one scenario's models, parameters and galleries.

Galleries (faiss + SQLite): :mod:`.gallery`, :mod:`.gallery_file`, :mod:`.gallery_build`, :mod:`.gallery_cli`.

Serving: :mod:`.service` (request handling per capability), :mod:`.hub_module` (the modules' base class),
:mod:`.hub_app` (PaddleHub/Flask hooks), :mod:`.hub_serving` (install, start, stop ``hub serving``).

Light, no paddle: :mod:`.results` (result types), :mod:`.images` (decoding and limits), :mod:`.client` (SDK),
:mod:`.draw`, :mod:`.video` + :mod:`.tracking` (videos and streams), :mod:`.timing`.
"""
