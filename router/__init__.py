"""The task router: which adapter(s) serve a request that names none (arrow, embedding, rules kinds)."""
