"""Callbacks that record a framework's training as a run of the store, through `landscape_cli.recorder.Recorder`.

- `landscape_cli.integrations.lightning.LandscapeCallback`: Lightning's `Trainer(callbacks=[...])`
  (`pip install 'landscape-cli[lightning]'`);
- `landscape_cli.integrations.huggingface.LandscapeCallback`: Hugging Face's `Trainer(callbacks=[...])`, for causal
  language models rebuilt from their config (`pip install 'landscape-cli[hf]'`).

Each module imports its framework when it is imported, and says in one line which extra to install where the
framework is missing; importing this package imports neither.
"""
