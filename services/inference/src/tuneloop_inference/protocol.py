"""Request models of the OpenAI routes: what is checked before anything reaches an engine.

The models name only what this service checks or rewrites; every other field (``tools``,
``response_format``, ``logprobs``, vLLM's own sampling fields, ...) is kept (``extra="allow"``)
and passed through to the engine unchanged. Checks are strict (``"1"`` is not a number and
``true`` is not an integer) and a bad field is a 400 in the OpenAI envelope naming it
(``param``), with the same messages the service has always given (:func:`validate`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneloop.errors import InvalidRequest

Role = Literal["system", "user", "assistant", "tool", "developer", "function"]
ROLES = sorted(Role.__args__)  # type: ignore[attr-defined]
Number = int | float
StopString = Annotated[str, Field(min_length=1)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Role
    content: str | list[Any] | None = None


class _Sampling(BaseModel):
    """Fields both endpoints check; the bounds are the API's (OpenAI's where it has them)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, description="A served version id or an alias.")
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=16)
    presence_penalty: Number | None = Field(None, ge=-2, le=2)
    frequency_penalty: Number | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | Annotated[list[StopString], Field(max_length=4)] | None = None
    stream: bool | None = None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _max_completion_tokens(cls, data: Any) -> Any:
        """OpenAI's newer ``max_completion_tokens`` is sent on as ``max_tokens``."""
        if isinstance(data, dict) and data.get("max_completion_tokens") is not None \
                and data.get("max_tokens") is None:
            data = {**data, "max_tokens": data["max_completion_tokens"]}
            del data["max_completion_tokens"]
        return data


class CompletionRequest(_Sampling):
    prompt: str

    @model_validator(mode="before")
    @classmethod
    def _one_prompt(cls, data: Any) -> Any:
        """A list holding one prompt is that prompt (several: one request per prompt)."""
        if isinstance(data, dict):
            prompt = data.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                data = {**data, "prompt": prompt[0]}
        return data


# which bad field is reported when several are: the order the API has always checked them in
ORDER = ["model", "messages", "prompt", *_Sampling.model_fields]
MODELS: dict[str, type[_Sampling]] = {"chat": ChatCompletionRequest,
                                      "completions": CompletionRequest}


def validate(endpoint: str, body: Any) -> dict[str, Any]:
    """The body to send on (``chat`` or ``completions``), or a 400 naming the first bad field.
    Normalised: ``max_completion_tokens`` -> ``max_tokens``, a one-prompt list -> the prompt."""
    model = MODELS[endpoint]
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        first = min(exc.errors(), key=lambda e: ORDER.index(str(e["loc"][0])) if e["loc"] else -1)
        raise _invalid(model, first) from None
    return request.model_dump(exclude_unset=True)


def _invalid(model: type[_Sampling], err: Any) -> InvalidRequest:
    """Our 400 for pydantic's first error, worded as the API documents it."""
    loc = err["loc"]
    field = loc[0] if loc else None
    if field is None:
        return InvalidRequest("request body must be a JSON object")
    if field == "model":
        return InvalidRequest("model: required (a served version id or an alias)", param="model")
    if field == "messages":
        if len(loc) < 3 or loc[2] == "role":
            if len(loc) < 2:
                return InvalidRequest("messages: must be a non-empty list", param="messages")
            return InvalidRequest(f"messages[{loc[1]}].role: must be one of {ROLES}",
                                  param=f"messages.{loc[1]}.role")
        return InvalidRequest(f"messages[{loc[1]}].content: must be a string or a list",
                              param=f"messages.{loc[1]}.content")
    if field == "prompt":
        return InvalidRequest("prompt: must be a string (lists of several prompts are not "
                              "supported; send one request per prompt)", param="prompt")
    if field == "stop":
        return InvalidRequest("stop: a string or a list of up to 4 non-empty strings",
                              param="stop", code="invalid_value")
    if field == "stream":
        return InvalidRequest("stream: must be a boolean", param="stream")
    return _out_of_range(model, str(field), err["input"])


def _out_of_range(model: type[_Sampling], field: str, value: Any) -> InvalidRequest:
    """``<field>: must be an integer|a number in [lo, hi], got <value>`` from the field's own
    bounds."""
    info = model.model_fields[field]
    lo = next(m.ge for m in info.metadata if hasattr(m, "ge"))
    hi = next(m.le for m in info.metadata if hasattr(m, "le"))
    kind = "an integer" if info.annotation == (int | None) else "a number"
    return InvalidRequest(f"{field}: must be {kind} in [{lo:g}, {hi:g}], got {value!r}"[:300],
                          param=field, code="invalid_value")
