"""The canonical example every dataset format is normalised to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    """A function call an assistant turn makes: the function's name and its arguments."""

    name: str
    arguments: Any  # the parsed JSON object of the arguments

    def as_chat(self) -> dict[str, Any]:
        """The OpenAI/Hugging Face form chat templates read."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns that call functions


@dataclass(frozen=True)
class Conversation:
    """One training example: an optional system prompt and alternating turns.

    ``text`` is set instead of ``messages`` for pre-training rows.
    """

    messages: tuple[Message, ...] = ()
    system: str | None = None
    tools: tuple[Any, ...] = ()  # function schemas, {"type": "function", "function": {...}}
    text: str | None = None
    source: str = ""  # "file:line", for error messages and reports
    chosen: Message | None = None  # preference data: the preferred answer
    rejected: Message | None = None  # ... and the dispreferred one
    kto_tag: bool | None = None  # KTO data: is this answer desirable
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def is_preference(self) -> bool:
        return self.chosen is not None

    def as_chat(self) -> list[dict[str, Any]]:
        """Messages in the role/content form chat templates expect (tool calls included)."""
        chat: list[dict[str, Any]] = (
            [{"role": "system", "content": self.system}] if self.system else []
        )
        for m in self.messages:
            message: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.tool_calls:
                message["tool_calls"] = [call.as_chat() for call in m.tool_calls]
            chat.append(message)
        return chat
