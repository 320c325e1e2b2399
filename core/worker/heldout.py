"""Held-out scoring: greedy answers to the evaluate section's prompts, scored by exact
match before and after training, into OUT/eval.json (rank 0).

The framework's part is :meth:`ftx.core.worker.framework.Framework.greedy`; a framework
that decodes one token at a time builds it from its next-token function with
:func:`greedy_by_next_token`. The tokenizer (transformers', which every backend
environment has) and the stop ids are read here, once, for every backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ftx.core.contract import RunLayout, WorkerConfig
from ftx.core.fsutil import atomic_write_json
from ftx.core.prepared import read_eval_prompts
from ftx.core.worker.framework import Framework, Rank

NextToken = Callable[[list[int]], int | None]  # None: no room for another token


def greedy_by_next_token(
    next_token: NextToken,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop: frozenset[int],
) -> list[list[int]]:
    """Greedy continuations from a function giving the next token after a list of ids."""
    answers = []
    for prompt in prompts:
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = next_token([*prompt, *new])
            if token is None or token in stop:
                break
            new.append(token)
        answers.append(new)
    return answers


class Decoder:
    """The model's tokenizer and the ids that end an answer: the tokenizer's eos, and the
    eos_token_id of generation_config.json (else config.json), as transformers' generate
    stops."""

    def __init__(self, model_path: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        stop = {self.tokenizer.eos_token_id}
        for name in ("generation_config.json", "config.json"):
            path = Path(model_path) / name
            if path.exists():
                configured = json.loads(path.read_text()).get("eos_token_id")
                stop |= set(configured if isinstance(configured, list) else [configured])
                break
        stop.discard(None)
        self.stop = frozenset(stop)

    def text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def exact_match_result(references: Sequence[str], answers: Sequence[str]) -> dict[str, Any]:
    """OUT/eval.json's entry for one scoring: the share of answers equal to their reference
    (both stripped), the count, the first five pairs, and every answer and reference (the
    core adds ROUGE-L and BLEU from them once the run ends: its environment has the
    scorers, a backend's has not)."""
    hits = [a.strip() == r.strip() for r, a in zip(references, answers, strict=True)]
    samples = [
        {"reference": r, "answer": a.strip(), "match": hit}
        for r, a, hit in list(zip(references, answers, hits, strict=True))[:5]
    ]
    return {
        "exact_match": sum(hits) / max(len(hits), 1),
        "examples": len(hits),
        "samples": samples,
        "answers": [a.strip() for a in answers],
        "references": list(references),
    }


class HeldOut:
    """Exact match on the held-out prompts before and after training. Rank 0 scores and
    writes; when the framework's forward is a collective every rank decodes with it."""

    BATCH = 32  # prompts per greedy() call

    def __init__(
        self,
        config: WorkerConfig,
        layout: RunLayout,
        prepared: Path,
        rank: Rank,
        framework: Framework,
        resumed: bool,
    ):
        self.settings, self.layout, self.rank, self.framework = (
            config.evaluate,
            layout,
            rank,
            framework,
        )
        scoring = rank.main or framework.collective_forward
        self.prompts = read_eval_prompts(prepared) if self.settings and scoring else []
        existing = resumed and layout.eval_json.exists()
        self.results = json.loads(layout.eval_json.read_text()) if existing else {}
        self.decoder = Decoder(config.model.path) if self.prompts else None

    def score(self, when: str) -> None:
        """Score the prompts ("before" or "after" training); "before" only once per run."""
        if not (self.prompts and self.settings and self.decoder):
            return
        if when == "before" and (not self.settings.before_training or "before" in self.results):
            return
        ids = [list(row["input_ids"]) for row in self.prompts]
        answers: list[str] = []
        for start in range(0, len(ids), self.BATCH):
            found = self.framework.greedy(
                ids[start : start + self.BATCH], self.settings.max_new_tokens, self.decoder.stop
            )
            answers += [self.decoder.text(a) for a in found]
        references = [row["reference"] for row in self.prompts]
        self.results[when] = exact_match_result(references, answers)
        if self.rank.main:
            atomic_write_json(self.layout.eval_json, self.results)
            self.rank.say(f"exact match {when} training: {self.results[when]['exact_match']:.3f}")
