"""What /v1/completions sends back before the completion when `echo` or `prompt_logprobs` is on."""

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from server.api.protocol import CompletionRequest


@dataclass(frozen=True, slots=True)
class Echo:
    prompts: list[str] | None  # the text prefixed to each prompt's choices (echo), None without echo
    prompt_ids: list[list[int]]  # each prompt's tokens
    n: int  # choices per prompt
    only: bool  # max_tokens 0: the prompt alone, the one generated token left out
    logprobs: bool  # echo's prompt tokens go into `logprobs` too (echo with logprobs)
    vllm_prompt_logprobs: bool  # vLLM's `prompt_logprobs` field per choice

    @classmethod
    def of(cls, body: CompletionRequest, prompt_ids: list[list[int]], tokenizer: PreTrainedTokenizerBase
           ) -> "Echo | None":
        if not body.echo and body.prompt_logprobs is None:
            return None
        texts = None
        if body.echo:  # the client's own text where it sent text, as vLLM does
            given = [body.prompt] if isinstance(body.prompt, str) else body.prompt
            texts = [g if isinstance(g, str) else tokenizer.decode(ids)
                     for g, ids in zip(given if isinstance(given[0], str) else prompt_ids, prompt_ids, strict=True)]
        return cls(texts, prompt_ids, body.n, body.echo and body.max_tokens == 0,
                   body.echo and body.logprobs is not None, body.prompt_logprobs is not None)
