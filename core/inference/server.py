"""`ftx serve`: an OpenAI-compatible HTTP API (``/v1/models``, ``/v1/chat/completions``,
``/v1/completions``, streamed or not) over one decoder process, for trying a model. It
answers one request at a time (the decoder's lock queues the rest); vLLM, MindIE or
FastDeploy serve the same ``OUT/final`` in production.

Requests are checked where they enter: an unknown model is a 404, a malformed body or a
prompt plus ``max_tokens`` past the model's length a 400, a wrong API key a 401, each
with OpenAI's error body; a failure while answering is a 500 with the same body, and
the server goes on.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ftx.core.contract import Sampling
from ftx.core.errors import FtxError
from ftx.core.inference.prompting import Prompter, TextStream
from ftx.core.inference.session import Answer, Decoder


class ApiError(Exception):
    """An answer with OpenAI's error body: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error", 404: "invalid_request_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


class Part(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ...: accepted, unused

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Part] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class Common(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI's other knobs: accepted, unused

    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0)
    stream: bool = False
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(Common):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)


def make_app(
    prompter: Prompter, decoder: Decoder, name: str, api_key: str | None, default_tokens: int
) -> FastAPI:
    """The API over ``decoder``, listing the model as ``name``."""
    app = FastAPI(title="ftx serve", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        message = f"{where or 'body'}: {first.get('msg', 'malformed request')}"
        return ApiError(400, message, "invalid_request", where).response()

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        what = exc.detail if isinstance(exc, FtxError) else f"{type(exc).__name__}: {exc}"
        return ApiError(500, what, "server_error").response()

    @app.middleware("http")
    async def _authorised(request: Request, call_next: Any) -> Any:
        given = request.headers.get("authorization", "")
        if api_key and not secrets.compare_digest(given, f"Bearer {api_key}"):
            return ApiError(401, "incorrect API key", "invalid_api_key").response()
        return await call_next(request)

    def check_model(asked: str) -> None:
        if asked != name:
            raise ApiError(404, f"the model '{asked}' does not exist; this server has '{name}'",
                           "model_not_found", "model")  # fmt: skip

    def plan(ids: list[int], wanted: int | None, body: Common) -> Sampling:
        room = decoder.context - len(ids)
        tokens = wanted if wanted is not None else min(default_tokens, room)
        if tokens > room or room <= 0:
            raise ApiError(
                400,
                f"this model's maximum context length is {decoder.context} tokens; the prompt"
                f" has {len(ids)} and max_tokens asks for {tokens}",
                "context_length_exceeded",
                "max_tokens" if room > 0 else "messages",
            )
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        return Sampling(tokens, body.temperature, body.top_p, seed)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        entry = {"id": name, "object": "model", "created": created, "owned_by": "ftx"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(body: ChatRequest) -> Any:
        check_model(body.model)
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        try:
            ids = prompter.chat(messages)
        except FtxError as exc:
            raise ApiError(400, exc.detail, "invalid_messages", "messages") from None
        sampling = plan(ids, body.max_completion_tokens or body.max_tokens, body)
        reply = Reply(prompter, decoder, ids, sampling, body.stops())
        if body.stream:
            return reply.events("chat.completion.chunk", name)
        text, reason = reply.whole()
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": reason,
        }
        return reply.envelope("chat.completion", name, choice)

    @app.post("/v1/completions", response_model=None)
    def completions(body: CompletionRequest) -> Any:
        check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "one prompt per request", "invalid_prompt", "prompt")
        ids = list(prompter.tokenizer(prompts[0], add_special_tokens=False)["input_ids"])
        reply = Reply(prompter, decoder, ids, plan(ids, body.max_tokens, body), body.stops())
        if body.stream:
            return reply.events("text_completion", name)
        text, reason = reply.whole()
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return reply.envelope("text_completion", name, choice)

    return app


class Reply:
    """One answer: its text as it streams (cut at a stop string), its finish reason."""

    def __init__(
        self,
        prompter: Prompter,
        decoder: Decoder,
        ids: list[int],
        sampling: Sampling,
        stops: list[str],
    ):
        self.prompter, self.decoder, self.ids, self.sampling = prompter, decoder, ids, sampling
        self.stops = [s for s in stops if s]
        self.id = f"ftx-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.produced = 0

    def pieces(self) -> Iterator[tuple[str, str | None]]:
        """(new text, None) while the answer grows, then ("", finish reason)."""
        shown = TextStream(self.prompter)
        said, stream = "", self.decoder.stream(self.ids, self.sampling, self.prompter.stop)
        try:
            for item in stream:
                if isinstance(item, Answer):
                    yield "", "length" if item.finish_reason == "length" else "stop"
                    return
                self.produced += 1
                new = shown.add(item)
                text = said + new
                hits = [text.find(s) for s in self.stops if s in text]
                if hits:
                    yield text[len(said) : min(hits)], None
                    yield "", "stop"
                    return
                said = text
                if new:
                    yield new, None
        finally:
            stream.close()  # a stop string or a client gone: the decoder stops too

    def whole(self) -> tuple[str, str]:
        parts, reason = [], "stop"
        for text, finished in self.pieces():
            parts.append(text)
            reason = finished or reason
        return "".join(parts), reason

    def envelope(self, kind: str, model: str, choice: dict[str, Any]) -> dict[str, Any]:
        usage = {
            "prompt_tokens": len(self.ids),
            "completion_tokens": self.produced,
            "total_tokens": len(self.ids) + self.produced,
        }
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": model,
            "choices": [choice],
            "usage": usage,
        }

    def events(self, kind: str, model: str) -> StreamingResponse:
        """Server-sent events: one chunk per piece of text, the finish reason, [DONE]."""
        chat = kind == "chat.completion.chunk"

        def chunk(text: str | None, reason: str | None, first: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
                if text:
                    delta["content"] = text
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
            body = {"id": self.id, "object": kind, "created": self.created, "model": model,
                    "choices": [choice]}  # fmt: skip
            return f"data: {json.dumps(body)}\n\n"

        def stream() -> Iterator[str]:
            if chat:
                yield chunk(None, None, first=True)
            for text, reason in self.pieces():
                if text or reason:
                    yield chunk(text, reason)
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")
