import json

import pytest

from router.rules import RulesRouter


def test_first_matching_rule_wins_and_no_match_falls_back(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({
        "rules": [{"pattern": r"^Review:", "adapter": "sentiment"}, {"pattern": r"JSON", "adapter": "json_extract"},
                  {"pattern": r"Review", "adapter": "never"}],
        "default": None,
    }))
    router = RulesRouter.from_file("ops", path)
    d = router.route("Review: great soup. Extract JSON")
    assert d.adapter == "sentiment" and d.router == "ops" and not d.fell_back
    assert router.route("Please give JSON").adapter == "json_extract"
    fallback = router.route("Hello")
    assert fallback.adapter is None and fallback.fell_back and fallback.adapters == ()


def test_default_adapter_and_bad_rules(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [], "default": "sentiment"}))
    assert RulesRouter.from_file("r", path).route("x").adapter == "sentiment"
    path.write_text(json.dumps({"rules": [{"pattern": "(", "adapter": "a"}]}))
    with pytest.raises(ValueError, match="rule 0"):
        RulesRouter.from_file("r", path)
