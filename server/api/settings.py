"""HTTP server settings: one dataclass, checked once; `loraplex serve` maps its flags onto it."""

from dataclasses import dataclass, field

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None  # None = the engine's model name
    api_key: str | None = None  # None = /v1/* is open
    max_queue: int = 256  # sequences admitted and still waiting for their first token; more get 429
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 4096  # largest max_tokens a request may ask for; also the chat default
    # bounded work per request, checked before any per-prompt work
    max_prompts: int = 64  # prompts in one /v1/completions request
    max_n: int = 16  # choices per prompt
    max_seqs_per_request: int = 128  # prompts x n
    max_stop: int = 4  # stop strings (OpenAI allows 4)
    max_stop_chars: int = 256  # characters of one stop string
    max_logprob_entries: int = 1 << 20  # max_tokens x n x prompts x (1 + top logprobs) a response may hold
    drain_timeout: float = 30.0  # seconds SIGTERM waits for in-flight requests
    cors_origins: list[str] = field(default_factory=list)  # empty = no CORS headers at all
    retry_after_s: int = 1  # Retry-After sent with 429 and 503
    log_level: str = "info"
    adapters: dict[str, str] = field(default_factory=dict)  # NAME -> PEFT directory
    adapter_dirs: list[str] = field(default_factory=list)
    allowed_adapter_roots: list[str] = field(default_factory=list)
    enable_adapter_admin: bool = False  # /v1/load_lora_adapter and /v1/unload_lora_adapter answer 403 unless on
    admin_key: str | None = None  # the admin routes' bearer key; None = the API key (if any) guards them
    routers: dict[str, str] = field(default_factory=dict)  # NAME -> router kind
    # connections
    max_connections: int = 1024  # open connections + in-flight requests; more get 503 from uvicorn
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    header_timeout_s: float = 10.0  # a connection that has not sent complete headers by then is closed
    body_timeout_s: float = 30.0  # a request body not fully received by then gets 408
    metrics_public: bool = False  # /metrics without the API key
    enable_docs: bool | None = None  # /docs and /openapi.json; None = on unless an API key is set
    allowed_hosts: list[str] = field(default_factory=list)  # Host header values accepted; [] = by the bind address

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for key in ("api_key", "admin_key"):
            if getattr(self, key) == "":
                raise ValueError(f"{key} must not be empty (leave it unset to disable it)")
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        for name in ("max_body_bytes", "max_tokens_cap", "max_prompts", "max_n", "max_seqs_per_request",
                     "max_stop_chars", "max_logprob_entries", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.max_stop < 0:
            raise ValueError("max_stop must be >= 0")
        for name in ("drain_timeout", "keep_alive_s", "header_timeout_s", "body_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must be >= 0")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")

    @property
    def docs(self) -> bool:
        return self.enable_docs if self.enable_docs is not None else self.api_key is None

    def trusted_hosts(self) -> list[str]:
        """Host header values to accept: given ones, else loopback names for a loopback bind, else any."""
        if self.allowed_hosts:
            return self.allowed_hosts
        if self.host in LOOPBACK_HOSTS:
            return ["127.0.0.1", "localhost", "[::1]", "::1"]
        return ["*"]
