"""`loraplex serve` flags: env defaults, the command line over env, and --help naming each env variable."""

import pytest

from server.flags import build_parser

FLAGS = [
    "--model", "--served-model-name", "--adapter", "--adapter-dir", "--allowed-adapter-root", "--router", "--host",
    "--port", "--dtype", "--device", "--pool-mb", "--max-num-seqs", "--max-batch-tokens", "--max-model-len",
    "--api-key", "--max-queue", "--max-body-bytes", "--max-tokens-cap", "--drain-timeout", "--cors-origin",
    "--log-level",
]


def parse(argv):
    parser, finish = build_parser()
    args = parser.parse_args(argv)
    finish(args)
    return args


def test_defaults():
    args = parse(["serve"])
    assert (args.host, args.port, args.dtype, args.api_key) == ("127.0.0.1", 8000, "auto", None)
    assert args.adapter == [] and args.cors_origin == []


def test_env_sets_defaults_and_the_command_line_wins(monkeypatch):
    monkeypatch.setenv("LORAPLEX_POOL_MB", "32")
    monkeypatch.setenv("LORAPLEX_API_KEY", "from-env")
    monkeypatch.setenv("LORAPLEX_ADAPTER", "a=/x, b=/y")
    monkeypatch.setenv("LORAPLEX_PORT", "9000")
    args = parse(["serve", "--port", "9100"])
    assert (args.pool_mb, args.api_key, args.port) == (32, "from-env", 9100)
    assert args.adapter == ["a=/x", "b=/y"]
    assert parse(["serve", "--adapter", "c=/z"]).adapter == ["c=/z"]


def test_bad_env_value_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("LORAPLEX_MAX_QUEUE", "many")
    with pytest.raises(SystemExit) as e:
        parse(["serve"])
    assert e.value.code == 2 and "many" in capsys.readouterr().err


def test_help_documents_every_flag_and_its_env_variable(capsys):
    with pytest.raises(SystemExit):
        parse(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in FLAGS:
        env = "LORAPLEX_" + flag[2:].replace("-", "_").upper()
        assert flag in text and env in text, flag
