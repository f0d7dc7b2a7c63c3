"""What a request constrains its output to, as a hashable value: the grammar cache's key. No xgrammar here."""

import json
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    kind: Kind
    text: str  # json_schema: canonical schema JSON; regex; grammar: EBNF; choice: JSON list; json_object: ""

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> "GrammarSpec":
        return cls("json_schema", json.dumps(schema, sort_keys=True, separators=(",", ":")))

    @classmethod
    def choice(cls, choices: list[str]) -> "GrammarSpec":
        return cls("choice", json.dumps(list(choices)))
