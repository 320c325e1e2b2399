"""The decoder process's loop, shared by every backend (runs inside a backend's
environment: standard library and numpy only).

A backend's ``decode.py`` loads the model and hands :func:`serve` a :class:`Logits`: the
next-token logits of a token sequence. Everything else is here, once: the greedy or
sampled choice (:func:`choose`), when an answer ends, cancellation, and the negative
log-likelihood of scored rows (float64 log-softmax of the framework's logits).
"""

from __future__ import annotations

import abc
import json
import os
import queue
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np

from ftx.core.contract import (
    ContractError,
    DecodeEvent,
    DecodeRequest,
    DecoderModel,
    Sampling,
    ScoredRow,
    decode,
)

IGNORE_INDEX = -100


class Logits(abc.ABC):
    """A loaded model as the decoder sees it. Subclasses give :meth:`sequence`; those
    with a key/value cache also override :meth:`begin` and :meth:`advance`."""

    context: int  # the longest sequence the model takes

    @abc.abstractmethod
    def sequence(self, ids: Sequence[int]) -> np.ndarray:
        """The logits at every position of ``ids`` ([len(ids), vocab])."""

    def begin(self, ids: Sequence[int]) -> np.ndarray:
        """The next-token logits after ``ids``, a new sequence ([vocab])."""
        self._ids = list(ids)
        return self.sequence(self._ids)[-1]

    def advance(self, token: int) -> np.ndarray:
        """The next-token logits once ``token`` is appended to the current sequence."""
        self._ids.append(token)
        return self.sequence(self._ids)[-1]


class CachedLogits(Logits):
    """A model that keeps the keys and values of what it has seen (transformers' and
    PaddleFormers' caches): only the new token goes through it at each step."""

    _cache: Any = None

    @abc.abstractmethod
    def forward(self, ids: Sequence[int], cache: Any) -> tuple[np.ndarray, Any]:
        """The logits at the positions of ``ids`` ([len(ids), vocab]) after what
        ``cache`` holds (None: nothing), and the cache including ``ids``."""

    def sequence(self, ids: Sequence[int]) -> np.ndarray:
        return self.forward(ids, None)[0]

    def begin(self, ids: Sequence[int]) -> np.ndarray:
        logits, self._cache = self.forward(ids, None)
        return logits[-1]

    def advance(self, token: int) -> np.ndarray:
        logits, self._cache = self.forward([token], self._cache)
        return logits[-1]


def choose(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """The next token: the argmax at temperature 0 (the first on ties, as torch's);
    otherwise drawn from softmax(logits / temperature) kept to the smallest set of most
    likely tokens whose probability reaches top_p."""
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / sampling.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        kept = order[: int(np.searchsorted(np.cumsum(probs[order]), sampling.top_p)) + 1]
        nucleus = np.zeros_like(probs)
        nucleus[kept] = probs[kept]
        probs = nucleus / nucleus.sum()
    return int(rng.choice(len(probs), p=probs))


def row_nll(logits: np.ndarray, labels: Sequence[int]) -> tuple[float, int]:
    """The summed negative log-likelihood of a row's labels (position t scores label t+1)
    and how many were scored."""
    targets = np.asarray(labels[1:], dtype=np.int64)
    scored = targets != IGNORE_INDEX
    if not scored.any():
        return 0.0, 0
    z = logits[:-1][scored].astype(np.float64)
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    picked = z[np.arange(len(z)), targets[scored]]
    return float((log_norm - picked).sum()), int(scored.sum())


class Requests:
    """The decoder's stdin, read by a thread of its own: requests in arrival order; while
    an answer is generated, a ``cancel`` for it is noticed between two tokens (other
    requests wait their turn)."""

    def __init__(self, stream: TextIO, malformed: Callable[[str], None]):
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.malformed = malformed
        self.waiting: deque[DecodeRequest] = deque()
        self.cancelled: set[str] = set()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: TextIO) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)  # the input closed

    def _take(self, block: bool) -> DecodeRequest | bool | None:
        """The next request; None when the input closed; False when none is waiting."""
        while True:
            try:
                line = self.lines.get(block=block)
            except queue.Empty:
                return False
            if line is None:
                self.lines.put(None)  # stays closed for later reads
                return None
            try:
                return decode(DecodeRequest, json.loads(line), "decode request")
            except (json.JSONDecodeError, ContractError) as exc:
                self.malformed(str(exc))  # answered with an error event; on to the next

    def next(self) -> DecodeRequest | None:
        """The next request to serve (None once the input closed)."""
        while True:
            request = self.waiting.popleft() if self.waiting else self._take(block=True)
            if not isinstance(request, DecodeRequest):
                return None
            if request.op != "cancel":
                return request
            self.cancelled.add(request.target)

    def cancel_requested(self, request_id: str) -> bool:
        """Whether ``request_id`` was cancelled, taking in what arrived meanwhile."""
        while isinstance(request := self._take(block=False), DecodeRequest):
            if request.op == "cancel":
                self.cancelled.add(request.target)
            else:
                self.waiting.append(request)
        return request_id in self.cancelled


def generate(
    model: Logits,
    request: DecodeRequest,
    emit: Callable[[DecodeEvent], None],
    cancelled: Callable[[], bool] = lambda: False,
) -> None:
    """Answer a ``generate`` request: a ``token`` event per new id, then ``done``."""
    sampling, stop = request.sampling, frozenset(request.stop)
    rng = np.random.default_rng(sampling.seed)
    room = min(sampling.max_new_tokens, model.context - len(request.prompt))
    reason = "length"
    if room > 0:
        logits = model.begin(request.prompt)
        for produced in range(room):
            if cancelled():
                reason = "cancelled"
                break
            token = choose(logits, sampling, rng)
            if token in stop:
                reason = "stop"
                break
            emit(DecodeEvent(request.id, "token", token=token))
            if produced + 1 < room:
                logits = model.advance(token)
    emit(DecodeEvent(request.id, "done", finish_reason=reason))


def score(model: Logits, rows: Sequence[ScoredRow]) -> tuple[float, int]:
    """The summed NLL of the rows' labels and how many were scored."""
    total, count = 0.0, 0
    for row in rows:
        nll, scored = row_nll(model.sequence(list(row.input_ids)), row.labels)
        total, count = total + nll, count + scored
    return total, count


def serve(load: Callable[[DecoderModel], Logits], argv: Sequence[str] | None = None) -> int:
    """A backend decoder's main: load the model named by argv[1] (a DecoderModel as
    JSON), say ``ready``, then answer requests from stdin until it closes."""
    args = list(sys.argv[1:] if argv is None else argv)
    out = sys.stdout

    def emit(event: DecodeEvent) -> None:
        out.write(event.line() + "\n")
        out.flush()

    try:
        spec = decode(DecoderModel, json.loads(args[0]), "decoder model")
        model = load(spec)
    except Exception as exc:  # the core reports it: a model the framework cannot load
        emit(DecodeEvent("", "error", message=_describe(exc)))
        return 2
    emit(DecodeEvent("", "ready", context=model.context))
    requests = Requests(sys.stdin, lambda why: emit(DecodeEvent("", "error", message=why)))
    while (request := requests.next()) is not None:
        try:
            if request.op == "generate":
                generate(model, request, emit, lambda r=request: requests.cancel_requested(r.id))
            else:
                nll, count = score(model, request.rows)
                emit(DecodeEvent(request.id, "scored", nll=nll, tokens=count))
        except Exception as exc:  # one request's failure is its answer, not the decoder's end
            emit(DecodeEvent(request.id, "error", message=_describe(exc)))
    return 0


def _describe(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" (at {os.path.basename(frame[0].filename)}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{at}"


def main_of(load: Callable[[DecoderModel], Logits]) -> Any:
    """``if __name__ == "__main__": main_of(load)`` for a backend's decode module."""
    sys.exit(serve(load))
