"""Read ``torch.save`` checkpoints with numpy alone, and without running them.

``torch.save`` writes a pickle, and unpickling calls whatever the file names:
a downloaded ``.pth`` can run ``os.system``. This reader never imports torch
and never calls anything the file names. Its unpickler resolves names only to
the few rebuild functions and types listed in `_ALLOWED`, implemented here.
Every other name becomes an inert stand-in class (`PickledObject`): it may be
instantiated empty and given its pickled state, which is how
``torch.save(model)`` stores an ``nn.Module``, but calling it is refused.

Formats (see ``torch/serialization.py``):

* zip, torch >= 1.6: ``<prefix>/data.pkl`` holds the object; each storage it
  names by persistent id ``('storage', type, key, location, numel)`` is the
  raw record ``<prefix>/data/<key>``, in the order of ``<prefix>/byteorder``;
* legacy, torch <= 1.5: pickles of the magic number, protocol version and
  sys_info, then the object (persistent ids ``('storage', type, key,
  location, numel, view)``), then the list of storage keys, then for each key
  an int64 element count and the storage's little-endian bytes.

Tensors come back as numpy arrays, float16, bfloat16 and float8 ones as
float32 (`load_with_notes` says how many).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

from practise_jax.errors import UserError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexDoubleStorage": np.complex128,
    "ComplexFloatStorage": np.complex64,
}
# the torch.<name> dtypes that `_rebuild_tensor_v3` names for tensors kept in an untyped storage
_DTYPES = {
    name: dtype
    for name in (
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "uint16",
        "uint32", "uint64", "bool", "complex64", "complex128",
        "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    )
    if (dtype := getattr(np, name, None) or getattr(ml_dtypes, name, None)) is not None
}
# read as float32: numpy has no arithmetic of its own for them, and the models compute in float32
_WIDENED = {np.dtype(t) for name, t in _DTYPES.items() if name == "float16" or name.startswith(("bfloat", "float8"))}


class _Refused(Exception):
    """The file calls a name outside the allow-list (raised mid-unpickling, reported with the path)."""


class _Unsupported(Exception):
    """The file holds a tensor this reader cannot convert (a quantized storage, an exotic dtype)."""


class _Allowed:
    """An allow-listed name: a function of this module, or plain data (a storage type, a dtype, ``object``).

    Read-only (no ``__dict__``, no attribute assignment), so a file's BUILD
    cannot change it for the loads that follow. Calling a data name is refused.
    """

    __slots__ = ("name", "function", "dtype")

    def __init__(self, name: str, function=None, dtype=None):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "function", function)
        object.__setattr__(self, "dtype", None if dtype is None else np.dtype(dtype))

    def __setattr__(self, key, value):
        raise AttributeError(f"{self.name} is read-only")

    def __call__(self, *args):
        if self.function is None:
            raise _Refused(self.name)
        return self.function(*args)


class _InertClass(type):
    """Metaclass of the stand-ins for the classes and functions a file names: calling one is refused.

    Unpickling an instance of a plain class (opcode NEWOBJ) calls
    ``cls.__new__`` directly, not the class, so an ``nn.Module`` still loads.
    """

    def __call__(cls, *args, **kwargs):
        raise _Refused(cls.global_name)


class PickledObject(metaclass=_InertClass):
    """Stand-in for an instance of a class the file names (an ``nn.Module``, an ``argparse.Namespace``).

    ``global_name`` is the class's dotted name and ``state`` its pickled
    ``__dict__``; none of the class's code exists here or runs.
    """

    global_name = "PickledObject"

    def __new__(cls, *args, **kwargs):
        instance = object.__new__(cls)
        instance.state = None
        return instance

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.global_name}>"


class _Storage:
    """One storage of the file: element type, size, and once read its bytes (or a view into a root storage)."""

    __slots__ = ("dtype", "nbytes", "data", "root", "start")

    def __init__(self, dtype: np.dtype, nbytes: int, data: bytes | None = None, root: _Storage | None = None, start: int = 0):
        self.dtype, self.nbytes, self.data, self.root, self.start = dtype, nbytes, data, root, start

    def buffer(self) -> bytes:
        if self.root is not None:
            return self.root.buffer()[self.start : self.start + self.nbytes]
        if self.data is None or len(self.data) < self.nbytes:
            raise ValueError(f"a storage has {len(self.data or b'')} of its {self.nbytes} bytes")
        return self.data


class _Tensor:
    """A tensor as the pickle describes it; an array once unpickling is over and every storage is read."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype", "metadata", "array")

    def __init__(self, storage, offset, size, stride, dtype: np.dtype | None = None, metadata=None):
        if not isinstance(storage, _Storage):
            raise ValueError(f"a tensor's storage is a {type(storage).__name__}")
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride) or not all(type(n) is int and n >= 0 for n in (offset, *size, *stride)):
            raise ValueError(f"a tensor has an invalid layout (offset {offset!r}, size {size!r}, stride {stride!r})")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.dtype, self.metadata, self.array = dtype or storage.dtype, metadata or {}, None

    def materialise(self, swap: bool, widened: collections.Counter) -> np.ndarray:
        """The tensor's elements copied out of its storage; bounds checked, since the layout comes from the file."""
        if self.array is None:
            buffer = np.frombuffer(self.storage.buffer(), self.dtype, count=self.storage.nbytes // self.dtype.itemsize)
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
            if 0 in self.size:
                array = np.zeros(self.size, self.dtype)
            elif last < buffer.size:
                strides = tuple(s * self.dtype.itemsize for s in self.stride)
                array = np.lib.stride_tricks.as_strided(buffer[self.offset :], self.size, strides, writeable=False).copy()
            else:
                raise ValueError(f"a tensor of size {self.size} reaches element {last} of a storage of {buffer.size}")
            if swap:
                array = array.byteswap()
            if self.metadata.get("conj"):
                array = np.conj(array)
            if self.metadata.get("neg"):
                array = -array
            if array.dtype in _WIDENED:
                widened[array.dtype.name] += 1
                array = array.astype(np.float32)
            self.array = array
        return self.array


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _Tensor(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    return _Tensor(storage, storage_offset, size, stride, _dtype_of(dtype, "a tensor of dtype"), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


def _size(dims=()):
    """``torch.Size``: a tuple."""
    return tuple(dims)


def _device(kind, index=None):
    """``torch.device``: its name, ``'cuda:0'``."""
    return str(kind) if index is None else f"{kind}:{index}"


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (pickle protocols 0 and 1), for the stand-ins of plain classes only."""
    if not (isinstance(cls, _InertClass) and base is _ALLOWED["builtins.object"] and state is None):
        raise _Refused(f"copyreg._reconstructor({_name(cls)}, {_name(base)})")
    return cls.__new__(cls)


def _name(value) -> str:
    return getattr(value, "global_name", None) or getattr(value, "name", None) or type(value).__name__


def _dtype_of(marker, what: str) -> np.dtype:
    if not (isinstance(marker, _Allowed) and marker.dtype is not None):
        raise _Unsupported(f"{what} {_name(marker)}")
    return marker.dtype


_FUNCTIONS = {
    **{
        f"torch._utils.{function.__name__}": function
        for function in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter, _rebuild_parameter_with_state)
    },
    "torch.Size": _size,
    "torch.device": _device,
    "copyreg._reconstructor": _reconstructor,
}
_DATA = {
    "builtins.object": None,
    "torch.storage.UntypedStorage": np.uint8,
    "torch.UntypedStorage": np.uint8,
    **{f"{module}.{name}": dtype for module in ("torch", "torch.cuda") for name, dtype in _STORAGE_DTYPES.items()},
    **{f"torch.{name}": dtype for name, dtype in _DTYPES.items()},
}
_ALLOWED = {
    **{name: _Allowed(name, function=function) for name, function in _FUNCTIONS.items()},
    **{name: _Allowed(name, dtype=dtype) for name, dtype in _DATA.items()},
    # real classes, but immutable builtins and harmless to call
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
}
# protocol-2 pickles spell builtins and copyreg the Python 2 way
_ALLOWED |= {"__builtin__.set": set, "__builtin__.object": _ALLOWED["builtins.object"], "copy_reg._reconstructor": _ALLOWED["copyreg._reconstructor"]}


class _Unpickler(pickle.Unpickler):
    """Resolves names only to `_ALLOWED` or to per-load inert stand-ins; storages come from ``persistent_load``."""

    def __init__(self, file, persistent_load=None):
        super().__init__(file, encoding="utf-8")
        self._persistent_load = persistent_load
        self._stand_ins: dict[str, _InertClass] = {}

    def find_class(self, module: str, name: str):
        dotted = f"{module}.{name}"
        if dotted in _ALLOWED:
            return _ALLOWED[dotted]
        if dotted not in self._stand_ins:
            self._stand_ins[dotted] = _InertClass(name, (PickledObject,), {"global_name": dotted, "__module__": __name__})
        return self._stand_ins[dotted]

    def persistent_load(self, pid):
        if self._persistent_load is None:
            raise pickle.UnpicklingError("a persistent id outside the checkpoint's object pickle")
        return self._persistent_load(pid)


def load(path: str | os.PathLike) -> object:
    """The object a ``torch.save`` file holds, tensors as numpy arrays; never imports torch or runs the file."""
    return load_with_notes(path)[0]


def load_with_notes(path: str | os.PathLike) -> tuple[object, tuple[str, ...]]:
    """`load`, and notes on what was converted (``'12 float16 tensors were read as float32'``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weight file '{path}' does not exist; check the path.")
    try:
        with open(path, "rb") as file:
            is_zip = file.read(4) == b"PK\x03\x04"
        obj, swap = _read_zip(path) if is_zip else _read_legacy(path)
        widened = collections.Counter()
        obj = _materialise(obj, swap, widened, {})
    except _Refused as refused:
        name = str(refused)
        if name.startswith(("torch._utils.", "torch._tensor.", "torch.serialization.")):
            raise UserError(
                f"'{path}' holds a kind of tensor this reader does not support ({name}: quantized, sparse, nested "
                "or a tensor subclass); save plain dense tensors with model.state_dict() instead."
            ) from None
        raise UserError(
            f"'{path}' refers to {name}, which a checkpoint of tensors never needs; refusing to load it "
            "(nothing in the file was run). If you trust whoever made it, load it with "
            "torch.load(weights_only=False) and save its state_dict() instead."
        ) from None
    except _Unsupported as unsupported:
        raise UserError(f"'{path}' holds {unsupported}, which this reader cannot convert; save float32 tensors instead.") from None
    except UserError:
        raise
    except Exception as error:  # a truncated or foreign file surfaces as many different exceptions
        raise UserError(
            f"could not read '{path}' ({type(error).__name__}: {error}). "
            "The file is truncated, corrupt or not a PyTorch checkpoint; download or export it again."
        ) from None
    notes = tuple(
        f"{count} {dtype} tensor{'s were' if count > 1 else ' was'} read as float32" for dtype, count in sorted(widened.items())
    )
    return obj, notes


def _read_zip(path: Path) -> tuple[object, bool]:
    if not zipfile.is_zipfile(path):
        raise ValueError("a zip archive without its end (cut short?)")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        pickles = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"a zip archive with {len(pickles)} top-level data.pkl records, not a torch.save file")
        prefix = pickles[0].removesuffix("data.pkl")
        if prefix + "constants.pkl" in names:
            raise UserError(
                f"'{path}' is a TorchScript archive (torch.jit.save), not a checkpoint; "
                "load it with torch.jit.load and save model.state_dict() instead."
            )
        byteorder = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        storages: dict[str, _Storage] = {}

        def persistent_load(pid):
            kind, storage_type, key, _location, numel = pid
            if kind != "storage":
                raise ValueError(f"a persistent id of kind {kind!r}")
            if key not in storages:
                dtype = _dtype_of(storage_type, "a storage of type")
                storages[key] = _Storage(dtype, numel * dtype.itemsize, archive.read(f"{prefix}data/{key}"))
            return storages[key]

        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), persistent_load).load()
    return obj, byteorder != sys.byteorder


def _read_legacy(path: Path) -> tuple[object, bool]:
    file = io.BytesIO(path.read_bytes())  # in memory: a length in a corrupt file can then not ask for more than there is
    if _Unpickler(file).load() != MAGIC_NUMBER:
        raise ValueError("no torch magic number at the start")
    if (version := _Unpickler(file).load()) != PROTOCOL_VERSION:
        raise ValueError(f"legacy protocol version {version!r}, expected {PROTOCOL_VERSION}")
    _Unpickler(file).load()  # sys_info: the storages are little-endian whatever it says
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
        kind, *data = pid
        if kind == "module":  # ('module', class, source file, source): a class of torch.save(model)
            return data[0]
        if kind != "storage":
            raise ValueError(f"a persistent id of kind {kind!r}")
        storage_type, key, _location, numel, view = data
        dtype = _dtype_of(storage_type, "a storage of type")
        storage = storages.setdefault(key, _Storage(dtype, numel * dtype.itemsize))
        if view is None:
            return storage
        view_key, offset, view_numel = view  # storage views, written by torch < 1.0
        return storages.setdefault(view_key, _Storage(dtype, view_numel * dtype.itemsize, root=storage, start=offset * dtype.itemsize))

    obj = _Unpickler(file, persistent_load).load()
    for key in _Unpickler(file).load():
        storage = storages[key]
        (count,) = struct.unpack("<q", file.read(8))
        storage.data = file.read(count * storage.dtype.itemsize)
    return obj, sys.byteorder != "little"


def _materialise(obj, swap: bool, widened: collections.Counter, memo: dict[int, object]):
    """``obj`` with each `_Tensor` replaced by its array: in place in lists, dicts and stand-ins, shared and cyclic parts once."""
    if isinstance(obj, _Tensor):
        return obj.materialise(swap, widened)
    if id(obj) in memo:
        return memo[id(obj)]
    memo[id(obj)] = obj
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _materialise(value, swap, widened, memo)
    elif isinstance(obj, list):
        obj[:] = [_materialise(value, swap, widened, memo) for value in obj]
    elif isinstance(obj, tuple):
        memo[id(obj)] = tuple(_materialise(value, swap, widened, memo) for value in obj)
    elif isinstance(obj, PickledObject):
        obj.state = _materialise(obj.state, swap, widened, memo)
    return memo[id(obj)]


def module_state_dict(obj, _ancestors: tuple = ()) -> dict[str, np.ndarray] | None:
    """What ``model.state_dict()`` gives for the stand-in of a pickled ``nn.Module``; None for anything else.

    Walks ``_parameters``, persistent ``_buffers`` and ``_modules`` in torch's
    order, with dotted keys (``layer1.0.conv1.weight``).
    """
    state = obj.state if isinstance(obj, PickledObject) else None
    if not (isinstance(state, dict) and isinstance(state.get("_parameters"), dict) and isinstance(state.get("_modules"), dict)):
        return None
    skipped = state.get("_non_persistent_buffers_set")
    skipped = skipped if isinstance(skipped, (set, frozenset)) else set()
    buffers = state.get("_buffers") if isinstance(state.get("_buffers"), dict) else {}
    tensors = {name: value for name, value in state["_parameters"].items() if isinstance(value, np.ndarray)}
    tensors |= {name: value for name, value in buffers.items() if isinstance(value, np.ndarray) and name not in skipped}
    for name, child in state["_modules"].items():
        if any(child is ancestor for ancestor in _ancestors):
            continue
        for key, value in (module_state_dict(child, (*_ancestors, obj)) or {}).items():
            tensors[f"{name}.{key}"] = value
    return tensors
