"""Generation metrics of answers against references: exact match, ROUGE-L (through
``rouge-score``) and BLEU (through ``sacrebleu``), the measures LLaMA-Factory's
``predict`` and PaddleNLP's ``eval_with_do_generation`` report; and the loss and
perplexity of a scored set."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

# A word, or one CJK character: rouge-score's own tokenizer drops every non-ASCII
# character, which would score Chinese and Japanese answers as empty.
TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|[^\W_]+", re.UNICODE)
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


class _Words:
    """rouge-score's tokenizer interface: lower-cased words and CJK characters."""

    def tokenize(self, text: str) -> list[str]:
        return TOKEN.findall(text.lower())


def generation_metrics(references: Sequence[str], answers: Sequence[str]) -> dict[str, Any]:
    """Exact match (share of answers equal to their reference, both stripped), ROUGE-L F1
    and corpus BLEU (both 0-100; BLEU with sacrebleu's ``zh`` tokenizer when a reference
    holds CJK text, else its default ``13a``), and the example count."""
    import sacrebleu
    from rouge_score import rouge_scorer

    pairs = list(zip(references, answers, strict=True))
    if not pairs:
        return {"examples": 0, "exact_match": 0.0, "rouge_l": 0.0, "bleu": 0.0}
    hits = sum(a.strip() == r.strip() for r, a in pairs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())
    rouge = [scorer.score(r, a)["rougeL"].fmeasure for r, a in pairs]
    tokenize = "zh" if any(CJK.search(r) for r in references) else "13a"
    bleu = sacrebleu.corpus_bleu(list(answers), [list(references)], tokenize=tokenize)
    return {
        "examples": len(pairs),
        "exact_match": hits / len(pairs),
        "rouge_l": 100 * sum(rouge) / len(rouge),
        "bleu": float(bleu.score),
    }


def loss_metrics(nll: float, tokens: int) -> dict[str, Any]:
    """Mean negative log-likelihood per scored token and its perplexity."""
    loss = nll / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "scored_tokens": tokens}
