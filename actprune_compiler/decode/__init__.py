"""The decode loop: a static KV cache and one compiled single-token step reused for every token."""
