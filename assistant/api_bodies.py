"""The request bodies of the HTTP API (assistant/api.py), as pydantic models.

Contract: a body that parses is one the routes can act on. Text that will be stored (messages,
conversation and turn ids, reasons, corrections) is refused when the store could not keep it
(a NUL, a lone surrogate: errors.storable_problem), with the reason; out-of-range settings are
refused, never quietly clamped (the upper bound of max_tokens depends on the model and is
checked by the chat route). ChatRequest accepts fields OpenAI clients send that are not used;
the API's own bodies (feedback, conversation update, activation) refuse unknown fields, so a
typo does not pass silently. FastAPI turns a refusal into a 400 (assistant/api_errors.py).
"""
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from assistant.config import MAX_TEMPERATURE
from assistant.errors import storable_problem
from store.feedback import MAX_TEXT


def _storable(value: str) -> str:
    """Text the store can keep and every tool can read back (errors.storable_problem: no NUL, no
    lone surrogate), refused with the reason rather than stored or failing later."""
    problem = storable_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Text = Annotated[str, AfterValidator(_storable)]


class Part(BaseModel):
    """One part of OpenAI's list-of-parts content; only text parts are read."""
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[Part] | None = None

    @field_validator("content")
    @classmethod
    def _storable_content(cls, v):
        # here rather than in the union's members, whose errors would name each member
        for text in [v] if isinstance(v, str) else [p.text for p in v or [] if p.text]:
            _storable(text)
        return v

    def text(self) -> str:
        """Plain text; OpenAI's list-of-parts form keeps its text parts."""
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use
    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    stream_options: dict | None = None
    # Out-of-range settings are refused, as OpenAI does, never quietly clamped; the upper bound
    # of max_tokens depends on the model (assistant/api_chat.py: `_max_new_tokens`).
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    conversation_id: Text | None = None
    recall: bool | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a field name must not pass silently
    turn_id: Text = Field(min_length=1)
    rating: Literal["up", "down"]
    reason: Text | None = Field(default=None, max_length=MAX_TEXT)
    correction: Text | None = Field(default=None, max_length=MAX_TEXT)

    @field_validator("correction")
    @classmethod
    def _not_blank(cls, v):
        if v is not None and not v.strip():
            raise ValueError("a correction needs the corrected answer text")
        return v


class ConversationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    no_learn: bool  # "don't learn from this conversation": out of recall at once, out of the next version


class ReplaceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feedback_ids: list[Text] = Field(min_length=1, max_length=20)  # the earlier corrections it replaces


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = False  # promote a version the gate rejected
    quarantine: bool = False  # on rollback: keep what the abandoned version learned out of learning

