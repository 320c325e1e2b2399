"""Held-out exact match for workers that decode one prompt at a time (paddle, mindformers).

Runs inside a backend's environment: standard library, numpy and transformers' tokenizer
(every backend environment has it). The framework's part is one ``next_token(ids)``
function: the greedy next token after the token ids ``ids`` (None ends the answer).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftx.core.contract import RunLayout, WorkerConfig
from ftx.core.fsutil import atomic_write_json
from ftx.core.prepared import read_eval_prompts
from ftx.core.workerkit import Rank, exact_match_result

NextToken = Callable[[list[int]], int | None]  # None: no room for another token


class Decoder:
    """The model's tokenizer (transformers', as the torch worker decodes) and the token ids
    that end an answer (eos, and generation_config.json's eos_token_id)."""

    def __init__(self, model_path: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        stop = {self.tokenizer.eos_token_id}
        generation = Path(model_path) / "generation_config.json"
        if generation.exists():
            configured = json.loads(generation.read_text()).get("eos_token_id")
            stop |= set(configured if isinstance(configured, list) else [configured])
        stop.discard(None)
        self.stop = stop

    def greedy(self, next_token: NextToken, prompt: list[int], max_new_tokens: int) -> str:
        """The decoded answer greedy decoding gives after ``prompt``."""
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = next_token(prompt + new)
            if token is None or token in self.stop:
                break
            new.append(token)
        return self.tokenizer.decode(new, skip_special_tokens=True)


class HeldOut:
    """Greedy-generation exact match on held-out prompts, into OUT/eval.json (rank 0).

    ``next_token`` runs with the model in evaluation mode; ``train_mode(flag)`` switches it.
    """

    def __init__(
        self,
        config: WorkerConfig,
        layout: RunLayout,
        prepared: Path,
        rank: Rank,
        resumed: bool,
        next_token: NextToken,
        train_mode: Callable[[bool], Any],
    ):
        self.settings, self.layout, self.rank = config.evaluate, layout, rank
        self.next_token, self.train_mode = next_token, train_mode
        self.prompts = read_eval_prompts(prepared) if self.settings and rank.main else []
        existing = resumed and layout.eval_json.exists()
        self.results = json.loads(layout.eval_json.read_text()) if existing else {}
        # The tokenizer and the stop tokens, read once for both scorings.
        self.decoder = Decoder(config.model.path) if self.prompts else None

    def exact_match(self, when: str) -> None:
        if not (self.prompts and self.settings and self.decoder):
            return
        if when == "before" and (not self.settings.before_training or "before" in self.results):
            return
        self.train_mode(False)
        answers = [
            self.decoder.greedy(
                self.next_token, list(row["input_ids"]), self.settings.max_new_tokens
            )
            for row in self.prompts
        ]
        self.train_mode(True)
        references = [row["reference"] for row in self.prompts]
        self.results[when] = exact_match_result(references, answers)
        atomic_write_json(self.layout.eval_json, self.results)
        self.rank.say(f"exact match {when} training: {self.results[when]['exact_match']:.3f}")
