"""`torch_file` reads torch.save files without torch and runs nothing in them; `read_checkpoint` finds the state dict."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from model_zoo.convert import torch_file
from model_zoo.convert.state_dict import read_checkpoint, read_state_dict
from practise_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]

try:
    import torch
except ImportError:  # the reader needs no torch: only the tests that write files with it skip
    torch = None

if torch is not None:

    class Net(torch.nn.Module):
        """A user's model class, pickled whole by torch.save(model): the reader must not need it."""

        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 2, bias=False)])
            self.register_buffer("scale", torch.full((4,), 2.0))
            self.register_buffer("cache", torch.zeros(3), persistent=False)


def _torch():
    return require("torch")


def _arrays(state_dict) -> dict[str, np.ndarray]:
    """torch's tensors as numpy, half and bfloat16 as float32 like the reader."""
    widen = (torch.float16, torch.bfloat16)
    return {k: (v.float() if v.dtype in widen else v).detach().numpy() for k, v in state_dict.items()}


def _assert_same(ours: dict, theirs: dict):
    assert list(ours) == list(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and ours[key].shape == theirs[key].shape, key
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


# --- the real legacy checkpoints -------------------------------------------------------------


def test_cifar_resnets_equal_torch_load(shared_data):
    files = sorted((shared_data / "cifar10_resnets").glob("*.th"))
    loaded = {path: torch_file.load(path) for path in files}
    assert [len(obj["state_dict"]) for obj in loaded.values()] == [97, 157, 217, 277]
    torch = _torch()
    for path, obj in loaded.items():
        reference = torch.load(path, map_location="cpu", weights_only=True)
        assert obj["best_prec1"] == reference["best_prec1"]
        assert isinstance(obj["state_dict"], OrderedDict)
        _assert_same(obj["state_dict"], _arrays(reference["state_dict"]))


def test_cifar_resnet_checkpoint(shared_data):
    checkpoint = read_checkpoint(shared_data / "cifar10_resnets" / "resnet20-12fca82f.th")
    assert checkpoint.key == "state_dict" and checkpoint.notes == ("stripped prefix 'module.'",)
    assert len(checkpoint.tensors) == 97 and checkpoint.tensors["linear.weight"].shape == (10, 64)
    assert checkpoint.source.endswith("resnet20-12fca82f.th")


def test_reader_runs_where_torch_cannot_be_imported(shared_data):
    folder = shared_data / "cifar10_resnets"
    script = f"""
import json, sys
from pathlib import Path
sys.modules["torch"] = None  # any import of torch now fails
from model_zoo.convert.state_dict import read_state_dict
files = sorted(Path({str(folder)!r}).glob("*.th"))
print(json.dumps({{p.name: float(sum(a.astype("float64").sum() for a in read_state_dict(p).values())) for p in files}}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    sums = json.loads(result.stdout.splitlines()[-1])
    assert len(sums) == 4
    for name, total in sums.items():
        assert total == float(sum(a.astype("float64").sum() for a in read_state_dict(folder / name).values()))


# --- files written by torch 2.x --------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_dtypes_and_views_equal_torch(tmp_path, legacy):
    torch = _torch()
    base = torch.arange(40, dtype=torch.float32)
    state = OrderedDict(
        f32=torch.randn(3, 4),
        f16=torch.randn(5).half(),
        bf16=torch.randn(2, 3).bfloat16(),
        i64=torch.arange(7),
        u8=torch.arange(4, dtype=torch.uint8),
        flag=torch.tensor([True, False]),
        scalar=torch.tensor(3.5),
        empty=torch.zeros(0, 3),
        transposed=torch.randn(3, 5).t(),
        window=base[4:16].view(3, 4),  # two views of one storage, at offsets
        strided=base[10:30:3],
        param=torch.nn.Parameter(torch.randn(2, 2)),
    )
    if not legacy:
        state["u16"] = torch.tensor([1, 60000], dtype=torch.uint16)  # a torch >= 2.3 dtype, in an untyped storage
    path = tmp_path / "state.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    assert zipfile.is_zipfile(path) != legacy
    obj, notes = torch_file.load_with_notes(path)
    _assert_same(obj, _arrays(torch.load(path, weights_only=True)))
    assert notes == ("1 bfloat16 tensor was read as float32", "1 float16 tensor was read as float32")


def test_shared_tensors_stay_shared(tmp_path):
    torch = _torch()
    shared = torch.randn(4)
    path = tmp_path / "shared.pt"
    torch.save({"a": shared, "b": shared, "nested": [shared, (shared,)]}, path)
    obj = torch_file.load(path)
    assert obj["a"] is obj["b"] is obj["nested"][0] is obj["nested"][1][0]
    np.testing.assert_array_equal(obj["a"], shared.numpy())


def test_big_endian_zip(tmp_path):
    torch = _torch()
    weight = torch.randn(3, 4)
    little, big = tmp_path / "little.pt", tmp_path / "big.pt"
    torch.save({"w": weight.t()}, little)
    with zipfile.ZipFile(little) as source, zipfile.ZipFile(big, "w") as target:
        for info in source.infolist():
            data, parts = source.read(info), info.filename.split("/")
            if parts[1] == "byteorder":
                data = b"big"
            elif parts[1] == "data":
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            target.writestr(info.filename, data)
    np.testing.assert_array_equal(torch_file.load(big)["w"], weight.t().numpy())


# --- finding the state dict -----------------------------------------------------------------


def _model_state(torch, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    return model, model.state_dict()


def _expected(state_dict) -> dict[str, np.ndarray]:
    return {k: v for k, v in _arrays(state_dict).items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize(
    "wrap, key",
    [
        (lambda sd, opt: {"net": sd, "acc": 91.0, "epoch": 3}, "net"),
        (lambda sd, opt: {"model": {"state_dict": sd}}, "model.state_dict"),
        (lambda sd, opt: {"model_state_dict": sd, "optimizer": opt, "epoch": 1}, "model_state_dict"),
        (lambda sd, opt: {"checkpoint": {"model": sd, "optimizer": opt}}, "checkpoint.model"),
        # an optimizer state saved with string parameter ids (after a JSON round trip, say): a dict of tensors by name
        (lambda sd, opt: {"model": sd, "optimizer": {**opt, "state": {str(k): v for k, v in opt["state"].items()}}}, "model"),
        (lambda sd, opt: sd, ""),
    ],
    ids=["net", "model.state_dict", "model_state_dict+optimizer", "nested+optimizer", "optimizer-with-str-ids",
         "top-level"],
)
def test_wrappers(tmp_path, wrap, key):
    torch = _torch()
    model, state_dict = _model_state(torch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # momentum buffers: a dict of tensors too
    model(torch.randn(2, 3, 3, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(state_dict, optimizer.state_dict()), path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.key == key
    assert checkpoint.notes == ("dropped 1 num_batches_tracked counter",)
    _assert_same(checkpoint.tensors, _expected(state_dict))


def test_prefixes_of_data_parallel_and_compile(tmp_path):
    torch = _torch()
    _, state_dict = _model_state(torch)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module._orig_mod.{k}": v for k, v in state_dict.items()}}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.notes == ("dropped 1 num_batches_tracked counter", "stripped prefix 'module.'", "stripped prefix '_orig_mod.'")
    _assert_same(checkpoint.tensors, _expected(state_dict))


def test_model_and_ema_need_a_key(tmp_path):
    torch = _torch()
    _, state_dict = _model_state(torch, seed=0)
    _, ema = _model_state(torch, seed=1)
    path = tmp_path / "ema.pth"
    torch.save({"state_dict": state_dict, "state_dict_ema": ema, "epoch": 9}, path)
    with pytest.raises(UserError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "'state_dict' (9 tensors)" in message and "'state_dict_ema' (9 tensors)" in message
    assert "--weights-key" in message and "key=" in message
    checkpoint = read_checkpoint(path, key="state_dict_ema")
    assert checkpoint.key == "state_dict_ema"
    _assert_same(checkpoint.tensors, _expected(ema))
    with pytest.raises(UserError, match="no dict at key 'ema'.*'state_dict', 'state_dict_ema'"):
        read_checkpoint(path, key="ema")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_whole_pickled_modules(tmp_path, legacy):
    torch = _torch()
    torch.manual_seed(0)
    net, sequential = Net(), torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    for name, model, wrap, key in [("net", net, lambda m: m, ""), ("seq", sequential, lambda m: {"model": m, "epoch": 2}, "model")]:
        path = tmp_path / f"{name}.pt"
        torch.save(wrap(model), path, _use_new_zipfile_serialization=not legacy)
        checkpoint = read_checkpoint(path)
        assert checkpoint.key == key
        _assert_same(checkpoint.tensors, _expected(model.state_dict()))  # in torch's order; the non-persistent buffer left out
    stand_in = torch_file.load(tmp_path / "net.pt")
    assert isinstance(stand_in, torch_file.PickledObject) and stand_in.global_name.endswith(".Net")


# --- bad input ------------------------------------------------------------------------------


class _Evil:
    """Pickles as a call of ``function(*args)``: what a malicious checkpoint does."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _legacy_bytes(payload: bytes) -> bytes:
    header = b"".join(pickle.dumps(v, protocol=2) for v in (torch_file.MAGIC_NUMBER, torch_file.PROTOCOL_VERSION, {"little_endian": True}))
    return header + payload + pickle.dumps([], protocol=2)


def _zip_bytes(path: Path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


@pytest.mark.parametrize("container", ["plain", "zip", "legacy"])
@pytest.mark.parametrize("call", ["os.system", "eval", "subprocess.Popen"])
def test_code_in_a_file_never_runs(tmp_path, container, call):
    marker = tmp_path / "pwned"
    evil = {
        "os.system": _Evil(os.system, f"touch {marker}"),
        "eval": _Evil(eval, f"open({str(marker)!r}, 'w')"),
        "subprocess.Popen": _Evil(subprocess.Popen, ["touch", str(marker)]),
    }[call]
    payload = pickle.dumps({"state_dict": {"w": evil}}, protocol=2)
    path = tmp_path / "evil.pth"
    if container == "zip":
        _zip_bytes(path, payload)
    else:
        path.write_bytes(_legacy_bytes(payload) if container == "legacy" else payload)
    with pytest.raises(UserError) as error:
        read_state_dict(path)
    message = str(error.value)
    assert "'" + str(path) + "' refers to" in message and "nothing in the file was run" in message
    assert call.rpartition(".")[2] in message
    assert not marker.exists()


def test_a_file_cannot_change_the_reader_for_later_loads(tmp_path):
    # BUILD on an allow-listed name, with a dict state and with a slot state: both refused
    for state in (b"}X\x05\x00\x00\x00dtypeK\x01s", b"N}X\x05\x00\x00\x00dtypeK\x01s\x86"):
        path = tmp_path / "build.pth"
        path.write_bytes(_legacy_bytes(b"\x80\x02ctorch\nFloatStorage\n" + state + b"b."))
        with pytest.raises(UserError, match="truncated, corrupt"):
            torch_file.load(path)
    assert torch_file._ALLOWED["torch.FloatStorage"].dtype == np.float32


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated(tmp_path, legacy):
    torch = _torch()
    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.randn(64, 64)}, whole, _use_new_zipfile_serialization=not legacy)
    path = tmp_path / "cut.pth"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated, corrupt or not a PyTorch checkpoint"):
        read_state_dict(path)


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(4096), b"epoch,acc\n1,0.5\n"], ids=["random", "text"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        torch_file.load(path)


def test_unknown_layout_lists_what_was_found(tmp_path):
    torch = _torch()
    path = tmp_path / "odd.pth"
    torch.save({"a": 1, "b": "x", "c": [1.0]}, path)
    with pytest.raises(UserError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "holds no dict of tensors" in message and "'a' (int), 'b' (str), 'c' (list)" in message
