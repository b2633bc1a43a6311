"""Tests for persona_explorer.vectors: the value, its file formats and their layer offsets."""

from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
from pathlib import Path

import gguf
import pytest
import safetensors
import safetensors.torch
import torch

from persona_explorer import vectors as V
from persona_explorer.vectors import (
    LAYER_CONVENTION,
    PersonaVector,
    VectorFileError,
    VectorMismatchError,
    atomic_write,
    check_fits,
    describe,
    load,
    save,
)

N_LAYERS, D_MODEL = 8, 16


def planted(n_layers: int = N_LAYERS, d_model: int = D_MODEL) -> torch.Tensor:
    """Row l filled with the value l, so any off-by-one shows up as a wrong fill value."""
    return torch.arange(n_layers, dtype=torch.float32).unsqueeze(1).repeat(1, d_model)


def full_vec(**overrides) -> PersonaVector:
    gen = torch.Generator().manual_seed(0)
    fields = {
        "name": "evil",
        "vectors": torch.randn(N_LAYERS, D_MODEL, generator=gen),
        "model_id": "Qwen/Qwen2.5-0.5B-Instruct",
        "variant": "response",
        "layer": 5,
        "strength": 2.0,
        "separation": tuple(float(i) / 10 for i in range(N_LAYERS)),
        "embedding": torch.randn(D_MODEL, generator=gen),
        "metadata": {"counts": {"pos": 40, "neg": 40}, "description": "bleak answers"},
    }
    fields.update(overrides)
    return PersonaVector(**fields)


def gguf_only_vec() -> PersonaVector:
    """A vector GGUF can hold exactly: layer 0 zero, no embedding."""
    v = full_vec(embedding=None)
    rows = v.vectors.clone()
    rows[0] = 0
    return v.with_(vectors=rows)


def assert_same(a: PersonaVector, b: PersonaVector, *, embedding: bool = True) -> None:
    assert torch.equal(a.vectors, b.vectors)
    if embedding:
        if a.embedding is None:
            assert b.embedding is None
        else:
            assert b.embedding is not None and torch.equal(a.embedding, b.embedding)
    for f in ("name", "model_id", "variant", "layer", "strength", "separation"):
        assert getattr(a, f) == getattr(b, f), f


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- value


def test_construction_normalises_to_contiguous_float32_copy():
    src = torch.randn(D_MODEL, N_LAYERS, dtype=torch.float64).T  # non-contiguous
    v = PersonaVector("x", src)
    assert v.vectors.dtype == torch.float32
    assert v.vectors.is_contiguous()
    assert v.vectors.device.type == "cpu"
    src.zero_()
    assert v.vectors.abs().sum() > 0, "must not alias the caller's tensor"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"vectors": torch.full((3, 4), float("nan"))}, "NaN"),
        ({"vectors": torch.tensor([[1.0, float("inf")]])}, "NaN or infinite"),
        ({"vectors": torch.tensor([[1e39]], dtype=torch.float64)}, "infinite"),
        ({"vectors": torch.ones(3, 4, dtype=torch.int64)}, "floating-point"),
        ({"vectors": torch.ones(4)}, "2-D"),
        ({"vectors": torch.ones(0, 4)}, "empty"),
        ({"layer": N_LAYERS}, "out of range"),
        ({"layer": -1}, "out of range"),
        ({"strength": float("nan")}, "finite"),
        ({"separation": (1.0, 2.0)}, "one per layer"),
        ({"separation": (float("nan"),) * N_LAYERS}, "NaN"),
        ({"embedding": torch.ones(D_MODEL + 1)}, "d_model"),
        ({"variant": "weird"}, "variant"),
        ({"name": ""}, "name"),
        ({"metadata": {"x": object()}}, "JSON"),
    ],
)
def test_construction_rejects_invalid(changes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        full_vec(**changes)


def test_properties_and_accessors():
    rows = planted()
    v = PersonaVector("p", rows, separation=[0, 1, 5, 2, 0, 0, 0, 0])
    assert (v.n_layers, v.d_model) == (N_LAYERS, D_MODEL)
    assert v.layer_norms[0] == 0.0
    assert v.layer_norms[3] == pytest.approx(3.0 * D_MODEL**0.5)
    assert v.best_layer == 2
    assert torch.equal(v.at(5), torch.full((D_MODEL,), 5.0))
    assert torch.linalg.vector_norm(v.unit(3)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="all zeros"):
        v.unit(0)
    with pytest.raises(IndexError):
        v.at(N_LAYERS)
    w = v.with_(layer=4, strength=1.5)
    assert (w.layer, w.strength, v.layer) == (4, 1.5, None)
    assert PersonaVector("p", rows).best_layer is None


def test_describe_fields():
    v = full_vec(vectors=planted())
    d = describe(v)
    json.dumps(d)  # must be JSON-ready
    assert d["n_layers"] == N_LAYERS and d["d_model"] == D_MODEL
    assert d["layer_norms"][0] == 0.0 and len(d["layer_norms"]) == N_LAYERS
    assert d["name"] == "evil" and d["model_id"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert d["variant"] == "response" and d["layer"] == 5 and d["strength"] == 2.0
    assert d["separation"] == list(v.separation)
    assert d["layer_convention"] == LAYER_CONVENTION == "resid_post"
    assert d["metadata"]["counts"] == {"pos": 40, "neg": 40}
    assert d["best_layer"] == N_LAYERS - 1


# --------------------------------------------------------------------------- round trips


def test_safetensors_round_trip_exact(tmp_path):
    v = full_vec()
    path = save(v, tmp_path / "evil.safetensors")
    back = load(path)
    assert_same(v, back)
    assert back.metadata == v.metadata
    assert no_temp_files(tmp_path)


def test_safetensors_without_embedding_round_trip(tmp_path):
    v = full_vec(embedding=None, separation=None, layer=None, strength=None)
    back = load(save(v, tmp_path / "x.safetensors"))
    assert_same(v, back)


@pytest.mark.parametrize("layout", ["persona_vectors", "assistant_axis"])
def test_pt_round_trip_exact(tmp_path, layout):
    v = full_vec()
    back = load(save(v, tmp_path / "v.pt", layout=layout), layout=layout)
    assert torch.equal(back.vectors, v.vectors)
    if layout == "persona_vectors":
        assert back.embedding is not None and torch.equal(back.embedding, v.embedding)
    else:
        assert back.embedding is None
    assert back.metadata["source_format"] == layout


def test_pt_persona_vectors_zero_embedding_comes_back_as_none(tmp_path):
    v = full_vec(embedding=None)
    back = load(save(v, tmp_path / "v.pt", layout="persona_vectors"), layout="persona_vectors")
    assert back.embedding is None


def test_gguf_round_trip_exact(tmp_path):
    v = gguf_only_vec()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # layer 0 is zero: no warning expected
        path = save(v, tmp_path / "evil.gguf")
    back = load(path)
    assert_same(v, back)
    assert back.metadata["model_hint"] == "llama"
    assert back.metadata["counts"] == v.metadata["counts"]


# --------------------------------------------------------------------------- layer offsets


def test_safetensors_row_l_is_layer_l(tmp_path):
    path = save(PersonaVector("p", planted()), tmp_path / "p.safetensors")
    raw = safetensors.torch.load_file(str(path))["vectors"]
    assert torch.equal(raw[5], torch.full((D_MODEL,), 5.0))


def test_persona_vectors_pt_row_l_plus_1_is_layer_l(tmp_path):
    path = save(PersonaVector("p", planted()), tmp_path / "p.pt", layout="persona_vectors")
    raw = torch.load(path, weights_only=True)
    assert raw.shape == (N_LAYERS + 1, D_MODEL)
    assert torch.equal(raw[0], torch.zeros(D_MODEL))  # embedding row
    assert torch.equal(raw[6], torch.full((D_MODEL,), 5.0))
    # and the reverse direction: a hand-made file's row 6 is our layer 5
    handmade = torch.zeros(N_LAYERS + 1, D_MODEL)
    handmade[6] = 5.0
    torch.save(handmade, tmp_path / "h.pt")
    assert torch.equal(load(tmp_path / "h.pt", layout="persona_vectors").at(5), handmade[6])


def test_assistant_axis_pt_row_l_is_layer_l(tmp_path):
    path = save(PersonaVector("p", planted()), tmp_path / "p.pt", layout="assistant_axis")
    raw = torch.load(path, weights_only=True)
    assert raw.shape == (N_LAYERS, D_MODEL)
    assert torch.equal(raw[5], torch.full((D_MODEL,), 5.0))


def test_gguf_direction_k_is_layer_k_and_llama_cpp_keys(tmp_path):
    v = PersonaVector("p", planted())  # layer 0 is all zeros in planted()
    path = save(v, tmp_path / "p.gguf", model_hint="qwen2")
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "qwen2"
    count = reader.get_field("controlvector.layer_count")
    assert count.types == [gguf.GGUFValueType.UINT32]
    assert count.contents() == N_LAYERS - 1
    tensors = {t.name: t for t in reader.tensors}
    assert "direction.0" not in tensors
    assert sorted(tensors) == sorted(f"direction.{k}" for k in range(1, N_LAYERS))
    d5 = tensors["direction.5"]
    assert d5.tensor_type == gguf.GGMLQuantizationType.F32
    assert len(d5.shape) == 1 and int(d5.shape[0]) == D_MODEL
    assert torch.equal(torch.from_numpy(d5.data.copy()), torch.full((D_MODEL,), 5.0))
    meta = json.loads(reader.get_field("persona_explorer.metadata").contents())
    assert meta["n_layers"] == N_LAYERS and meta["name"] == "p"


def test_gguf_drops_layer_0_with_warning(tmp_path):
    v = full_vec()
    with pytest.warns(UserWarning, match="layer 0"):
        path = save(v, tmp_path / "v.gguf")
    back = load(path)
    assert torch.equal(back.vectors[0], torch.zeros(D_MODEL))
    assert torch.equal(back.vectors[1:], v.vectors[1:])
    assert back.embedding is None


def write_foreign_gguf(path: Path, directions: dict[int, torch.Tensor], arch="controlvector"):
    """A control vector as repeng's export_gguf writes it: no persona_explorer metadata."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", "mistral")
    writer.add_uint32(f"{arch}.layer_count", len(directions))
    for k, row in directions.items():
        writer.add_tensor(f"direction.{k}", row.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_foreign_gguf_import(tmp_path):
    path = tmp_path / "happy.gguf"
    write_foreign_gguf(path, {2: torch.full((D_MODEL,), 2.0), 5: torch.full((D_MODEL,), 5.0)})
    v = load(path)
    assert v.n_layers == 6  # max k + 1: a foreign file does not record the layer count
    assert v.name == "happy" and v.variant == "imported"
    assert v.metadata["model_hint"] == "mistral"
    assert torch.equal(v.at(5), torch.full((D_MODEL,), 5.0))
    assert torch.equal(v.at(3), torch.zeros(D_MODEL))  # missing layers are zero rows
    padded = load(path, n_layers=N_LAYERS)
    assert padded.n_layers == N_LAYERS and torch.equal(padded.at(5), v.at(5))
    with pytest.raises(VectorMismatchError):
        load(path, n_layers=4)


def test_gguf_model_file_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    write_foreign_gguf(path, {1: torch.ones(D_MODEL)}, arch="llama")
    with pytest.raises(VectorFileError, match="controlvector"):
        load(path)


def test_gguf_hostile_array_length_is_refused_fast(tmp_path):
    # One KV holding a uint8 array claiming 2**62 items: GGUFReader alone would loop on it.
    key = b"evil.array"
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 0, 2**62)
    path = tmp_path / "evil.gguf"
    path.write_bytes(header + kv + b"\0" * 64)
    with pytest.raises(VectorFileError):
        load(path)


# --------------------------------------------------------------------------- hostile / broken files


class _Exploit:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


# torch warns about the protocol of a plain-pickle file before refusing it; irrelevant here.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_hostile_pickle_is_not_executed(tmp_path, writer):
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "evil.pt"
    payload = {"vectors": _Exploit(sentinel)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh)
    with pytest.raises(VectorFileError, match="not a tensor file torch can load safely"):
        load(path, layout="assistant_axis")
    assert not sentinel.exists()


@pytest.mark.parametrize("ext", [".pt", ".safetensors", ".gguf"])
def test_truncated_files_are_refused(tmp_path, ext):
    layout = "assistant_axis" if ext == ".pt" else None
    good = save(gguf_only_vec(), tmp_path / f"good{ext}", layout=layout)
    data = good.read_bytes()
    bad = tmp_path / f"bad{ext}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(VectorFileError):
        load(bad, layout=layout)


@pytest.mark.parametrize("ext", [".pt", ".safetensors", ".gguf"])
@pytest.mark.parametrize("content", [b"", b"garbage" * 50, os.urandom(4096)])
def test_garbage_files_are_refused(tmp_path, ext, content):
    path = tmp_path / f"junk{ext}"
    path.write_bytes(content)
    with pytest.raises(VectorFileError):
        load(path)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (torch.full((N_LAYERS, D_MODEL), float("nan")), "NaN"),
        (torch.ones(N_LAYERS, D_MODEL, dtype=torch.int32), "floating-point"),
        (torch.ones(2, N_LAYERS, D_MODEL), "2-D"),
        ([torch.ones(N_LAYERS, D_MODEL)], "list"),
        ({"a": torch.ones(3, 4), "b": torch.ones(3, 4)}, "2-D tensors"),
        ({"vector": torch.ones(3, 4), "axis": torch.ones(3, 4)}, "several"),
    ],
)
def test_bad_pt_contents_are_refused(tmp_path, obj, match):
    path = tmp_path / "bad.pt"
    torch.save(obj, path)
    with pytest.raises(VectorFileError, match=match):
        load(path, layout="assistant_axis")


def test_pt_dict_with_known_key_or_unique_tensor(tmp_path):
    torch.save({"axis": planted(), "note": "hi", "layers": [1, 2]}, tmp_path / "a.pt")
    v = load(tmp_path / "a.pt", layout="assistant_axis")
    assert torch.equal(v.vectors, planted()) and v.metadata["source_key"] == "axis"
    torch.save({"whatever": planted(), "mean": torch.ones(D_MODEL)}, tmp_path / "b.pt")
    assert torch.equal(load(tmp_path / "b.pt", layout="assistant_axis").vectors, planted())


def test_nan_in_safetensors_refused(tmp_path):
    path = tmp_path / "nan.safetensors"
    safetensors.torch.save_file({"v": torch.full((3, 4), float("nan"))}, str(path))
    with pytest.raises(VectorFileError, match="NaN"):
        load(path)


def test_foreign_safetensors_single_tensor(tmp_path):
    path = tmp_path / "sycophancy.safetensors"
    safetensors.torch.save_file({"anything": planted().half()}, str(path))
    v = load(path)
    assert v.name == "sycophancy" and v.variant == "imported"
    assert torch.equal(v.vectors, planted())


def test_newer_format_version_refused(tmp_path):
    path = tmp_path / "future.safetensors"
    meta = {**full_vec().to_json_metadata(), "format_version": 99}
    safetensors.torch.save_file(
        {"vectors": torch.ones(N_LAYERS, D_MODEL)},
        str(path),
        metadata={"persona_explorer": json.dumps(meta)},
    )
    with pytest.raises(VectorFileError, match="format_version 99"):
        load(path)


def test_oversized_file_refused_before_reading(tmp_path, monkeypatch):
    path = save(full_vec(), tmp_path / "v.safetensors")
    monkeypatch.setattr(V, "MAX_VECTOR_FILE_BYTES", 100)

    def boom(*args, **kwargs):
        raise AssertionError("the file must not be opened")

    monkeypatch.setattr(safetensors, "safe_open", boom)
    with pytest.raises(VectorFileError, match="MiB"):
        load(path)


def test_unsupported_extension_and_missing_layout(tmp_path):
    with pytest.raises(VectorFileError, match="unsupported"):
        save(full_vec(), tmp_path / "v.npy")
    with pytest.raises(VectorFileError, match="layout"):
        save(full_vec(), tmp_path / "v.pt")
    with pytest.raises(VectorFileError, match=r"\.pt files only"):
        save(full_vec(), tmp_path / "v.safetensors", layout="assistant_axis")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.safetensors")


def test_persona_vectors_file_name_gives_trait_and_variant(tmp_path):
    torch.save(torch.ones(N_LAYERS + 1, D_MODEL), tmp_path / "evil_prompt_last_diff.pt")
    v = load(tmp_path / "evil_prompt_last_diff.pt")
    assert (v.name, v.variant) == ("evil", "last")


# --------------------------------------------------------------------------- layout detection


def test_layout_autodetect_by_n_layers(tmp_path):
    torch.save(planted(N_LAYERS + 1), tmp_path / "pv.pt")
    torch.save(planted(N_LAYERS), tmp_path / "aa.pt")
    pv = load(tmp_path / "pv.pt", n_layers=N_LAYERS)
    aa = load(tmp_path / "aa.pt", n_layers=N_LAYERS)
    assert pv.metadata["source_format"] == "persona_vectors" and pv.n_layers == N_LAYERS
    assert aa.metadata["source_format"] == "assistant_axis" and aa.n_layers == N_LAYERS
    # planted row r holds r: persona_vectors shifts by one, assistant_axis does not
    assert pv.at(5)[0].item() == 6.0 and aa.at(5)[0].item() == 5.0
    assert "layout_assumed" not in pv.metadata
    with pytest.raises(VectorMismatchError, match="rows"):
        load(tmp_path / "aa.pt", n_layers=N_LAYERS + 3)


def test_layout_assumed_without_hint(tmp_path):
    torch.save(planted(N_LAYERS), tmp_path / "aa.pt")
    v = load(tmp_path / "aa.pt")
    assert v.metadata["layout_assumed"] is True
    assert v.n_layers == N_LAYERS - 1
    with pytest.raises(VectorMismatchError, match="assistant_axis"):
        check_fits(v, N_LAYERS, D_MODEL)


# --------------------------------------------------------------------------- check_fits


def test_check_fits_shape_message():
    v = full_vec(vectors=torch.ones(24, 896), embedding=None, separation=None)
    with pytest.raises(VectorMismatchError) as info:
        check_fits(v, 30, 576, model_id="SmolLM2")
    msg = str(info.value)
    assert "24 layers and d_model 896" in msg
    assert "30 layers and d_model 576" in msg
    assert "Qwen/Qwen2.5-0.5B-Instruct" in msg and "SmolLM2" in msg


def test_check_fits_model_ids():
    v = full_vec()
    check_fits(v, N_LAYERS, D_MODEL)
    check_fits(v, N_LAYERS, D_MODEL, model_id="Qwen/Qwen2.5-0.5B-Instruct")
    check_fits(v.with_(model_id=""), N_LAYERS, D_MODEL, model_id="anything")
    smol = v.with_(model_id="embedded:SmolLM2-135M-Instruct")
    check_fits(smol, N_LAYERS, D_MODEL, model_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(VectorMismatchError, match=r"made for Qwen/Qwen2\.5-0\.5B-Instruct"):
        check_fits(v, N_LAYERS, D_MODEL, model_id="meta-llama/Llama-3.2-1B")


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "v.bin"
    target.write_bytes(b"old contents")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"new partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old contents"
    assert no_temp_files(tmp_path)
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.bin"]


@pytest.mark.parametrize(
    ("ext", "module", "attr"),
    [(".pt", torch, "save"), (".safetensors", safetensors.torch, "save_file")],
)
def test_save_is_atomic(tmp_path, monkeypatch, ext, module, attr):
    layout = "assistant_axis" if ext == ".pt" else None
    target = save(full_vec(), tmp_path / f"v{ext}", layout=layout)
    before = target.read_bytes()

    def partial(_obj, dest, *args, **kwargs):
        Path(dest).write_bytes(b"\x00" * 10)
        raise OSError("no space left on device")

    monkeypatch.setattr(module, attr, partial)
    with pytest.raises(OSError, match="no space"):
        save(full_vec(name="other"), target, layout=layout)
    assert target.read_bytes() == before
    assert no_temp_files(tmp_path)


def test_gguf_save_is_atomic(tmp_path, monkeypatch):
    target = save(gguf_only_vec(), tmp_path / "v.gguf")
    before = target.read_bytes()

    def fail(self, *args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match="no space"):
        save(gguf_only_vec(), target)
    assert target.read_bytes() == before
    assert no_temp_files(tmp_path)
