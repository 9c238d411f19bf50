"""Model files: save -> load is bit for bit; damaged, foreign or mismatched files are refused with a
clear ModelFileError, and loading never runs code from the file."""

import io
import json

import pytest
import torch

from rbm_core import RBM, ModelFileError, RBMConfig, load_model, model_from_bytes, model_to_bytes, save_model
from rbm_core.io import FORMAT_VERSION, read_header


def trained_looking(config, dtype=torch.float32, seed=0):
    model = RBM(config, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))
    return model


def bits(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize(
    "config, dtype",
    [(RBMConfig(20, 7), torch.float32), (RBMConfig(6, 4, "softmax", 5), torch.float64)],
    ids=["bernoulli-f32", "softmax-f64"],
)
def test_round_trip_is_bit_for_bit(tmp_path, config, dtype):
    model = trained_looking(config, dtype)
    with torch.no_grad():
        model.weight[0, 0] = float("-0.0")  # signed zero and a subnormal survive too
        model.weight[0, 1] = torch.finfo(dtype).tiny / 4
    path = tmp_path / "model.rbm"
    save_model(model, path, extra={"trained_on": "unit test", "epochs": 3})
    loaded = load_model(path)
    assert isinstance(loaded, RBM) and loaded.config == config
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert name == name_b and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(bits(a), bits(b)), name
    assert model_to_bytes(loaded, extra={"trained_on": "unit test", "epochs": 3}) == path.read_bytes()
    header = read_header(path.read_bytes())
    assert header["kind"] == "rbm" and header["format_version"] == FORMAT_VERSION
    assert header["extra"] == {"trained_on": "unit test", "epochs": 3}
    v = model.visible.random_state(5, torch.Generator().manual_seed(1), dtype)
    assert torch.equal(loaded.free_energy(v), model.free_energy(v))


def test_load_onto_a_device():
    model = trained_looking(RBMConfig(5, 3))
    loaded = model_from_bytes(model_to_bytes(model), device="cpu")
    assert loaded.weight.device.type == "cpu"


@pytest.mark.parametrize("keep", [0, 1, 10, 0.5, -1])
def test_truncated_file_is_refused(tmp_path, keep):
    data = model_to_bytes(trained_looking(RBMConfig(30, 10)))
    cut = keep if isinstance(keep, int) and keep >= 0 else (len(data) - 1 if keep == -1 else int(len(data) * keep))
    path = tmp_path / "cut.rbm"
    path.write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match="truncated or corrupted"):
        load_model(path)


def test_flipped_bits_in_the_weights_are_caught():
    model = trained_looking(RBMConfig(30, 10))
    data = bytearray(model_to_bytes(model))
    offset = bytes(data).find(model.weight.detach().numpy().tobytes()[:32])
    assert offset > 0
    data[offset + 200] ^= 0x10
    with pytest.raises(ModelFileError, match="checksum"):
        model_from_bytes(bytes(data))


def test_garbage_and_foreign_files_are_refused():
    with pytest.raises(ModelFileError, match="truncated or corrupted"):
        model_from_bytes(b"this is not a model file at all")
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, buffer)  # a torch file, but not ours
    with pytest.raises(ModelFileError, match="no header"):
        model_from_bytes(buffer.getvalue())


def rewrite(data: bytes, change) -> bytes:
    payload = torch.load(io.BytesIO(data), weights_only=True)
    header = json.loads(payload["header"])
    change(header, payload["tensors"])
    header.pop("sha256", None) if "drop_checksum" in header else None
    buffer = io.BytesIO()
    torch.save({"header": json.dumps(header), "tensors": payload["tensors"]}, buffer)
    return buffer.getvalue()


def test_other_format_version_unknown_kind_and_mismatched_config_are_refused():
    data = model_to_bytes(trained_looking(RBMConfig(8, 4)))
    newer = rewrite(data, lambda h, t: h.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match="format version 2 is not supported"):
        model_from_bytes(newer)
    unknown = rewrite(data, lambda h, t: h.update(kind="hopfield"))
    with pytest.raises(ModelFileError, match="unknown model kind 'hopfield'"):
        model_from_bytes(unknown)
    bigger = rewrite(data, lambda h, t: h["config"].update(num_hidden=5))
    with pytest.raises(ModelFileError, match="shape"):
        model_from_bytes(bigger)
    bad_config = rewrite(data, lambda h, t: h["config"].update(num_visible=-1))
    with pytest.raises(ModelFileError, match="invalid config"):
        model_from_bytes(bad_config)
    odd_field = rewrite(data, lambda h, t: h["config"].update(colour="blue"))
    with pytest.raises(ModelFileError, match="invalid config"):
        model_from_bytes(odd_field)


class _RunsCode:
    ran = False

    def __reduce__(self):
        return (setattr, (_RunsCode, "ran", True))


def test_loading_never_executes_code_from_the_file():
    buffer = io.BytesIO()
    torch.save({"header": "{}", "tensors": {}, "payload": _RunsCode()}, buffer)
    with pytest.raises(ModelFileError):
        model_from_bytes(buffer.getvalue())
    assert _RunsCode.ran is False
