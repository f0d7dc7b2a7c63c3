import torch
import torch.nn.functional as F


def _gather(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """(num_pages, bs, kvh, hd) + (nblocks,) -> (kvh, length, hd) for one sequence."""
    bs = cache.shape[1]
    nblocks = (length + bs - 1) // bs
    kv = cache[block_table[:nblocks]].flatten(0, 1)[:length]  # (length, kvh, hd)
    return kv.transpose(0, 1)


def paged_attention_decode(
    q: torch.Tensor,  # (B, H, hd), one query token per sequence
    k_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd)
    v_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd)
    block_tables: torch.Tensor,  # (B, max_blocks) int32
    context_lens: torch.Tensor,  # (B,) int32, keys visible to each query (its own included)
    scale: float,
) -> torch.Tensor:  # (B, H, hd)
    """Gather every sequence's blocks into one padded batch, mask the padding, one SDPA call."""
    B, H, hd = q.shape
    bs, kvh = k_cache.shape[1], k_cache.shape[2]
    assert H % kvh == 0 and block_tables.shape[0] == B and context_lens.shape == (B,)
    max_len = int(context_lens.max())
    nblocks = (max_len + bs - 1) // bs
    table = block_tables[:, :nblocks].long()  # (B, nb)
    k = k_cache[table].flatten(1, 2)[:, :max_len].transpose(1, 2)  # (B, kvh, L, hd)
    v = v_cache[table].flatten(1, 2)[:, :max_len].transpose(1, 2)  # (B, kvh, L, hd)
    pos = torch.arange(max_len, device=q.device)
    mask = (pos[None, :] < context_lens[:, None].to(q.device))[:, None, None, :]  # (B, 1, 1, L)
    # a kv head's query heads become its query rows: no K/V repeat for GQA
    out = F.scaled_dot_product_attention(q.view(B, kvh, H // kvh, hd), k, v, attn_mask=mask, scale=scale)
    return out.reshape(B, H, hd)


def paged_attention_prefill(
    q: torch.Tensor,  # (Tq, H, hd), the query tokens of every sequence, packed
    k_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd)
    v_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd)
    block_tables: torch.Tensor,  # (S, max_blocks) int32
    cu_seqlens_q: torch.Tensor,  # (S + 1,) int32, offsets of each sequence's queries in q
    context_lens: torch.Tensor,  # (S,) int32; sequence i's queries sit at the last q_len_i positions
    scale: float,
) -> torch.Tensor:  # (Tq, H, hd)
    """Causal attention of query chunks against their sequences' cached keys (prefix included)."""
    Tq, H, hd = q.shape
    kvh = k_cache.shape[2]
    S = block_tables.shape[0]
    assert cu_seqlens_q.shape == (S + 1,) and context_lens.shape == (S,) and int(cu_seqlens_q[-1]) == Tq
    out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    lens = context_lens.tolist()
    for i in range(S):
        q_i = q[cu[i] : cu[i + 1]].transpose(0, 1)  # (H, n, hd)
        n, length = q_i.shape[1], lens[i]
        k_i = _gather(k_cache, block_tables[i].long(), length)  # (kvh, length, hd)
        v_i = _gather(v_cache, block_tables[i].long(), length)
        if n == length:
            o = F.scaled_dot_product_attention(q_i, k_i, v_i, is_causal=True, scale=scale, enable_gqa=kvh != H)
        else:
            qpos = torch.arange(length - n, length, device=q.device)
            mask = qpos[:, None] >= torch.arange(length, device=q.device)[None, :]  # (n, length)
            o = F.scaled_dot_product_attention(q_i, k_i, v_i, attn_mask=mask, scale=scale, enable_gqa=kvh != H)
        out[cu[i] : cu[i + 1]] = o.transpose(0, 1)
    return out
