import torch


def store_kv(
    k: torch.Tensor,  # (T, kvh, hd)
    v: torch.Tensor,  # (T, kvh, hd)
    k_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd), may be a strided view of the pool
    v_cache: torch.Tensor,  # (num_pages, block_size, kvh, hd)
    slot_mapping: torch.Tensor,  # (T,) int64, page * block_size + offset; negative = skip
) -> None:
    """Write each token's K and V into its cache slot."""
    assert k.shape == v.shape and k.dim() == 3 and slot_mapping.shape == (k.shape[0],)
    block_size = k_cache.shape[1]
    keep = slot_mapping >= 0  # (T,)
    slots = slot_mapping[keep]
    pages = slots // block_size
    offsets = slots % block_size
    k_cache[pages, offsets] = k[keep]
    v_cache[pages, offsets] = v[keep]
