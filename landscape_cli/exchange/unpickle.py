"""Model weights saved by other tools (torch.save, PyTorch Lightning, safetensors), read without running their code.

A pickle can name any Python callable and have it called while it is read, so a checkpoint from
elsewhere is never given to ``pickle``: ``torch.load(weights_only=True)`` reads it when it holds
only tensors and plain containers, and otherwise (Lightning's hyper-parameters, a user's class)
our own restricted unpickler reads torch's zip format, rebuilding tensors and plain containers and
putting an inert `Placeholder` in place of every other object the file names.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import re
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from landscape_cli.errors import UsageError

SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
# Where training scripts put the weights in the dict they save, most specific first
# ("state_dict": Lightning; "model_state_dict": the PyTorch tutorials; "module": DeepSpeed).
STATE_KEYS = ("state_dict", "model_state_dict", "model", "module")
_SHOWN = 3  # names listed in a message before "and N more"


@dataclass
class ForeignFile:
    """The weights of one checkpoint file written by another tool, and what else was found in it."""

    path: Path
    state: dict[str, Tensor]
    source: str  # where the weights were: "safetensors", "state dict", "['state_dict']", "['model']['module']"...
    reader: str  # "safetensors", "weights_only" (torch's restricted loader) or "restricted" (ours, with placeholders)
    placeholders: list[str] = field(default_factory=list)  # module.qualname of every object not rebuilt
    extra: dict[str, int] = field(default_factory=dict)  # plain int top-level values: "epoch", "global_step"...
    # a Lightning checkpoint's place in training as this tool counts epochs (0 = the initial weights), or why not
    lightning_epoch: int | None = None
    lightning_problem: str | None = None


# --- reading -----------------------------------------------------------------------------------


def read_weights(path: Path) -> ForeignFile:
    """The tensors of a .safetensors file or of a torch.save file (a state dict, or a dict holding one)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path} is not a file: give a checkpoint file ({', '.join(SUFFIXES)})")
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from e
    if not head:
        raise UsageError(f"{path} is empty, not a checkpoint: give a file written by torch.save or safetensors")

    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format (the default since torch 1.6)
        obj, reader, placeholders = _read_torch_zip(path)
    elif path.suffix.lower() == ".safetensors" or _looks_like_safetensors(head, path):
        return ForeignFile(path, _read_safetensors(path), "safetensors", "safetensors")
    else:
        obj, reader, placeholders = _read_legacy(path, head)

    state, source = _find_state(obj, path, placeholders)
    extra = {k: v for k, v in obj.items() if isinstance(k, str) and type(v) is int} if isinstance(obj, dict) else {}
    epoch, problem = lightning_epoch(obj)
    return ForeignFile(path, state, source, reader, placeholders, extra, epoch, problem)


def lightning_epoch(obj: Any) -> tuple[int | None, str | None]:
    """The epoch of a Lightning checkpoint as this tool counts them: (epoch, None), or (None, why not).

    Lightning stores `epoch`, the 0-based index of the epoch being trained when it saved, and in its
    fit loop's `epoch_progress` how many epochs' training it had processed. A checkpoint saved at the
    end of epoch index k (ModelCheckpoint's default: `epoch=k-step=...ckpt`) holds the weights after
    k + 1 epochs of training, which is this tool's epoch k + 1 (epoch 0 is the initial weights). A
    checkpoint saved inside an epoch (every_n_train_steps) is between two epochs: (None, the reason).
    Not a Lightning checkpoint: (None, None).
    """
    if not isinstance(obj, dict) or "pytorch-lightning_version" not in obj or type(obj.get("epoch")) is not int:
        return None, None
    epoch = int(obj["epoch"])
    try:
        processed = obj["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    except (KeyError, TypeError):
        processed = None  # an old Lightning without loop state: its checkpoints are saved at epoch ends
    if processed is not None and int(processed) != epoch + 1:
        return None, (f"it was saved inside epoch {epoch} (step {obj.get('global_step')}), not at an epoch's end")
    return epoch + 1, None


def _looks_like_safetensors(head: bytes, path: Path) -> bool:
    # A safetensors file starts with the length of its JSON header (u64, little-endian), then "{".
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= struct.unpack("<Q", head[:8])[0] < path.stat().st_size


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        import safetensors
        import safetensors.torch
    except ImportError as e:
        raise UsageError(f"reading {path} needs the safetensors package: pip install safetensors") from e
    try:
        state: dict[str, Tensor] = safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable safetensors file ({_one_line(e)}): is it complete?") from e
    if not state:
        raise UsageError(f"{path} holds no tensors")
    return state


def _read_torch_zip(path: Path) -> tuple[Any, str, list[str]]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable checkpoint: its zip archive is truncated or damaged "
                         f"({_one_line(e)})") from e
    with zf:
        pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise UsageError(f"{path} is a zip archive but not a torch.save checkpoint (no <archive>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "constants.pkl" in zf.namelist():
            # Checked before torch.load, which would warn and then refuse it too.
            raise UsageError(f"{path} is a TorchScript archive (torch.jit.save), not weights: "
                             "save model.state_dict() with torch.save instead")
        try:
            return torch.load(path, map_location="cpu", weights_only=True), "weights_only", []
        except Exception:  # refused (a global outside torch's allow-list) or unreadable: ours decides which
            pass
        try:
            unpickler = RestrictedUnpickler(io.BytesIO(zf.read(pickles[0])), _ZipStorages(zf, prefix, path))
            return unpickler.load(), "restricted", unpickler.placeholders
        except UsageError:
            raise
        except Exception as e:  # a damaged member (bad CRC, truncated), a malformed pickle, a refused opcode
            raise UsageError(f"{path} is not a readable checkpoint: {_one_line(e)}") from e


def _read_legacy(path: Path, head: bytes) -> tuple[Any, str, list[str]]:
    # torch.load(weights_only=True) still reads the legacy format when it holds only tensors; our
    # restricted unpickler does not (tensors there are rebuilt differently), so anything else is refused.
    if _first_pickle(head) != torch.serialization.MAGIC_NUMBER:
        raise UsageError(f"{path} is not a checkpoint: not a torch.save zip archive, a legacy torch.save file "
                         "or a safetensors file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only", []
    except Exception as e:
        raise UsageError(f"{path} was saved with _use_new_zipfile_serialization=False and holds objects other than "
                         "tensors: re-save it with torch.save(state_dict, path)") from e


def _first_pickle(head: bytes) -> Any:
    """The first object pickled in `head`, read by the restricted unpickler (None if it is not a pickle)."""
    try:
        return RestrictedUnpickler(io.BytesIO(head), None).load()
    except Exception:
        return None


def _find_state(obj: Any, path: Path, placeholders: list[str]) -> tuple[dict[str, Tensor], str]:
    """The state dict in what the file holds, and where it was; a one-line UsageError if there is none."""
    state = _as_state(obj)
    if state is not None:
        return state, "state dict"
    if isinstance(obj, Placeholder):
        raise UsageError(f"{path} holds a pickled {obj.qualname} object, not weights: "
                         "save model.state_dict() instead (torch.save(model.state_dict(), path))")
    if not isinstance(obj, dict):
        what = "a single tensor" if isinstance(obj, Tensor) else f"a {type(obj).__name__}"
        raise UsageError(f"{path} holds {what}, not a state dict (names -> tensors): save model.state_dict() instead")
    for key in STATE_KEYS:
        value = obj.get(key)
        state = _as_state(value)
        if state is not None:
            return state, f"[{key!r}]"
        if isinstance(value, dict):  # one level down: {"model": {"state_dict": ...}}
            for inner in STATE_KEYS:
                state = _as_state(value.get(inner))
                if state is not None:
                    return state, f"[{key!r}][{inner!r}]"
    # A dict of a script's own making ({"net": ..., "opt": ...}): its one state dict, whatever the key.
    found = [(k, state) for k, v in obj.items() if (state := _as_state(v)) is not None]
    if len(found) == 1:
        return found[0][1], f"[{found[0][0]!r}]"
    if found:
        raise UsageError(f"{path} holds several state dicts ({_names([repr(k) for k, _ in found])}): "
                         "save the one of the model alone with torch.save(model.state_dict(), path)")
    for key in STATE_KEYS:
        if isinstance(obj.get(key), Placeholder):
            raise UsageError(f"{path} holds a pickled {obj[key].qualname} object under {key!r}, not weights: "
                             "save model.state_dict() instead")
    keys = _names([repr(k) for k in obj])
    needs = f"; unpickling it would need {_names(placeholders)}" if placeholders else ""
    raise UsageError(f"{path} holds no weights: none of its keys ({keys or 'none'}) is a state dict of tensors{needs}: "
                     "save model.state_dict() instead")


def _as_state(obj: Any) -> dict[str, Tensor] | None:
    """`obj` as a state dict (plain tensors by name), or None if it is not one."""
    if not isinstance(obj, dict) or not obj:
        return None
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return None
    return {k: v.detach() for k, v in obj.items()}  # nn.Parameter -> Tensor


# --- the restricted unpickler ------------------------------------------------------------------


class Placeholder:
    """Stands in for an object of a global the file names that is not a tensor or a plain container.

    It accepts any arguments and does nothing, so whatever the file asks of it (a constructor,
    ``__setstate__``, items, calls) runs no code. Each global gets its own subclass, named by `qualname`.
    """

    qualname: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:  # e.g. a method fetched with getattr
        return self

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (Lightning's AttributeDict)
        pass

    def append(self, item: Any) -> None:  # list subclasses
        pass

    def extend(self, items: Iterable[Any]) -> None:
        pass

    def add(self, item: Any) -> None:  # set subclasses
        pass

    def __repr__(self) -> str:
        return f"<{self.qualname}: not loaded>"


def _is_placeholder(obj: Any) -> bool:
    return isinstance(obj, Placeholder) or (isinstance(obj, type) and issubclass(obj, Placeholder))


def _storage(obj: Any) -> torch.storage.TypedStorage:
    if type(obj) is not torch.storage.TypedStorage:  # only what _ZipStorages made
        raise pickle.UnpicklingError(f"a tensor is rebuilt from {type(obj).__name__}, not from a storage of the file")
    return obj


# Tensors are rebuilt by torch's own functions, but backward hooks and Python attributes a file
# attaches to a tensor are dropped: they could only be placeholders, and are not weights.
def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any) -> Tensor:
    return torch._utils._rebuild_tensor(_storage(storage), offset, size, stride)


def _rebuild_tensor_v2(storage: Any, offset: int, size: Any, stride: Any, requires_grad: bool, backward_hooks: Any,
                       metadata: Any = None) -> Tensor:
    return torch._utils._rebuild_tensor_v2(_storage(storage), offset, size, stride, bool(requires_grad), OrderedDict(),
                                           metadata if isinstance(metadata, dict) else None)


def _rebuild_tensor_v3(storage: Any, offset: int, size: Any, stride: Any, requires_grad: bool, backward_hooks: Any,
                       dtype: Any, metadata: Any = None) -> Tensor:
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"a tensor's dtype is {type(dtype).__name__}")
    return torch._utils._rebuild_tensor_v3(_storage(storage), offset, size, stride, bool(requires_grad), OrderedDict(),
                                           dtype, metadata if isinstance(metadata, dict) else None)


def _rebuild_parameter(data: Any, requires_grad: bool, backward_hooks: Any, state: Any = None) -> Tensor:
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError(f"a parameter holds {type(data).__name__}, not a tensor")
    return torch.nn.Parameter(data, bool(requires_grad))


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    # torch's version calls func(*args) and sets `state` as attributes: here func must itself pass
    # the allow-list, and only plain tensors and parameters come out.
    result = _call(func, tuple(args))
    if isinstance(result, Placeholder) or (new_type in (Tensor, torch.nn.Parameter) and isinstance(result, Tensor)):
        return result
    if _is_placeholder(new_type):
        return new_type()
    raise pickle.UnpicklingError(f"a tensor of type {new_type!r}")


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(str, "latin1"); no other codec is looked up.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin1 bytes")
    return text.encode("latin1")


def _allowed_globals() -> dict[str, Any]:
    """The globals a file may name and get the real object: tensor rebuilders, dtypes, plain containers."""
    allowed: dict[str, Any] = {
        "collections.OrderedDict": OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.slice": slice,
        "builtins.complex": complex,
        "_codecs.encode": _encode,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.Tensor": Tensor,  # referred to by _rebuild_from_type_v2, never called
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch.UntypedStorage": torch.UntypedStorage,
        "torch.storage.UntypedStorage": torch.UntypedStorage,  # the storage of the dtypes without a typed one (uint16...)
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    }
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype):
            allowed[f"torch.{name}"] = value
    return allowed


_ALLOWED = _allowed_globals()
# What a file may call (REDUCE, NEWOBJ...): classes like Tensor and dtypes are only referred to.
_CALLABLE = {id(f) for f in (OrderedDict, set, frozenset, slice, complex, _encode, torch.Size, torch.device,
                             _rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter,
                             _rebuild_from_type_v2)}
_NEW = (OrderedDict, set, frozenset)  # classes a file may create with cls.__new__ (NEWOBJ)


def _call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
    if _is_placeholder(func):
        return func()  # the arguments are not looked at, let alone called
    if id(func) not in _CALLABLE:
        raise pickle.UnpicklingError(f"the file calls {func!r}, which is not on the allow-list")
    return func(*args, **(kwargs or {}))


class _ZipStorages:
    """The storages of a torch zip archive (``<archive>/data/<key>``), for ``persistent_load``."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str, path: Path) -> None:
        self.zf, self.prefix, self.path = zf, prefix, path
        self.loaded: dict[str, torch.storage.TypedStorage] = {}
        # Files without a byteorder record were written little-endian (as torch.load assumes).
        order = zf.read(prefix + "byteorder").decode() if prefix + "byteorder" in zf.namelist() else "little"
        if order not in ("little", "big"):
            raise UsageError(f"{path} is not a readable checkpoint: unknown byte order {order!r}")
        self.byteorder = order

    def __call__(self, pid: Any) -> torch.storage.TypedStorage:
        # pid is ('storage', storage type, key, location, numel); the location is ignored (all on the CPU).
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, storage_type, key, _, numel = pid
        if isinstance(storage_type, torch.serialization.StorageType):
            dtype = storage_type.dtype
        elif storage_type is torch.UntypedStorage:
            dtype = torch.uint8
        else:
            raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"bad storage reference {pid!r}")
        if key in self.loaded:
            return self.loaded[key]
        name = f"{self.prefix}data/{key}"
        nbytes = numel * dtype.itemsize
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise UsageError(f"{self.path} is not a readable checkpoint: it lacks the tensor data {name}") from None
        if info.file_size < nbytes:  # checked before allocating: the size comes from the file
            raise UsageError(f"{self.path} is not a readable checkpoint: {name} holds {info.file_size} bytes, "
                             f"its tensor needs {nbytes}")
        raw = bytearray(self.zf.read(name)[:nbytes])
        data = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        untyped = data.untyped_storage()
        if self.byteorder != sys.byteorder and dtype.itemsize > 1:
            untyped.byteswap(dtype)
        typed = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        self.loaded[key] = typed
        return typed


class RestrictedUnpickler(pickle._Unpickler):
    """A pickle reader that gives real objects only for `_ALLOWED` globals and a `Placeholder` for all others.

    It is Python's pure-Python unpickler with every opcode that calls, builds or fills an object
    replaced by a checked version; globals are looked up in a table, never imported, since importing
    a module already runs its code.
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)
    # Attributes of the pure-Python unpickler that typeshed does not declare.
    stack: list[Any]
    proto: int
    append: Callable[[Any], None]
    pop_mark: Callable[[], list[Any]]

    def __init__(self, file: io.BytesIO, storages: Callable[[Any], Any] | None) -> None:
        super().__init__(file, encoding="utf-8")
        self._storages = storages
        self._classes: dict[str, type[Placeholder]] = {}
        self.placeholders: list[str] = []  # module.qualname of every global replaced, in order of appearance

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names (torch.save: protocol 2)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif self.proto < 3 and module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualname = f"{module}.{name}"
        if module == "torch" and name.endswith("Storage") and name != "UntypedStorage":
            try:
                return torch.serialization.StorageType(name)  # FloatStorage... (its dtype names the tensor's)
            except KeyError:
                pass
        if qualname in _ALLOWED:
            return _ALLOWED[qualname]
        if qualname not in self._classes:
            self._classes[qualname] = type(name, (Placeholder,), {"qualname": qualname})
            self.placeholders.append(qualname)
        return self._classes[qualname]

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None:
            raise pickle.UnpicklingError("a persistent id outside a torch zip archive")
        return self._storages(pid)

    # --- the opcodes that call or fill objects -------------------------------------------------

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = _call(self.stack[-1], tuple(args))

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        if _is_placeholder(cls):
            return cls()
        if cls in _NEW:
            return cls.__new__(cls, *args, **kwargs)
        raise pickle.UnpicklingError(f"the file creates an object of {cls!r}, which is not on the allow-list")

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ (protocols 0 and 1)
        self.append(_call(klass, tuple(args)))

    def _load_build(self) -> None:
        self.stack.pop()  # the state: never applied
        inst = self.stack[-1]
        # A placeholder ignores its state; a state dict's OrderedDict carries `_metadata` (versions
        # of the modules' formats), which is not needed: num_batches_tracked is filled by match_state.
        if not (isinstance(inst, Placeholder) or type(inst) is OrderedDict):
            raise pickle.UnpicklingError(f"the file sets the state of {type(inst).__name__}")

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._fill(self.stack[-1], dict, lambda d: d.__setitem__(key, value))

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        self._fill(self.stack[-1], dict, lambda d: d.update(zip(items[::2], items[1::2], strict=True)))

    def _load_append(self) -> None:
        value = self.stack.pop()
        self._fill(self.stack[-1], list, lambda lst: lst.append(value))

    def _load_appends(self) -> None:
        items = self.pop_mark()
        self._fill(self.stack[-1], list, lambda lst: lst.extend(items))

    def _load_additems(self) -> None:
        items = self.pop_mark()
        self._fill(self.stack[-1], set, lambda s: s.update(items))

    @staticmethod
    def _fill(target: Any, kind: type, fill: Callable[[Any], None]) -> None:
        if isinstance(target, Placeholder):
            return
        if type(target) is not kind and not (kind is dict and type(target) is OrderedDict):
            raise pickle.UnpicklingError(f"the file adds items to {type(target).__name__}")
        fill(target)

    def _load_ext(self) -> None:
        # Extension codes resolve through copyreg's process-wide registry and cache: refused.
        raise pickle.UnpicklingError("extension codes (EXT1/EXT2/EXT4) are not supported")

    for _op, _method in ((pickle.REDUCE, _load_reduce), (pickle.NEWOBJ, _load_newobj),
                         (pickle.NEWOBJ_EX, _load_newobj_ex), (pickle.BUILD, _load_build),
                         (pickle.SETITEM, _load_setitem), (pickle.SETITEMS, _load_setitems),
                         (pickle.APPEND, _load_append), (pickle.APPENDS, _load_appends),
                         (pickle.ADDITEMS, _load_additems), (pickle.EXT1, _load_ext),
                         (pickle.EXT2, _load_ext), (pickle.EXT4, _load_ext)):
        dispatch[_op[0]] = _method
    del _op, _method


# --- fitting a model ---------------------------------------------------------------------------


def match_state(state: dict[str, Tensor], expected: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """`state` with the keys, shapes and float dtypes of a model's `expected` state dict; one-line UsageError if it cannot.

    A prefix common to every key (``model.``, ``module.``...) is stripped when that makes the keys
    fit; BatchNorm's ``num_batches_tracked`` counters, which older files lack, are filled with zeros.
    """
    candidates = [("", state)]  # (stripped prefix, keys without it), the file's own keys first
    current, prefix = state, ""
    while current and all("." in k for k in current) and len({k.split(".", 1)[0] for k in current}) == 1:
        first = next(iter(current)).split(".", 1)[0] + "."
        current = {k[len(first):]: v for k, v in current.items()}
        prefix += first
        candidates.append((prefix, current))

    def missing(keys: dict[str, Tensor]) -> list[str]:
        return [k for k in expected if k not in keys and not _is_batch_counter(k)]

    fitting = [c for c in candidates if not missing(c[1]) and all(k in expected for k in c[1])]
    # Nothing fits: report against the candidate closest to the model.
    prefix, keys = fitting[0] if fitting else max(candidates, key=lambda c: len(c[1].keys() & expected.keys()))

    problems = []
    if lacking := missing(keys):
        problems.append(f"missing keys {_names(lacking)}")
    if unexpected := [k for k in keys if k not in expected]:
        problems.append(f"unexpected keys {_names(unexpected)}")
    shared = [k for k in expected if k in keys]
    problems += _first_few("shape mismatch", [f"{k}: file {list(keys[k].shape)}, model {list(expected[k].shape)}"
                                              for k in shared if keys[k].shape != expected[k].shape])
    # Floats convert (a float16 file into a float32 model); an integer buffer's dtype never changes silently.
    problems += _first_few("dtype mismatch", [f"{k}: file {keys[k].dtype}, model {expected[k].dtype}" for k in shared
                                              if keys[k].dtype != expected[k].dtype and not
                                              (keys[k].dtype.is_floating_point and expected[k].dtype.is_floating_point)])
    if problems:
        stripped = f" (after removing the key prefix {prefix!r})" if prefix else ""
        raise UsageError(f"the weights in {path} do not fit the model{stripped}: {'; '.join(problems)}: "
                         "give the model and arguments the file was saved from")

    result = {}
    for k, want in expected.items():
        if k in keys:
            t = keys[k]
            result[k] = t if t.dtype == want.dtype else t.to(want.dtype)
        else:  # a num_batches_tracked counter (missing() let only those through)
            result[k] = torch.zeros_like(want, device="cpu")
    return result


def _first_few(kind: str, issues: list[str]) -> list[str]:
    more = [f"and {len(issues) - _SHOWN} more {kind}es"] if len(issues) > _SHOWN else []
    return [f"{kind} {issue}" for issue in issues[:_SHOWN]] + more


def _is_batch_counter(key: str) -> bool:
    return key == "num_batches_tracked" or key.endswith(".num_batches_tracked")


# --- which files, which epochs -----------------------------------------------------------------


OPTIMIZER_SUFFIXES = (".optim.pt", ".optimizer.pt", ".optim.pth", ".optimizer.pth")


def checkpoint_files(paths: list[Path]) -> list[Path]:
    """The checkpoint files that `paths` name: files as given, folders expanded into theirs in natural order.

    Natural order (``epoch-2`` before ``epoch-10``) so that files pair with ``--epochs`` as a person reads them.
    A folder's optimizer-state files (``*.optim.pt``, as this tool's store keeps beside its checkpoints) are
    skipped; given by name, a file is read as it is.
    """
    if not paths:
        raise UsageError("no checkpoint files given: give files or folders of .pt, .pth, .ckpt, .bin or .safetensors")
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            # optimizer states beside the weights (this tool's epoch-0006.optim.pt) are not checkpoints of a model
            found = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                            and p.suffix.lower() in SUFFIXES and not p.name.lower().endswith(OPTIMIZER_SUFFIXES)),
                           key=lambda p: _natural(p.name))
            if not found:
                raise UsageError(f"{path} holds no checkpoint files ({', '.join(SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise UsageError(f"{path} is not a file or folder (a pipe or device): give checkpoint files")
        else:
            raise UsageError(f"{path}: no such file or folder")
    seen: dict[Path, Path] = {}
    for f in files:
        if (first := seen.setdefault(f.resolve(), f)) is not f:
            raise UsageError(f"{f} is given twice ({first} is the same file): give each checkpoint once")
    return files


def epoch_numbers(paths: list[Path], epochs: list[int] | None,
                  files: list[ForeignFile] | None = None) -> list[int]:
    """The epoch of each file: `epochs` (from --epochs) if given, else the epoch a Lightning checkpoint stores
    (see `lightning_epoch`), else the one number in each file name."""
    if epochs is not None:
        if len(epochs) != len(paths):
            raise UsageError(f"--epochs gives {len(epochs)} epoch(s) for {len(paths)} file(s): give one per file, "
                             "in the order of the files")
        if negative := [e for e in epochs if e < 0]:
            raise UsageError(f"--epochs {negative[0]}: epochs are 0 or more")
        if len(set(epochs)) != len(epochs):
            twice = next(e for e in epochs if epochs.count(e) > 1)
            raise UsageError(f"--epochs gives epoch {twice} twice: each file needs its own epoch")
        return list(epochs)
    numbers: list[int] = []
    owner: dict[int, Path] = {}
    for i, path in enumerate(map(Path, paths)):
        stored = files[i] if files is not None else None
        if stored is not None and stored.lightning_problem is not None:
            raise UsageError(f"{path.name} is a Lightning checkpoint that is no epoch of training: "
                             f"{stored.lightning_problem}; give the epoch of each file with --epochs")
        found = re.findall(r"\d+", path.stem)
        if stored is not None and stored.lightning_epoch is not None:
            epoch = stored.lightning_epoch
        elif len(found) != 1:
            what = f"several numbers ({', '.join(found)})" if found else "no number"
            raise UsageError(f"the file name {path.name} holds {what}, so its epoch is unknown: "
                             "give the epoch of each file with --epochs")
        else:
            epoch = int(found[0])
        if epoch in owner:
            raise UsageError(f"{owner[epoch].name} and {path.name} both name epoch {epoch}: "
                             "give the epoch of each file with --epochs")
        owner[epoch] = path
        numbers.append(epoch)
    return numbers


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _names(names: list[str]) -> str:
    """The first few of `names`, and how many more."""
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."
