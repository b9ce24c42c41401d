"""Teacher weights from files (kdbench.models.weights) and key-for-key parity with RepDistiller/mdistiller.

No code of RepDistiller or mdistiller is imported here: their parameter layout is pinned as digests (below).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

from kdbench.filehash import file_sha256
from kdbench.models import WeightsError, build_model, state_dict_from_file

# sha256 of "\n".join(sorted(f"{key}:{list(tensor.shape)}" for key, tensor in state_dict.items())), num_classes=100.
# Measured on CPU from the reference implementations' own code (RepDistiller HobbitLong/RepDistiller@b84f547
# models/*.py, `model_dict[name](num_classes=100).state_dict()`; mdistiller megvii-research/mdistiller@a08d46f
# mdistiller/models/cifar/*.py, `cifar_model_dict[name][0](num_classes=100).state_dict()`): both repositories give
# the same digest for every name they share. Loading a `{"model": their_state_dict, "epoch": 240}` file through
# state_dict_from_file into kdbench's model of the same name then gave their logits (eval mode, random 32×32 batch)
# to float rounding: max relative difference 4e-7 (the ResNets and WRNs pool with a different kernel), 0 for the
# others. A failure here means kdbench's parameter names or shapes moved away from theirs, so their published
# ckpt_epoch_240.pth teachers would no longer load.
REFERENCE_KEY_DIGESTS = {
    "resnet8": "1e8d9d7be7abe181752664d09525a8bc82c6a5a5d6f0c0563bd4ce14934c7cc1",  # both
    "resnet14": "1f7917f3e9058e760aa0da90285f02d2755417b8ae8745e1a0aeea0c8f37edf2",  # both
    "resnet20": "892061a106f86ce08b424243541f1db6651ec9dd5dc8cd96cc567d96d8bfd08c",  # both
    "resnet32": "aa95989e7c0111bc6c9401c677759bbbb2f5002cadbbaf32e9901b867642c5bf",  # both
    "resnet44": "3525fc1cfb28ce7461a1de5958c5b96a6a9a23ea1a39bda010b9ccd784a1786c",  # both
    "resnet56": "337d9f747868f1dd54d6d7640f29b5495c81266abf5b75ce3fe79b984e436dc8",  # both
    "resnet110": "14082e796776b460ed1fff87b1b937b16d37063316e9b09f4c6b681012e82267",  # both
    "resnet8x4": "d2115bc0725be5ead0d11b3ea02f243922f1a63e67e3feb39a594d8510b5040b",  # both
    "resnet32x4": "5a2f4296fdc06de274ff4dbdd98f013c369727f2fc46aaf29f3de184aabe4061",  # both
    "wrn_16_1": "ae038b3a5a5d794f5fe8045c717df1cdf07257269ffd3ca0fdd3aa3ed1b155a4",  # both
    "wrn_16_2": "ea6f5696b4b895000cb527a48693615d6484dc07ea1d73cbafe987e173b2e8a6",  # both
    "wrn_40_1": "ba38642fd19d16899eba3c55e2423446d13b0ab51fee35cbeea2e55ad55a127a",  # both
    "wrn_40_2": "d1626a5a68f51e63df931c31d33e36aa44cbf7bf7f4e1bb35295aec5e7aaef02",  # both
    "vgg8": "192725c09135bb468f48264e150336fb6a3214823198f08e101dd1f8718b71f1",  # both (their vgg8_bn)
    "vgg11": "a940a6a922200af3b5bfc7793eb68613da68f329dbe653b7aeb04e045c1070fd",  # both (vgg11_bn)
    "vgg13": "1203d287d079e46931a979c90eb72bd3d6023df68ba90b60f6fd8156f85ac5f6",  # both (vgg13_bn)
    "vgg16": "d5e1b22db9c02c63a83212aac365e8a33436d9c9deb01c4e7529d341eb18aec8",  # both (vgg16_bn)
    "vgg19": "a84ffc4efab96ae0b3aa5b85a6647081bd57dd784099d2a16cf74a0443a3204c",  # both (vgg19_bn)
    "MobileNetV2": "706cec19a66f21b869b7cc8183cc55a15107031bfbb175b4378528e25ad12e79",  # both (mobile_half)
    "ShuffleV1": "d337d06f2b5500001d5a3032f8a0cb655c2552385fed559ddad6864529f1ed22",  # both
    "ShuffleV2": "b7a1d5223ee3e848a7c52922cae0b6220f5140e7341b8bb1cd89f08c32147afc",  # both
    "ResNet18": "bad0f3c079fb75768b6a7a5f4152da0db3ac9014033732ec9b4fee7daafbe4d7",  # mdistiller (resnetv2)
    "ResNet50": "74254a6e49746cd1d7b360bf1e1283bd1aabd6b3792af68c31fbf629764f4092",  # both (resnetv2)
}


def _key_digest(state: dict[str, torch.Tensor]) -> str:
    lines = sorted(f"{key}:{list(tensor.shape)}" for key, tensor in state.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _x() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class Trained(NamedTuple):
    """A model 'after training' and its optimizer's state dict (momentum buffers, as in a real checkpoint)."""

    model: nn.Module
    optimizer_state: dict[str, Any]


@pytest.fixture(scope="module")
def trained() -> Trained:
    """A resnet8x4 after one SGD step, with BatchNorm statistics from that train-mode forward; in eval mode."""
    torch.manual_seed(0)
    model = build_model("resnet8x4", 100).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(_x()).logsumexp(1).mean().backward()
    optimizer.step()
    return Trained(model.eval(), optimizer.state_dict())


@pytest.fixture
def teacher(trained: Trained) -> nn.Module:
    return trained.model


def _repdistiller_file(trained: Trained, path: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """A file as RepDistiller's train_teacher.py writes ckpt_epoch_240.pth (mdistiller's teachers are the same)."""
    payload = {
        "epoch": 240,
        "model": trained.model.state_dict() if state is None else state,
        "accuracy": torch.tensor(79.42),
        "optimizer": trained.optimizer_state,
    }
    torch.save(payload, path)
    return path


def test_a_repdistiller_checkpoint_loads_with_identical_logits(trained, teacher, tmp_path) -> None:
    path = _repdistiller_file(trained, tmp_path / "ckpt_epoch_240.pth")
    fresh = build_model("resnet8x4", 100).eval()
    state = state_dict_from_file(path, fresh, sha256=file_sha256(path))
    assert list(state) == list(fresh.state_dict())
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(_x()), teacher(_x()))


@pytest.mark.parametrize("name", list(REFERENCE_KEY_DIGESTS))
def test_parameter_layout_matches_repdistiller_and_mdistiller(name: str) -> None:
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        model = build_model(name, 100)
    assert _key_digest(model.state_dict()) == REFERENCE_KEY_DIGESTS[name]


def test_accepted_containers_and_prefixes(teacher, tmp_path) -> None:
    state = teacher.state_dict()
    fresh = build_model("resnet8x4", 100)
    variants = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "ddp": {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 240},
        "compiled": {f"_orig_mod.{k}": v for k, v in state.items()},
        "no_bn_counters": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
    }
    for label, payload in variants.items():
        torch.save(payload, tmp_path / f"{label}.pth")
        loaded = state_dict_from_file(tmp_path / f"{label}.pth", fresh)
        assert list(loaded) == list(state), label
        for key, value in loaded.items():
            expected = torch.zeros_like(value) if label == "no_bn_counters" and "num_batches" in key else state[key]
            assert torch.equal(value, expected), (label, key)


def test_a_wrapped_model_takes_a_bare_state_dict(teacher, tmp_path) -> None:
    torch.save(teacher.state_dict(), tmp_path / "bare.pth")
    wrapped = nn.DataParallel(build_model("resnet8x4", 100))
    state = state_dict_from_file(tmp_path / "bare.pth", wrapped)
    assert next(iter(state)) == "module.conv1.weight"
    wrapped.load_state_dict(state)


# ------------------------------------------------------------------------------------------------ errors


def test_missing_and_unexpected_keys_are_named_and_counted(trained, tmp_path) -> None:
    state = dict(trained.model.state_dict())
    state["linear.weight"] = state.pop("fc.weight")
    state["linear.bias"] = state.pop("fc.bias")
    path = _repdistiller_file(trained, tmp_path / "renamed.pth", state)
    with pytest.raises(WeightsError) as caught:
        state_dict_from_file(path, build_model("resnet8x4", 100))
    message = str(caught.value)
    assert message == (
        f"{path}: keys do not fit CifarResNet: 2 missing (first: 'fc.weight'), 2 unexpected (first: 'linear.weight')"
    )
    deeper = build_model("resnet32x4", 100)  # the same names for the first block of each stage, then more blocks
    with pytest.raises(WeightsError, match=r"keys do not fit CifarResNet: 122 missing \(first: 'layer1.1.conv1.weight'"
                                           r"\), 2 unexpected \(first: 'linear.weight'\)$"):
        state_dict_from_file(path, deeper)


def test_shape_mismatch_names_the_key_and_both_shapes(trained, tmp_path) -> None:
    path = _repdistiller_file(trained, tmp_path / "ckpt.pth")
    with pytest.raises(WeightsError) as caught:
        state_dict_from_file(path, build_model("resnet8x4", 10))  # 10 classes, the file has 100
    assert str(caught.value) == (
        f"{path}: shape mismatch for CifarResNet: 'fc.weight' is (100, 256) in the file, (10, 256) in the model "
        f"(and 1 more keys differ in shape)"
    )


def test_sha256_mismatch_is_caught_before_unpickling(tmp_path, monkeypatch) -> None:
    path = tmp_path / "whole_model.pth"
    torch.save(nn.Linear(2, 2), path)  # would fail weights_only: the digest must be checked first
    actual = file_sha256(path)
    wrong = "0" * 64

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load must not run when the digest differs")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(WeightsError) as caught:
        state_dict_from_file(path, nn.Linear(2, 2), sha256=wrong)
    assert str(caught.value) == f"{path}: sha256 mismatch: expected {wrong}, got {actual}; not loading it"
    with pytest.raises(ValueError, match="sha256 must be 64 hex digits"):
        state_dict_from_file(path, nn.Linear(2, 2), sha256="abc")


def test_upper_case_sha256_is_accepted(tmp_path) -> None:
    model = nn.Linear(2, 2)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    state = state_dict_from_file(tmp_path / "w.pth", model, sha256=file_sha256(tmp_path / "w.pth").upper())
    assert torch.equal(state["weight"], model.weight)


@pytest.mark.parametrize(
    ("payload", "first_global"),
    [
        (nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),  # torch.save(model): a whole model object
        ({"opt": argparse.Namespace(lr=0.1), "model": nn.Linear(2, 2).state_dict()}, "argparse.Namespace"),
    ],
    ids=["whole_model", "namespace_in_checkpoint"],
)
def test_a_file_weights_only_refuses_says_how_to_convert_it(tmp_path, payload, first_global: str) -> None:
    path = tmp_path / "pickled.pth"
    torch.save(payload, path)
    with pytest.raises(WeightsError) as caught:
        state_dict_from_file(path, nn.Linear(2, 2))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: torch.load(weights_only=True) refuses it: it pickles Python objects")
    assert f"(first: {first_global};" in message
    assert "torch.save(obj.state_dict(), new_path)" in message


@pytest.mark.parametrize(
    ("payload", "found"),
    [
        ([torch.zeros(2)], "found a list"),
        ({"epoch": 240, "accuracy": 79.4}, "found a dict with keys 'epoch', 'accuracy' (the value of 'epoch' is a int"),
        ({"model": {"weight": [1.0]}, "epoch": 1}, "whose state-dict entry holds a dict with keys 'weight'"),
        (torch.zeros(3), "found a single tensor of shape (3,)"),
        ({}, "found an empty dict"),
    ],
    ids=["list", "no_model_entry", "model_entry_not_tensors", "tensor", "empty"],
)
def test_not_a_state_dict(tmp_path, payload, found: str) -> None:
    path = tmp_path / "odd.pth"
    torch.save(payload, path)
    with pytest.raises(WeightsError) as caught:
        state_dict_from_file(path, nn.Linear(2, 2))
    message = str(caught.value)
    assert message.startswith(f"{path}: not a state dict (a mapping of names to tensors, or a checkpoint holding one "
                              f"under 'state_dict' or 'model'): ")
    assert found in message and "\n" not in message


@pytest.mark.parametrize(
    ("content", "cause"),
    [(b"hello world\n", "KeyError"), (b"", "EOFError")],
    ids=["text", "empty"],
)
def test_not_a_pytorch_file(tmp_path, content: bytes, cause: str) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=rf"^{path}: not a PyTorch weight file, or a damaged one: {cause}"):
        state_dict_from_file(path, nn.Linear(2, 2))


def test_a_truncated_file(trained, tmp_path) -> None:
    path = _repdistiller_file(trained, tmp_path / "ckpt.pth")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=r"not a PyTorch weight file, or a damaged one: RuntimeError: "
                                           r"PytorchStreamReader failed"):
        state_dict_from_file(path, build_model("resnet8x4", 100))


def test_a_missing_file_is_an_os_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        state_dict_from_file(tmp_path / "nope.pth", nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError):
        state_dict_from_file(tmp_path / "nope.pth", nn.Linear(2, 2), sha256="0" * 64)
