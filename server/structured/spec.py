"""What a request constrains its output to, as a hashable value: the grammar cache's key. No xgrammar here."""

import json
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    kind: Kind
    text: str  # json_schema: compact schema JSON (key order kept: it is the output's order); regex; EBNF; ...

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> "GrammarSpec":
        return cls("json_schema", json.dumps(schema, separators=(",", ":")))

    @classmethod
    def choice(cls, choices: list[str]) -> "GrammarSpec":
        return cls("choice", json.dumps(list(choices)))
