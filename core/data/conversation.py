"""The canonical example every dataset format is normalised to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["user", "assistant", "tool"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """One training example: an optional system prompt and alternating turns.

    ``text`` is set instead of ``messages`` for pre-training rows.
    """

    messages: tuple[Message, ...] = ()
    system: str | None = None
    tools: str | None = None
    text: str | None = None
    source: str = ""  # "file:line", for error messages and reports
    chosen: Message | None = None  # preference data: the preferred answer
    rejected: Message | None = None  # ... and the dispreferred one
    kto_tag: bool | None = None  # KTO data: is this answer desirable
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def is_preference(self) -> bool:
        return self.chosen is not None

    def as_chat(self) -> list[dict[str, str]]:
        """Messages in the role/content form chat templates expect."""
        chat = [{"role": "system", "content": self.system}] if self.system else []
        return chat + [{"role": m.role, "content": m.content} for m in self.messages]
