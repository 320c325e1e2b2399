"""Using a trained model: ``ftx generate``, ``chat``, ``eval``, ``serve`` and ``export``.

The core resolves what to load (:mod:`.source`: a model folder, an adapter, a run's OUT),
renders prompts with the run's chat template and knows its stop tokens (:mod:`.prompting`),
and talks to a decoder process in the chosen backend's environment (:mod:`.session`)
through the typed messages of :mod:`ftx.core.contract`. The decoder's loop, the sampling
rule and the scoring arithmetic are shared by every backend (:mod:`.decoding`); a backend
supplies only its model's logits (``backends/<name>/decode.py``), so one model gives the
same greedy tokens whichever framework runs it.
"""
