"""HTTP server settings: one dataclass, checked once; `loraplex serve` maps its flags onto it."""

from dataclasses import dataclass, field

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None  # None = the engine's model name
    api_key: str | None = None  # None = /v1/* is open
    max_queue: int = 256  # admitted requests still waiting for their first token; one more gets 429
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 4096  # largest max_tokens a request may ask for; also the chat default
    drain_timeout: float = 30.0  # seconds SIGTERM waits for in-flight requests
    cors_origins: list[str] = field(default_factory=list)  # empty = no CORS headers at all
    retry_after_s: int = 1  # Retry-After sent with 429 and 503
    log_level: str = "info"
    adapters: dict[str, str] = field(default_factory=dict)  # NAME -> PEFT directory
    adapter_dirs: list[str] = field(default_factory=list)
    allowed_adapter_roots: list[str] = field(default_factory=list)
    routers: dict[str, str] = field(default_factory=dict)  # NAME -> router kind

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.api_key == "":
            raise ValueError("api_key must not be empty (leave it unset to disable auth)")
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        if self.max_tokens_cap < 1:
            raise ValueError("max_tokens_cap must be positive")
        if self.drain_timeout < 0:
            raise ValueError("drain_timeout must be >= 0")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must be >= 0")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
