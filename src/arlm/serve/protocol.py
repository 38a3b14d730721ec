"""Request bodies of the OpenAI API subset arlm serves, as pydantic models.

Unknown fields are refused (naming them) rather than ignored: a client asking for ``logprobs``
or ``best_of`` learns that arlm does not do them instead of getting something else.
"""

from __future__ import annotations

import json
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float = 1.0
    top_p: float | None = None
    top_k: StrictInt | None = None
    min_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: Union[StrictStr, list[StrictStr], None] = None
    seed: StrictInt | None = None
    n: StrictInt = Field(default=1, ge=1)
    stream: StrictBool = False
    user: StrictStr | None = None  # accepted for compatibility; not used


class CompletionRequest(_Sampling):
    prompt: Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: StrictStr
    name: StrictStr | None = None  # accepted for compatibility; not used


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


class BodyError(ValueError):
    """A body that is not JSON or does not fit the request model; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def parse_body(body: bytes, model_cls):
    """The body as ``model_cls``, or BodyError naming the first bad field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BodyError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BodyError("the request body must be a JSON object")
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        # union members add their type names to the location; keep the field path only
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _TYPE_NAMES))]
        param = ".".join(loc) or None
        msg = "unknown field (not supported by arlm)" if err["type"] == "extra_forbidden" else err["msg"]
        raise BodyError(f"{param}: {msg}" if param else msg, param) from None


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "function-after", "literal"}
