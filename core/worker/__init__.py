"""The worker kit: the one training loop and everything around it that no framework changes.

Backend workers import it inside their own environment, so every module here needs only
the standard library and numpy (held-out scoring and the final export also use the
tokenizer and the converters every backend environment has). A backend's
``worker.py`` implements :class:`ftx.core.worker.framework.Framework` and hands it to
:func:`ftx.core.worker.loop.train`.

framework.py    the framework interface (a Protocol), and this process's :class:`Rank`
loop.py         the loop: processes, seed, data, model, resume, held-out, steps, final
objectives.py   training stages as objectives: how a batch is collated and normalised
schedule.py     the seeded micro-batch order, the same on every backend
tracking.py     signals, the metrics window, the loop's bookkeeping (RunTracker)
checkpoints.py  staged checkpoint folders, rotation, resume, the host's RNG state
heldout.py      greedy decoding and exact match on held-out prompts (OUT/eval.json)
exports.py      OUT/final: HF weights or a PEFT adapter, the native files, the merge
rules.py        the rules every backend shares: weight decay, clipping, LoRA's A, packing spans
throughput.py   FLOPs per token and model FLOPs utilisation
entry.py        a worker's entry point: the config read, failures to OUT/error.json
"""
