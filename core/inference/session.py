"""A backend's decoder process, driven from the core: started in the backend's
environment on one model, asked for answers and scores through the contract's
:class:`~ftx.core.contract.DecodeRequest` lines, answering with
:class:`~ftx.core.contract.DecodeEvent` lines."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from ftx.core.contract import (
    DECODE_PREFIX,
    ContractError,
    DecodeEvent,
    DecodeRequest,
    DecoderModel,
    Sampling,
    ScoredRow,
    decode,
)
from ftx.core.errors import FtxError
from ftx.core.inference.source import Target, merged


@dataclasses.dataclass(frozen=True)
class Answer:
    """A finished answer: its token ids and why it ended (stop, length, cancelled)."""

    ids: list[int]
    finish_reason: str


class Decoder:
    """One backend decoder process holding ``target``. Requests are answered one at a
    time (a lock serialises callers: ``ftx serve``'s concurrent requests queue here)."""

    def __init__(
        self,
        target: Target,
        backend: str,
        *,
        context: int | None = None,
        say: Callable[[str], None] = lambda _: None,
    ):
        from ftx.core import envs
        from ftx.core.registry import get_spec

        spec = get_spec(backend, trains=False)
        if spec.decoder is None:
            raise FtxError(
                f"the {backend} backend has no decoder",
                where="--backend",
                fix="use --backend torch, paddle or mindformers",
            )
        self._workdir = tempfile.TemporaryDirectory(prefix="ftx-decode-")
        model, adapter = target.model, target.adapter
        if adapter is not None and not spec.decoder_adapters:
            say(f"merging the adapter into its base for {backend} (a copy in a temporary folder)")
            model, adapter = merged(target, Path(self._workdir.name) / "merged"), None
        wanted = min(context or target.max_positions, target.max_positions)
        request = DecoderModel(
            str(model.resolve()), str(adapter.resolve()) if adapter else None, wanted
        )
        python = envs.ensure(backend)
        self.log = Path(self._workdir.name) / "decoder.log"
        self._stderr = self.log.open("w")
        say(f"loading {target.label} with the {backend} backend")
        self.proc = subprocess.Popen(
            [str(python), "-m", spec.decoder, json.dumps(dataclasses.asdict(request))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            env={**envs.process_env(backend), "HF_HUB_OFFLINE": "1"},  # local folders only
            cwd=self._workdir.name,
            start_new_session=True,  # a Ctrl-C at the terminal is the core's to handle
        )
        self.backend, self._ids, self._lock = backend, itertools.count(1), threading.Lock()
        ready = self._next_event()
        if ready.kind != "ready":
            self.close()
            raise FtxError(
                f"the {backend} decoder could not load the model: {ready.message}",
                where=str(target.adapter or target.model),
                fix="check that the folder holds a model the backend builds",
            )
        self.context = int(ready.context or wanted)

    # ---------------------------------------------------------------- the pipe

    def _send(self, request: DecodeRequest) -> None:
        stdin: IO[str] = self.proc.stdin  # type: ignore[assignment]
        try:
            stdin.write(request.line())
            stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None

    def _next_event(self) -> DecodeEvent:
        stdout: IO[str] = self.proc.stdout  # type: ignore[assignment]
        for line in stdout:
            if line.startswith(DECODE_PREFIX):
                try:
                    return decode(DecodeEvent, json.loads(line[len(DECODE_PREFIX) :]), "decoder")
                except (json.JSONDecodeError, ContractError) as exc:
                    raise FtxError(
                        f"the decoder wrote a line ftx cannot read ({exc})",
                        where=str(self.log),
                        fix="install the same ftx in the backend's environment (ftx env create)",
                    ) from None
        raise self._died()

    def _died(self) -> FtxError:
        code = self.proc.poll()
        tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        return FtxError(
            f"the {self.backend} decoder ended (exit code {code}): {' | '.join(tail)}",
            where=str(self.log),
            fix="read the decoder's log; a model too large for this machine's memory ends so",
        )

    # ---------------------------------------------------------------- requests

    def stream(
        self, prompt: Sequence[int], sampling: Sampling, stop: frozenset[int]
    ) -> Iterator[int | Answer]:
        """The ids of an answer as they come, then its :class:`Answer`. Closing the
        iterator early (a client gone, Ctrl-C) cancels the answer in the decoder."""
        with self._lock:
            rid = str(next(self._ids))
            self._send(DecodeRequest(rid, "generate", tuple(prompt), tuple(sorted(stop)), sampling))
            ids: list[int] = []
            finished = False
            try:
                while True:
                    event = self._next_event()
                    if event.kind == "token" and event.token is not None:
                        ids.append(event.token)
                        yield event.token
                    elif event.kind == "done":
                        finished = True
                        yield Answer(ids, event.finish_reason or "stop")
                        return
                    elif event.kind == "error":
                        finished = True
                        raise FtxError(
                            f"the decoder failed on this prompt: {event.message}",
                            where=str(self.log),
                            fix="read the decoder's log",
                        )
            finally:
                if not finished and self.proc.poll() is None:
                    self._send(DecodeRequest(str(next(self._ids)), "cancel", target=rid))
                    while self._next_event().kind not in ("done", "error"):
                        pass  # the tokens it made before it saw the cancel

    def generate(self, prompt: Sequence[int], sampling: Sampling, stop: frozenset[int]) -> Answer:
        """A whole answer."""
        for item in self.stream(prompt, sampling, stop):
            if isinstance(item, Answer):
                return item
        raise self._died()

    def score(self, rows: Sequence[ScoredRow]) -> tuple[float, int]:
        """The summed negative log-likelihood of the rows' labels and their count."""
        with self._lock:
            self._send(DecodeRequest(str(next(self._ids)), "score", rows=tuple(rows)))
            event = self._next_event()
        if event.kind != "scored":
            raise FtxError(
                f"the decoder could not score the rows: {event.message}",
                where=str(self.log),
                fix="read the decoder's log",
            )
        return float(event.nll or 0.0), int(event.tokens or 0)

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        self._workdir.cleanup()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
