"""loraplex.json: an adapter's example prompts and description, for the embedding router.

Keys other than these are ignored: the demo trainer and benchmarks keep their own there ("task",
"max_tokens"). The known ones are checked strictly, so a bad file refuses the adapter at
registration instead of failing every routed request later.
"""

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from server.adapters.types import AdapterError

METADATA_FILE = "loraplex.json"
MAX_EXAMPLES = 256
MAX_TEXT_CHARS = 4096


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be blank")
    return text


Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_not_blank)]


class AdapterMetadata(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    examples: tuple[Text, ...] = Field(default=(), max_length=MAX_EXAMPLES)  # prompts the adapter is for
    description: Text | None = None  # one sentence on its task; the router embeds it like an example


def parse_metadata(name: str, data: bytes | None) -> AdapterMetadata:
    """AdapterError naming the field; no file (None) means no examples."""
    if data is None:
        return AdapterMetadata()
    try:
        return AdapterMetadata.model_validate_json(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        where = f" field {field}" if field else ""
        raise AdapterError(f"adapter {name!r}: {METADATA_FILE}{where}: {err['msg']}") from None
