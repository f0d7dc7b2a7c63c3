"""OpenAI request and response shapes for /v1/completions and /v1/chat/completions.

Unknown fields are ignored, as OpenAI does; known ones are type- and range-checked here so bad
input is a 400, never a 500. Fields we accept but cannot honour are refused in inputs.py.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TOKEN_ID_MAX = 2**31 - 1  # ids past the vocabulary are refused later, with the vocabulary's size
TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=TOKEN_ID_MAX)]], Field(min_length=1)]
MAX_N = 128  # OpenAI's limit on choices per request
MAX_LOGIT_BIAS = 1024  # entries in logit_bias
MAX_STOP_TOKEN_IDS = 256
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1 - MAX_N  # per-choice seeds are seed + index, kept in int64


def _encodable(value: object, path: str = "") -> None:
    """JSON may carry lone surrogates (\\ud800) that no tokenizer, header or log can encode: refuse them here."""
    stack = [(value, path)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{at or 'body'}: not valid Unicode (a lone surrogate)") from None
        elif isinstance(v, dict):
            stack.extend((x, f"{at}.{k}" if at else str(k)) for k, x in v.items())
            stack.extend((k, at or "body") for k in v if isinstance(k, str))
        elif isinstance(v, list):
            stack.extend((x, f"{at}[{i}]") for i, x in enumerate(v))


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class _Body(_Request):
    """A whole request body: its strings are checked once, here."""

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: object) -> object:
        _encodable(data)
        return data


class StreamOptions(_Request):
    include_usage: bool = False


class SamplingRequest(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="extension: -1 or 0 = off")
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored
    ignore_eos: bool = Field(False, description="extension: keep generating past end-of-sequence")
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, max_length=MAX_LOGIT_BIAS, description="token id (a decimal string) -> bias added to its logit"
    )
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="extension (vLLM): >1 discourages repeats")
    min_p: float = Field(0.0, ge=0, le=1, description="extension (vLLM)")
    min_tokens: int = Field(0, ge=0, description="extension (vLLM): no end-of-sequence before this many tokens")
    stop_token_ids: list[Annotated[int, Field(ge=0, le=TOKEN_ID_MAX)]] | None = Field(
        None, max_length=MAX_STOP_TOKEN_IDS, description="extension (vLLM)"
    )

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key in bias or {}:
            if not (key.isascii() and key.isdigit() and len(key) <= 10):
                raise ValueError(f"keys are token ids as decimal strings, not {key[:20]!r}")
        return bias

    # structured outputs: OpenAI's response_format, and vLLM's fields so its users' bodies work unchanged
    response_format: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structured_outputs: dict[str, Any] | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingRequest):
    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=0, description="0 only with echo: the prompt alone")
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    prompt_logprobs: int | None = Field(None, ge=0, le=20, description="extension (vLLM)")
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False  # refused: the prompt is the chat template's text, not the client's
    prompt_logprobs: int | None = None  # refused: use /v1/completions
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None


# responses


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0  # no reasoning models here: always 0
    accepted_prediction_tokens: int = 0  # no predicted outputs: always 0
    rejected_prediction_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # None: the first prompt token of an echo (nothing predicts it)
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]  # character offset of each token in the choice's text


class PromptLogprob(BaseModel):
    logprob: float
    rank: int | None = None  # 1 = the most likely token at that position
    decoded_token: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None  # vLLM's extension: token id -> entry


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None
    refusal: None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # [{id, type: function, function: {name, arguments}}]


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatChunkChoice(BaseModel):
    index: int
    delta: dict[str, Any]  # {"role", "content"} first, then {"content"}, then {} with the finish_reason
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ModelInfo(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "loraplex"
    root: str
    parent: str | None = None
    loraplex_kind: str  # "base" | "adapter" | "router"
    rank: int | None = None  # adapters: LoRA rank
    target_modules: list[str] | None = None  # adapters: the projections they change
    resident: bool | None = None  # adapters: weights in the pool now (else on host or disk)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class LoadLoRAAdapterRequest(_Body):
    """vLLM's body for /v1/load_lora_adapter."""

    lora_name: str = Field(max_length=256)
    lora_path: str = Field(max_length=4096)


class UnloadLoRAAdapterRequest(_Body):
    lora_name: str = Field(max_length=256)
