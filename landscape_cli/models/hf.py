"""Hugging Face causal language models, rebuilt from their config alone (`landscape import hf:DIR`).

A run imported from a directory written by `save_pretrained` records the model's config (config.json,
less the keys that only say where, by which release and in which dtype it was saved: `recorded_config`)
and the class transformers builds from it, `AutoModelForCausalLM.from_config`. Nothing from the
directory is executed (no `trust_remote_code`): a model type transformers does not know is refused.
Every later process rebuilds the same architecture from the run alone (`build_hf`), in float32, and
loads the run's own checkpoints into it. The model is wrapped (`CausalLM`) so that `model(input_ids)`
returns the logits [N, T, V], the library's protocol for token-level classification; its parameters
and buffers keep the names transformers gives them (`transformer.h.0.attn.c_attn.weight`...).

Attention runs on the kernel transformers chooses; the Hessian's products and the batched grid
evaluator switch scaled dot-product attention to PyTorch's math kernel for their passes (the fused
kernels have no double backward and no batching rule under vmap).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from landscape_cli._io import canonical_json
from landscape_cli.errors import UsageError
from landscape_cli.plugins import Source

KIND = "hf"  # the Source kind of a model rebuilt from a Hugging Face config
PREFIX = "hf:"
EXTRA = "hf: needs the Hugging Face extra: pip install 'landscape-cli[hf]'"
# config.json keys that do not change the model: where and by which release it was written, and the dtype
# of the saved weights (the model is always rebuilt in float32)
VOLATILE = ("transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype")
_SHOWN = 3  # names listed in a message before "and N more"


def require() -> Any:
    """The transformers module, or the one line that says how to install it."""
    try:
        import safetensors  # noqa: F401
        import transformers
    except ImportError:
        raise UsageError(EXTRA) from None
    return transformers


@contextlib.contextmanager
def quiet(transformers: Any) -> Iterator[None]:
    """transformers' own log lines and warnings silenced for the block (errors become our one line)."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def recorded_config(config: dict[str, Any]) -> dict[str, Any]:
    """What a run records of a config.json: every key but the `VOLATILE` ones."""
    return {k: v for k, v in config.items() if k not in VOLATILE}


def config_sha256(config: dict[str, Any]) -> str:
    """sha256 of a recorded config's canonical JSON (the run's id covers it)."""
    return hashlib.sha256(canonical_json(recorded_config(config)).encode()).hexdigest()


def recorded_model(config: dict[str, Any], class_name: str, origin: str) -> tuple[Source, dict[str, Any]]:
    """What a run records of a Hugging Face model (`import hf:DIR`, the Trainer callback): its Source (the config's
    sha256 in the run's id) and the arguments `build_hf` rebuilds it from."""
    source = Source(KIND, f"{PREFIX}{class_name}", class_name, None, config_sha256(config), origin)
    return source, {"config": recorded_config(config), "class": class_name}


def make_config(config: dict[str, Any], where: str) -> Any:
    """The transformers config object of a config dict (its model_type must be one transformers knows)."""
    transformers = require()
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise UsageError(f"{where} has no model_type: give a config.json written by save_pretrained")
    if "auto_map" in config:
        raise UsageError(f"{where}: model_type {model_type!r} names custom code (auto_map), which is never run "
                         "(no trust_remote_code): only models transformers itself defines can be imported")
    fields = {k: v for k, v in recorded_config(config).items() if k != "model_type"}
    with quiet(transformers):
        try:
            return transformers.AutoConfig.for_model(model_type, **fields)
        except (ValueError, KeyError) as e:
            known = model_type in getattr(transformers, "CONFIG_MAPPING", {})
            if known:
                raise UsageError(f"{where}: transformers {transformers.__version__} cannot read this "
                                 f"{model_type!r} config ({_one_line(e)})") from None
            raise UsageError(f"{where}: model_type {model_type!r} is not a model transformers "
                             f"{transformers.__version__} knows (a newer release may: pip install -U transformers; "
                             "code from the directory is never run)") from None
        except TypeError as e:
            raise UsageError(f"{where}: transformers cannot read this {model_type!r} config ({_one_line(e)})") from None


def build_hf(args: dict[str, Any], where: str = "the run's model config") -> CausalLM:
    """The model a run records (args: {"config": recorded config, "class": the transformers class name}), in
    eval mode on the CPU, with freshly initialized weights (the caller loads a checkpoint into it)."""
    transformers = require()
    config = make_config(args["config"], where)
    with quiet(transformers), torch.random.fork_rng(devices=[]):  # the initialization leaves the RNG as it was
        try:
            model = transformers.AutoModelForCausalLM.from_config(config)
        except ValueError as e:
            raise UsageError(f"{where}: transformers has no causal language model for model_type "
                             f"{config.model_type!r} ({_one_line(e)}): only causal LMs (token ids -> logits) "
                             "can be imported") from None
    name = type(model).__name__
    wanted = args.get("class")
    if wanted is not None and wanted != name:
        raise UsageError(f"{where}: transformers {transformers.__version__} builds {name} from this config, the run "
                         f"was made with {wanted}: use the transformers release the run was imported with")
    return CausalLM(model.float().eval())


class CausalLM(nn.Module):
    """A transformers causal LM as the library's models are: `model(input_ids)` -> logits [N, T, V].

    The wrapped model's submodules (and any parameter or buffer of its own) are this module's, under the
    same names, so functional_call, vmap and state dicts see exactly transformers' parameters.
    """

    hf: Any

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        non_persistent: set[str] = getattr(model, "_non_persistent_buffers_set", set())
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in non_persistent)
        object.__setattr__(self, "hf", model)  # not a submodule: its children are already ours

    @property
    def class_name(self) -> str:
        return type(self.hf).__name__

    def forward(self, input_ids: Tensor) -> Tensor:
        self.hf.training = self.training  # (its children's modes are ours)
        out = self.hf(input_ids=input_ids, use_cache=False, return_dict=True)
        logits: Tensor = out.logits
        return logits


def fit_state(state: dict[str, Tensor], model: CausalLM, where: str) -> dict[str, Tensor]:
    """The weights a directory holds as the model's full state dict (float32), or one line naming what does not fit.

    Tied weights saved once (GPT-2's lm_head.weight is the token embedding) are filled from the tensor they
    share; keys transformers itself ignores when loading (old attention-mask buffers) are dropped; a base
    model's keys (saved without the head's prefix, e.g. `h.0...` for `transformer.h.0...`) get it back.
    """
    expected = model.state_dict()
    hf = model.hf
    ignore = [re.compile(p) for p in (getattr(hf, "_keys_to_ignore_on_load_unexpected", None) or [])]
    state = {k: v for k, v in state.items() if k in expected or not any(p.search(k) for p in ignore)}
    prefix = getattr(hf, "base_model_prefix", "")
    if prefix and state and not any(k in expected for k in state) \
            and all(f"{prefix}.{k}" in expected for k in state):
        state = {f"{prefix}.{k}": v for k, v in state.items()}
    # keys that name one tensor of the model (tied weights): any of them in the file gives the others
    same: dict[object, list[str]] = {}
    for k, t in expected.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else k
        same.setdefault(key, []).append(k)
    aliases = {k: names for names in same.values() for k in names}
    missing = [k for k in expected if k not in state and not any(a in state for a in aliases[k])]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {list(state[k].shape)}, model {list(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    kinds = [f"{k}: file {state[k].dtype}, model {expected[k].dtype}" for k in expected
             if k in state and state[k].dtype != expected[k].dtype
             and not (state[k].dtype.is_floating_point and expected[k].dtype.is_floating_point)]
    problems = [f"{what} {_names(names)}" for what, names in (("missing keys", missing), ("unexpected keys", unexpected),
                                                               ("shape mismatch", shapes), ("dtype mismatch", kinds))
                if names]
    if problems:
        raise UsageError(f"the weights in {where} do not match its config.json: {'; '.join(problems)}")
    out = {}
    for k, want in expected.items():
        t = state[k] if k in state else state[next(a for a in aliases[k] if a in state)]
        out[k] = t.detach().to(want.dtype).contiguous()
    return out


def _names(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 160 else text[:157] + "..."
