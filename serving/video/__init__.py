"""Videos and streams: frame sources, sampling and recognition over time (:mod:`.stream`), the run's report
(:mod:`.report`) and the tracker that turns per-frame answers into tracks (:mod:`.tracker`). No paddle here: frames go to an engine or a client.
"""
