"""Turns sampled tokens into SequenceDeltas: detokenize, check stop conditions, hold back stop prefixes."""

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from server.engine.detokenizer import IncrementalDetokenizer
from server.engine.outputs import SequenceDelta, TokenLogprob
from server.engine.sequence import Sequence


@dataclass(slots=True)
class _SeqText:
    detok: IncrementalDetokenizer
    text: str = ""  # everything decoded so far (stop string already cut)
    sent: int = 0  # characters already handed out
    tokens_sent: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet handed out
    prompt_logprobs: list[TokenLogprob | None] | None = None  # not yet handed out


class OutputProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_ids: set[int], max_model_len: int):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_model_len = max_model_len
        self._texts: dict[int, _SeqText] = {}

    def add(self, seq: Sequence) -> None:
        self._texts[seq.seq_id] = _SeqText(IncrementalDetokenizer(self.tokenizer, seq.prompt_ids))

    def tracks(self, seq: Sequence) -> bool:
        """Whether seq still has output to hand out (it has not been dropped)."""
        return seq.seq_id in self._texts

    def drop(self, seq: Sequence) -> None:
        self._texts.pop(seq.seq_id, None)

    def append(self, seq: Sequence, token_id: int, logprob: TokenLogprob | None,
               prompt_logprobs: list[TokenLogprob] | None = None) -> str | None:
        """Record a sampled token on seq; return a finish reason if it ends the sequence."""
        p = seq.params
        st = self._texts[seq.seq_id]
        seq.output_ids.append(token_id)
        if logprob is not None:
            st.logprobs.append(logprob)
        if prompt_logprobs is not None and p.prompt_logprobs is not None:
            st.prompt_logprobs = [None, *prompt_logprobs]
        if token_id in p.stop_token_ids or (not p.ignore_eos and token_id in self.eos_ids):
            return "stop"
        prev = len(st.text)
        st.text += st.detok.add(token_id)
        if p.stop and len(seq.output_ids) > p.min_tokens:  # as vLLM: no stop string before min_tokens
            lo = max(0, prev - max(map(len, p.stop)) + 1)
            hits = [i for i in (st.text.find(s, lo) for s in p.stop) if i >= 0]
            if hits:
                st.text = st.text[: min(hits)]
                return "stop"
        if len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def delta(self, seq: Sequence, finish_reason: str | None, error: str | None = None,
              error_code: str | None = None) -> SequenceDelta:
        """What seq produced since its last delta. While running, text that could begin a stop string is held."""
        st = self._texts[seq.seq_id]
        end = len(st.text)
        if finish_reason is None and seq.params.stop:
            end = max(st.sent, end - max(map(len, seq.params.stop)) + 1)
        text = st.text[st.sent : end]
        st.sent = end
        new_ids = seq.output_ids[st.tokens_sent :]
        st.tokens_sent = len(seq.output_ids)
        logprobs, st.logprobs = (st.logprobs or None), []
        prompt_logprobs, st.prompt_logprobs = st.prompt_logprobs, None
        return SequenceDelta(
            request_id=seq.request_id,
            index=seq.index,
            token_ids=new_ids,
            text=text,
            logprobs=logprobs if seq.params.logprobs is not None else None,
            finish_reason=finish_reason,
            num_prompt_tokens=len(seq.prompt_ids),
            num_output_tokens=len(seq.output_ids),
            error=error,
            error_code=error_code,
            queue_s=None if seq.first_scheduled is None else seq.first_scheduled - seq.arrival,
            num_cached_tokens=seq.num_cached_tokens,
            prompt_logprobs=prompt_logprobs,
        )
