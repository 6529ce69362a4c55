"""Choosing a plan: the held-out judge of a cut (`judge`), the time it may take (`budget`), `auto`'s
search over the criteria's candidates, the merge search, and `select`, which runs them; `keep`,
the search over the cut's size by the share of the dense accuracy it keeps (`run --keep`)."""
