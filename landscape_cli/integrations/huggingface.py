"""Hugging Face: `LandscapeCallback` records `Trainer.train` as a run of the store (`landscape_cli.recorder`).

    trainer = Trainer(model=model, args=args, train_dataset=train,
                      callbacks=[LandscapeCallback(data="text:corpus.txt", block_size=128, every_steps=100)])

The model is a causal language model that transformers builds from its config (`AutoModelForCausalLM`, as
`landscape import hf:DIR` rebuilds one): the run records the config (`models.hf`: no code of the model's own
runs, never `trust_remote_code`), so every later command rebuilds it from the run alone and scores it as
transformers does (`model(ids)` -> logits, the cross-entropy over every token). `data` names what scores the run:
`text:PATH` (characters, or pass `block_size`), or a dataset factory of token ids x [N, T] with targets [N, T]
(the next token), in the model's vocabulary; not the dataset the Trainer trains on.

At `on_train_begin` the recorder is made from the model and the Trainer's optimizer (step 0: the weights before
any step). A completed optimizer step (`on_step_end`) is counted when the Trainer moves on (the next step's
`on_step_begin`, the epoch's end, the training's end), so that the loss the Trainer logs for it (`on_log`, every
`logging_steps`: a mean over the steps since the log before) is in the checkpoint saved there; the weights do not
change in between. Set `logging_steps` to at most `every_steps` to have a loss in every checkpoint. A complete
epoch (`on_epoch_end` where the Trainer's epoch counter is whole, not a `max_steps` stop within an epoch) is an
epoch-end checkpoint. Only the main process (`is_world_process_zero`) records.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from landscape_cli.errors import UsageError
from landscape_cli.models import hf
from landscape_cli.recorder import ModelRef, Recorder, callback_options, landscape_logging, log_when_due

EXTRA = "landscape_cli.integrations.huggingface needs transformers: pip install 'landscape-cli[hf]'"

try:
    import transformers
    from transformers import TrainerCallback
except ImportError:
    raise UsageError(EXTRA) from None

WHOLE = 1e-9  # how close the Trainer's float epoch counter is to a whole number at an epoch's end


def model_ref(model: nn.Module) -> ModelRef:
    """What a run records of a transformers model: its config (less where, by which release and in which dtype it was
    saved), the class transformers builds from it, and the config's sha256 (in the run's id), as `import hf:DIR`."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise UsageError(f"LandscapeCallback: {type(model).__name__} has no transformers config: the callback records "
                         "transformers' causal language models (for your own nn.Module use landscape_cli.Recorder)")
    settings = config.to_dict()
    net = hf.build_hf({"config": settings}, f"the config of {type(model).__name__}")
    if net.class_name != type(model).__name__:
        raise UsageError(f"LandscapeCallback: transformers rebuilds {type(model).__name__}'s config as {net.class_name} "
                         "(AutoModelForCausalLM): only causal language models that transformers rebuilds from their "
                         "config can be recorded")
    source, args = hf.recorded_model(settings, net.class_name, f"Hugging Face {net.class_name} (recorded during training)")
    return ModelRef(source, args, {"transformers": transformers.__version__})


class LandscapeCallback(TrainerCallback):
    """Records the training as a run: step 0 at its start, a checkpoint every `every_steps` optimizer steps and at
    each complete epoch. `options` are the Recorder's (store, name, loss, block_size, tag, track_lambda_max,
    track_batches, track_batch_size, writer, keep, data_dir, verbose); `recorder` is the Recorder once training has
    begun (its `run_id`, `status`). `landscape_every=N`: every N epochs, the landscape of the epoch's checkpoint into
    `writer` (`Recorder.log_landscape`, with the options `landscape`)."""

    def __init__(self, *, data: str, every_steps: int | None = None, landscape_every: int | None = None,
                 landscape: dict[str, Any] | None = None, **options: Any) -> None:
        self.options = callback_options(options, "LandscapeCallback")
        self.landscape_every, self.landscape = landscape_logging(landscape_every, landscape, options, "LandscapeCallback")
        self.data, self.every_steps = data, every_steps
        self.recorder: Recorder | None = None
        self._logged = 0  # the global step of the last loss the Trainer logged

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if state.global_step != 0:
            raise UsageError(f"LandscapeCallback: the training resumes at step {state.global_step}; a run is recorded "
                             "from the initial weights: train from the start (without resume_from_checkpoint)")
        if model is None or optimizer is None:
            raise UsageError("LandscapeCallback: the Trainer gave no model or optimizer at the start of training")
        self.recorder = Recorder(model, optimizer, model_factory=model_ref(model), data=self.data,
                                 every_steps=self.every_steps, **self.options)
        self._logged = 0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._count(state)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        rec = self.recorder
        if rec is None or rec.closed or not logs or "loss" not in logs:
            return
        rec.add_loss(float(logs["loss"]), steps=max(state.global_step - self._logged, 1))
        self._logged = state.global_step

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._count(state)
        rec = self.recorder
        if rec is not None and not rec.closed and state.epoch is not None \
                and abs(state.epoch - round(state.epoch)) < WHOLE and round(state.epoch) > rec.epochs:
            rec.epoch_end()
            log_when_due(rec, self.landscape_every, self.landscape)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._count(state)
        if self.recorder is not None:
            self.recorder.close()

    def _count(self, state: Any) -> None:
        """The optimizer steps completed since the last call (their logged loss arrived in between)."""
        rec = self.recorder
        if rec is None or rec.closed:
            return
        while rec.steps < state.global_step:
            rec.step()
