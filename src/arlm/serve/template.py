"""Chat templates: how a list of messages becomes the text a run continues.

For arlm a chat template is a small JSON file, ``RUN/chat_template.json``, beside the run's
config (no code, no Jinja):

    {"system": "System: {content}\\n", "user": "User: {content}\\n",
     "assistant": "Assistant: {content}\\n", "generation_prompt": "Assistant:",
     "stop": ["\\nUser:"]}

Each role's string has ``{content}`` replaced by the message text (a plain replacement, so
braces inside messages are kept as written); the rendered messages are joined and followed by
``generation_prompt``, which the model continues. ``stop`` ends a reply (the next turn's
marker). ``user`` and ``assistant`` are required; ``system`` defaults to ``{content}\\n``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

FILENAME = "chat_template.json"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    """Role formats, the text that asks for a reply, and the strings that end one."""

    user: str
    assistant: str
    system: str = "{content}\n"
    generation_prompt: str = ""
    stop: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_dict(cls, data, where: str = "chat template") -> ChatTemplate:
        """Check and build; errors name ``where`` and the key."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be a JSON object with keys {', '.join(ROLES)}, generation_prompt, stop")
        unknown = sorted(set(data) - {*ROLES, "generation_prompt", "stop"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(ROLES)}, generation_prompt, stop")
        for role in ("user", "assistant"):
            if role not in data:
                raise ValueError(f"{where}: missing {role!r} (a string containing {{content}})")
        for role in ROLES:
            if role in data and not (isinstance(data[role], str) and "{content}" in data[role]):
                raise ValueError(f"{where}: {role!r} must be a string containing {{content}}, got {data[role]!r}")
        if not isinstance(data.get("generation_prompt", ""), str):
            raise ValueError(f"{where}: 'generation_prompt' must be a string")
        stop = data.get("stop", [])
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"{where}: 'stop' must be a list of non-empty strings, got {stop!r}")
        return cls(**{k: v for k, v in data.items() if k != "stop"}, stop=tuple(stop))

    @classmethod
    def load(cls, path: str | Path) -> ChatTemplate:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the chat template {path}: {e}") from None
        return cls.from_dict(data, str(path))

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The text of ``messages`` ([{"role", "content"}, ...]) and, by default, the reply prompt."""
        parts = []
        for i, m in enumerate(messages):
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
            if not isinstance(content, str):
                raise ValueError(f"messages[{i}].content must be a string")
            parts.append(getattr(self, role).replace("{content}", content))
        return "".join(parts) + (self.generation_prompt if add_generation_prompt else "")


# what `arlm chat` uses for a run without a chat_template.json (a plain-text transcript)
DEFAULT = ChatTemplate(user="User: {content}\n", assistant="Assistant: {content}\n",
                       generation_prompt="Assistant:", stop=("\nUser:",))


def run_template(run_dir: str | Path) -> ChatTemplate | None:
    """The run's chat template, or None when it has none."""
    path = Path(run_dir) / FILENAME
    return ChatTemplate.load(path) if path.exists() else None


def fit_messages(template: ChatTemplate, encode, messages: list[dict], budget: int) -> tuple[list[dict], list[int]]:
    """Drop the oldest turns (never a leading system message, never the last message) until the
    rendered prompt is at most ``budget`` tokens; returns (messages kept, prompt ids).
    ValueError when even the last message alone does not fit."""
    keep = list(messages)
    while True:
        ids = encode(template.render(keep))
        if len(ids) <= budget:
            return keep, ids
        first = 1 if keep and keep[0].get("role") == "system" else 0
        if len(keep) - first <= 1:
            raise ValueError(f"the last message alone takes {len(ids)} tokens, more than the {budget} "
                             "the context leaves for it; shorten it")
        del keep[first]
