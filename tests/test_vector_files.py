"""Tests for persona_explorer.vectors.files: each format, its layer offsets, hostile files, and
the format table, save notes and export names the app offers downloads with."""

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

from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import atomic_write
from persona_explorer.vectors.files import (
    FORMATS,
    VectorFileError,
    VectorFormat,
    common,
    export_stem,
    format_for_path,
    load,
    read_info,
    save,
    save_notes,
)
from persona_explorer.vectors.persona_vector import (
    PersonaVector,
    VectorInfo,
    VectorMismatchError,
    check_fits,
)
from tests.test_vectors import D_MODEL, N_LAYERS, full_vec, planted


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
        warnings.simplefilter("error")
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


def test_gguf_drops_layer_0_and_embedding_silently(tmp_path):
    v = full_vec()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what is lost is save_notes' to say, not a warning
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
    with pytest.raises(VectorFileError, match="not a tensor file torch can load safely") as info:
        load(path, layout="assistant_axis")
    assert not sentinel.exists()
    assert "weights_only" not in str(info.value)  # torch's advice must never reach the user


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
    monkeypatch.setattr(common, "MAX_VECTOR_FILE_BYTES", 100)

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


# --------------------------------------------------------------------------- formats, notes, names


def test_formats_table():
    assert list(FORMATS) == ["safetensors", "persona_vectors", "assistant_axis", "gguf"]
    rows = {k: (f.key, f.label, f.suffix, f.layout) for k, f in FORMATS.items()}
    assert rows == {
        "safetensors": ("safetensors", "Persona Explorer (.safetensors)", ".safetensors", None),
        "persona_vectors": (
            "persona_vectors",
            "persona_vectors (.pt)",
            ".pt",
            "persona_vectors",
        ),
        "assistant_axis": ("assistant_axis", "assistant-axis (.pt)", ".pt", "assistant_axis"),
        "gguf": ("gguf", "llama.cpp control vector (.gguf)", ".gguf", None),
    }


@pytest.mark.parametrize(
    ("path", "layout", "key"),
    [
        ("v.safetensors", None, "safetensors"),
        ("dir/V.SAFETENSORS", None, "safetensors"),
        ("v.gguf", None, "gguf"),
        ("v.pt", None, "persona_vectors"),
        ("v.pth", None, "persona_vectors"),
        ("v.pt", "persona_vectors", "persona_vectors"),
        (Path("v.pt"), "assistant_axis", "assistant_axis"),
        ("v.PTH", "assistant_axis", "assistant_axis"),
    ],
)
def test_format_for_path(path, layout, key):
    assert format_for_path(path, layout) is FORMATS[key]


@pytest.mark.parametrize(
    ("path", "layout", "match"),
    [
        ("v.npy", None, "unsupported file type '.npy'"),
        ("vector", None, "no extension"),
        ("v.safetensors", "assistant_axis", r"\.pt files only, not \.safetensors"),
        ("v.gguf", "persona_vectors", r"\.pt files only, not \.gguf"),
        ("v.pt", "sideways", "unknown layout 'sideways'"),
    ],
)
def test_format_for_path_refuses(path, layout, match):
    with pytest.raises(VectorFileError, match=match) as info:
        format_for_path(path, layout)
    assert isinstance(info.value, InputError)


def test_unknown_layout_is_refused_by_load_and_save(tmp_path):
    path = save(full_vec(), tmp_path / "v.pt", layout="assistant_axis")
    with pytest.raises(VectorFileError, match="unknown layout"):
        load(path, layout="sideways")  # type: ignore[arg-type]
    with pytest.raises(VectorFileError, match="unknown layout"):
        save(full_vec(), path, layout="sideways")  # type: ignore[arg-type]


def test_save_notes_gguf_layer_0():
    nonzero = full_vec(embedding=None)
    notes = save_notes(nonzero, "gguf")
    assert notes == [
        "GGUF control vectors cannot hold layer 0 (llama.cpp rejects direction.0); "
        "layer 0 of evil is not zero and is left out."
    ]
    assert save_notes(gguf_only_vec(), "gguf") == []
    assert save_notes(gguf_only_vec(), FORMATS["gguf"]) == []


def test_save_notes_embedding():
    v = full_vec()
    gguf_notes = save_notes(v, "gguf")
    assert len(gguf_notes) == 2 and "embedding" in gguf_notes[1]
    assert any("embedding" in n for n in save_notes(v, "assistant_axis"))
    assert not any("embedding" in n for n in save_notes(v, "persona_vectors"))


def test_save_notes_safetensors_loses_nothing():
    assert save_notes(full_vec(), "safetensors") == []
    assert save_notes(full_vec(), FORMATS["safetensors"]) == []


def test_save_notes_pt_loses_the_fields():
    (note,) = save_notes(full_vec(), "persona_vectors")
    assert "model id, steering layer, strength and per-layer separation scores" in note
    assert "variant" not in note  # the file name carries it
    bare = PersonaVector("bare", planted(), variant="custom")
    assert save_notes(bare, "persona_vectors") == [
        "A .pt file holds only the tensor; the variant of bare is left out."
    ]
    assert save_notes(bare.with_(variant="imported"), "assistant_axis") == []


def test_save_notes_unknown_format():
    with pytest.raises(VectorFileError, match="unknown vector format"):
        save_notes(full_vec(), "npy")


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("Evil", "evil"),
        ("../../etc/passwd", "etc-passwd"),
        ("Überfreundlich!", "uberfreundlich"),
        ("???", "vector"),
        ("x" * 100, "x" * 64),
    ],
)
def test_export_stem_is_a_safe_slug(name, stem):
    vec = full_vec(name=name)
    for key in ("safetensors", "gguf", "assistant_axis"):
        assert export_stem(vec, key) == stem


@pytest.mark.parametrize(
    ("variant", "suffix"),
    [("response", "response_avg"), ("prompt", "prompt_avg"), ("last", "prompt_last")],
)
def test_export_stem_persona_vectors_round_trips_name_and_variant(tmp_path, variant, suffix):
    vec = full_vec(name="sea_dog", variant=variant)
    fmt = FORMATS["persona_vectors"]
    stem = export_stem(vec, fmt)
    assert stem == f"sea_dog_{suffix}_diff"
    back = load(save(vec, tmp_path / f"{stem}{fmt.suffix}", layout=fmt.layout))
    assert (back.name, back.variant) == ("sea_dog", variant)
    assert torch.equal(back.vectors, vec.vectors)


def test_export_stem_persona_vectors_other_variants_use_the_slug():
    assert export_stem(full_vec(name="Pirate", variant="custom"), "persona_vectors") == "pirate"


def test_format_is_a_frozen_value():
    fmt = FORMATS["gguf"]
    assert fmt == VectorFormat("gguf", "llama.cpp control vector (.gguf)", ".gguf", None)
    with pytest.raises(AttributeError):
        fmt.key = "other"  # type: ignore[misc]


def test_vector_file_error_is_an_input_error():
    assert issubclass(VectorFileError, InputError)
    assert issubclass(VectorMismatchError, InputError)


# --------------------------------------------------------------------------- read_info


@pytest.mark.parametrize(
    ("ext", "layout", "vec"),
    [
        (".safetensors", None, full_vec()),
        (".safetensors", None, full_vec(embedding=None, separation=None, layer=None)),
        (".pt", "persona_vectors", full_vec()),
        (".gguf", None, gguf_only_vec()),
    ],
)
def test_read_info_is_what_load_gives(tmp_path, ext, layout, vec):
    path = save(vec, tmp_path / f"v{ext}", layout=layout)
    info = read_info(path)
    assert info == VectorInfo.of(load(path))
    assert (info.n_layers, info.d_model) == (N_LAYERS, D_MODEL)


def test_read_info_of_a_foreign_safetensors_file(tmp_path):
    path = tmp_path / "sycophancy.safetensors"
    safetensors.torch.save_file({"anything": planted().half()}, str(path), metadata={"a": "b"})
    info = read_info(path)
    assert info == VectorInfo.of(load(path))
    assert info.variant == "imported"
    assert info.metadata["safetensors_metadata"] == {"a": "b"}


def test_read_info_applies_max_bytes(tmp_path):
    path = save(full_vec(), tmp_path / "v.safetensors")
    with pytest.raises(VectorFileError, match="PERSONA_EXPLORER_MAX_VECTOR_MB"):
        read_info(path, max_bytes=256)
    assert read_info(path, max_bytes=4096).d_model == D_MODEL


# --------------------------------------------------------------------------- against the model


@pytest.mark.parametrize(("ext", "layout"), [(".safetensors", None), (".pt", "assistant_axis")])
def test_load_checks_d_model(tmp_path, ext, layout):
    path = save(gguf_only_vec(), tmp_path / f"v{ext}", layout=layout)
    assert load(path, layout=layout, d_model=D_MODEL).d_model == D_MODEL
    with pytest.raises(VectorMismatchError, match="d_model is 64"):
        load(path, layout=layout, d_model=64)


def test_gguf_d_model_check_and_padding(tmp_path):
    path = save(gguf_only_vec(), tmp_path / "v.gguf")
    assert load(path, n_layers=N_LAYERS, d_model=D_MODEL).n_layers == N_LAYERS
    with pytest.raises(VectorMismatchError, match="d_model is 64"):
        load(path, d_model=64)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_model": 0}, "d_model"),
        ({"d_model": True}, "d_model"),
        ({"n_layers": 5000}, "n_layers"),
        ({"max_bytes": -1}, "max_bytes"),
        ({"max_bytes": 1.5}, "max_bytes"),
    ],
)
def test_load_argument_checks(tmp_path, kwargs, match):
    path = save(full_vec(), tmp_path / "v.safetensors")
    with pytest.raises(ValueError, match=match):
        load(path, **kwargs)


def test_pt_layout_given_with_wrong_layer_count(tmp_path):
    path = save(full_vec(), tmp_path / "v.pt", layout="persona_vectors")
    assert load(path, layout="persona_vectors", n_layers=N_LAYERS).n_layers == N_LAYERS
    with pytest.raises(VectorMismatchError, match=f"holds {N_LAYERS + 1} layers"):
        load(path, layout="assistant_axis", n_layers=N_LAYERS)
