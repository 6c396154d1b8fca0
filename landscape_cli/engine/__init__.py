"""The grid engine: a request planned into a configuration and work units (`plan`), the grid created or
grown (`prepare`), its rows computed (`execute`) by one process, several sharing it, torchrun ranks or
job-array shards (`distributed`); `compute` is the library's `grid()`."""
