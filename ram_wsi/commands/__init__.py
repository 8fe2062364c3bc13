"""The command lines of the package's tools, apart from the code that runs them.

Why apart: ``ram-wsi score``, ``convert`` and ``bench NAME`` run code that imports torch, Ray
and the slide libraries on load (seconds); their options are parsed and checked here, with
nothing heavier than argparse and YAML, so a mistaken option is one line in a fraction of a
second and the run starts only with arguments that hold. ``ram_wsi.cli`` (and the benchmark
dispatcher) parse with these, then import what runs.

* :mod:`.score`: ``ram-wsi score`` (:func:`~.score.parse_score`);
* :mod:`.convert`: ``ram-wsi convert`` (:func:`~.convert.parse_convert`);
* :mod:`.bench`: ``ram-wsi bench NAME`` (:func:`~.bench.parse_bench`).
"""
