"""Views of stored results, none of which imports torch: `figures` (matplotlib panels and curves),
`hessian_figure`, `page` (one self-contained HTML page), `notebook` (xarray datasets and their accessor)
and `listing` (what `landscape ls` shows)."""
