"""Lightning: `LandscapeCallback` records `Trainer.fit` as a run of the store (`landscape_cli.recorder.Recorder`).

    trainer = Trainer(callbacks=[LandscapeCallback(data="./data.py:make_data", model_factory="./nets.py:make_net",
                                                   every_steps=50)], max_epochs=10)

At `on_train_start` the recorder is made from the LightningModule and `trainer.optimizers[0]` (step 0: the
weights before any step); after every training batch the optimizer steps Lightning took (`trainer.global_step`)
are counted, with the batch's loss (`training_step`'s "loss"); a complete epoch (`on_train_epoch_end` after its
last batch, not a `max_steps` stop within it) is an epoch-end checkpoint. Only the global rank 0 records.

The model. Later commands rebuild the model by calling a factory with `input_shape` and `num_outputs` only
(`landscape train`'s protocol), so a LightningModule's other hyper-parameters cannot reach it. `model_factory`
names the function that builds the network: the LightningModule's state dict is fitted to it as `landscape import`
fits a Lightning checkpoint (a common key prefix such as `net.` stripped), so it may build the network the module
wraps (`module="net"` checkpoints that submodule alone, where the LightningModule holds more state). Without
`model_factory`, the LightningModule's class itself is the factory, called with the hyper-parameters it saved
(`self.save_hyperparameters()`, recorded in run.json): it must be importable (defined in a module, not in the
script being run) and its hyper-parameters plain values; anything else is one line asking for `model_factory`.
`data` names what scores the run (a built-in dataset, a dataset factory, text:PATH), not the DataLoader Lightning
trains on.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from landscape_cli.errors import UsageError
from landscape_cli.models import model_source
from landscape_cli.recorder import ModelRef, Recorder, callback_options, landscape_logging, log_when_due

EXTRA = "landscape_cli.integrations.lightning needs Lightning: pip install 'landscape-cli[lightning]'"

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:
    raise UsageError(EXTRA) from None

FACTORY_ARGS = ("input_shape", "num_outputs")


class LandscapeCallback(Callback):
    """Records the fit as a run: step 0 at the start, a checkpoint every `every_steps` optimizer steps and at each
    complete epoch. `module`: the attribute path of the network inside the LightningModule (e.g. "net"), checkpointed
    alone, where the module holds more than it (a loss with weights, metrics with state); it needs `model_factory`.
    `options` are the Recorder's (store, name, loss, block_size, tag, track_lambda_max, track_batches,
    track_batch_size, writer, keep, data_dir, verbose); `recorder` is the Recorder once training has started (its
    `run_id`, `status`). `landscape_every=N`: every N epochs, the landscape of the epoch's checkpoint into `writer`
    (`Recorder.log_landscape`, with the options `landscape`)."""

    def __init__(self, *, data: str, model_factory: str | None = None, every_steps: int | None = None,
                 module: str | None = None, landscape_every: int | None = None,
                 landscape: dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__()
        self.options = callback_options(options, "LandscapeCallback")
        self.landscape_every, self.landscape = landscape_logging(landscape_every, landscape, options, "LandscapeCallback")
        self.data, self.model_factory, self.every_steps, self.module = data, model_factory, every_steps, module
        self.recorder: Recorder | None = None
        self._batches = 0  # batches of the current epoch seen

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if trainer.global_step != 0:
            raise UsageError(f"LandscapeCallback: the fit resumes at step {trainer.global_step}; a run is recorded "
                             "from the initial weights: fit from the start (without ckpt_path)")
        if not trainer.optimizers:
            raise UsageError("LandscapeCallback: the LightningModule has no optimizer (configure_optimizers)")
        network: nn.Module = pl_module
        if self.module is not None:
            if self.model_factory is None:
                raise UsageError(f"LandscapeCallback(module={self.module!r}) needs model_factory=, the function that "
                                 "builds that network")
            try:
                network = pl_module.get_submodule(self.module)
            except AttributeError:
                raise UsageError(f"LandscapeCallback: {type(pl_module).__name__} has no submodule {self.module!r} "
                                 f"(its children: {', '.join(n for n, _ in pl_module.named_children())})") from None
        factory: str | ModelRef = self.model_factory if self.model_factory is not None else class_factory(pl_module)
        self.recorder = Recorder(network, trainer.optimizers[0], model_factory=factory, data=self.data,
                                 every_steps=self.every_steps, **self.options)
        self._batches = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        rec = self.recorder
        if rec is None or rec.closed:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor):
            rec.add_loss(loss)
        while rec.steps < trainer.global_step:  # the optimizer steps this batch took (none while accumulating)
            rec.step()
        self._batches = batch_idx + 1

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rec = self.recorder
        if rec is not None and not rec.closed and self._complete(trainer):
            rec.epoch_end()
            log_when_due(rec, self.landscape_every, self.landscape)
        self._batches = 0

    def _complete(self, trainer: Trainer) -> bool:
        """Whether the epoch ran to its end (not stopped within it by max_steps); an epoch of unknown length (an
        iterable dataset) is complete unless max_steps was reached."""
        total = trainer.num_training_batches
        if math.isfinite(total):
            return self._batches >= total
        return not (trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.recorder is not None:
            self.recorder.close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self.recorder is not None:
            self.recorder.close()


def class_factory(module: LightningModule) -> ModelRef:
    """The LightningModule's class as the model factory (`pkg.module:Class`) with the hyper-parameters it saved
    (`save_hyperparameters()`), which every later process calls it with; a class built from `input_shape` and
    `num_outputs` alone is called as any factory is. One line asking for `model_factory` where that cannot work:
    a class defined in the script being run, hyper-parameters that are not plain values (JSON), or an `__init__`
    that takes arguments the saved hyper-parameters do not hold."""
    cls = type(module)
    name = f"{cls.__module__}:{cls.__qualname__}"
    ask = ("give LandscapeCallback(model_factory='pkg.module:make_net') (or './file.py:make_net'), a function of "
           "input_shape and num_outputs that builds this architecture or the network the module wraps")
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise UsageError(f"LandscapeCallback: {cls.__qualname__} is defined in the script being run, which later "
                         f"commands cannot import without running it: move it into a module, or {ask}")
    hparams = dict(getattr(module, "hparams", {}) or {})
    params = inspect.signature(cls.__init__).parameters
    plain = all(a in params for a in FACTORY_ARGS) and set(hparams) <= set(FACTORY_ARGS)
    source = model_source(name)
    if plain:
        return ModelRef(source)
    try:
        recorded = json.loads(json.dumps(hparams))
    except (TypeError, ValueError):
        raise UsageError(f"LandscapeCallback: {cls.__qualname__}'s saved hyper-parameters are not plain values "
                         f"({', '.join(sorted(hparams))}), so later commands cannot call it with them: {ask}") from None
    required = [n for n, p in list(params.items())[1:] if p.default is p.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in recorded]
    if required:
        raise UsageError(f"LandscapeCallback: {cls.__qualname__} takes {', '.join(required)}, which it does not save "
                         f"(call self.save_hyperparameters() in its __init__), so later commands cannot build it: {ask}")
    return ModelRef(source, hparams=recorded)
