"""Hostile vector and persona files: each attack that was reproduced against the readers, built
with the real tools where possible, and shown refused cheaply with our own message.

Crafted vector files are read in a child process (:func:`read_in_child`), which reports its
peak memory and the time the read took; the same child reading a legitimate small file of the
same format is the yardstick. The child runs under an address-space cap, so a regression fails
the test instead of taking the machine's memory.

Peak memory is the child's ``VmHWM`` where Linux has it, not ``ru_maxrss``: subprocess starts
children with vfork, and exec folds the parent's (pytest's) peak into the child's
``ru_maxrss``, so that figure grows with whatever the test session has loaded.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import gguf
import pytest
import safetensors.torch
import torch

from persona_explorer.personas.definitions import PersonaError, load_persona
from persona_explorer.vectors.files import VectorFileError, load, read_info, save
from persona_explorer.vectors.persona_vector import PersonaVector, VectorMismatchError
from tests.test_vectors import D_MODEL, N_LAYERS, full_vec, planted

REPO = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, resource, sys, time
cap = 4 * 2**30  # far above a legitimate read (~0.7 GB of address space), far below an attack's
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from persona_explorer.vectors import files as vector_files

def peak_kb():
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def read(call, path, kwargs):
    start = time.perf_counter()
    try:
        getattr(vector_files, call)(path, **kwargs)
        out = {"error": None, "message": ""}
    except Exception as exc:
        out = {"error": type(exc).__name__, "message": str(exc)}
    return {**out, "seconds": time.perf_counter() - start, "peak_kb": peak_kb()}

call, legit, path, kwargs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
first = read(call, legit, kwargs)
print(json.dumps({"legit": first, "crafted": read(call, path, kwargs)}))
"""

# torch's refusal advises re-running with weights_only=False: the one thing never to do with
# an upload. None of its wording may reach the user.
TORCH_WORDING = ("weights_only", "Weights only", "WeightsUnpickler", "add_safe_globals")


def legit_file(folder: Path, suffix: str) -> Path:
    """A legitimate small vector file, as the app writes them."""
    vec = full_vec(embedding=None)
    rows = vec.vectors.clone()
    rows[0] = 0  # as GGUF can hold it
    layout = "assistant_axis" if suffix == ".pt" else None
    return save(vec.with_(vectors=rows), folder / f"legit{suffix}", layout=layout)


def read_in_child(path: Path, call: str = "load", **kwargs: Any) -> dict[str, Any]:
    """Read a legitimate file of the same format, then ``path``, in a fresh interpreter; each
    read's outcome, time and the process's peak memory after it."""
    folder = path.parent / "legit"
    folder.mkdir(exist_ok=True)
    legit = legit_file(folder, path.suffix)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, call, str(legit), str(path), json.dumps(kwargs)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["legit"]["error"] is None, result
    return result


def assert_refused_cheaply(result: dict[str, Any], *, match: str, seconds: float = 2.0) -> None:
    """Refused with our message, in bounded time, and at about the memory the legitimate read
    took: the slack is allocator noise, far below any attack's gigabytes."""
    legit, crafted = result["legit"], result["crafted"]
    assert crafted["error"] in ("VectorFileError", "VectorMismatchError"), crafted
    assert match in crafted["message"], crafted["message"]
    assert not any(w in crafted["message"] for w in TORCH_WORDING), crafted["message"]
    assert crafted["seconds"] < seconds, result
    assert crafted["peak_kb"] < legit["peak_kb"] + 32 * 1024, result


# --------------------------------------------------------------------------- file builders


def rezip(src: Path, dst: Path, *, compression: int = zipfile.ZIP_STORED, **replace: bytes) -> Path:
    """Re-write the zip a torch.save produced, entry by entry, with another compression and
    some records replaced (keys: the record's name after the archive folder, e.g. data.pkl)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=compression) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            tail = info.filename.split("/", 1)[1]
            zout.writestr(info.filename, replace.get(tail, data), compress_type=compression)
    return dst


def gguf_file(
    path: Path,
    tensors: list[tuple[str, list[int], int, int]],
    data: bytes,
    kv: dict[str, str] | None = None,
) -> Path:
    """A GGUF v3 file packed by hand: string keys, then tensor infos (name, dims, ggml type,
    offset) exactly as given, then ``data`` at the default 32-byte alignment."""

    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s.encode())) + s.encode()

    kv = {"general.architecture": "controlvector", **(kv or {})}
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    for key, value in kv.items():
        out += string(key) + struct.pack("<I", 8) + string(value)
    for name, dims, ggml_type, offset in tensors:
        out += string(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ggml_type, offset)
    out += b"\0" * (-len(out) % 32)
    path.write_bytes(bytes(out) + data)
    return path


def test_hand_packed_gguf_is_a_valid_control_vector(tmp_path):
    # The builder above must write what GGUFReader and our reader accept, or the attacks
    # below would prove nothing.
    rows = [torch.full((D_MODEL,), float(k)) for k in range(1, 3)]
    data = b"".join(r.numpy().tobytes() for r in rows)
    path = gguf_file(
        tmp_path / "ok.gguf",
        [("direction.1", [D_MODEL], 0, 0), ("direction.2", [D_MODEL], 0, D_MODEL * 4)],
        data,
    )
    reader = gguf.GGUFReader(path)
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.2"]
    v = load(path)
    assert v.n_layers == 3 and torch.equal(v.at(2), rows[1])


# --------------------------------------------------------------------------- 1. expanded .pt


def test_expanded_pt_is_refused_before_it_is_copied(tmp_path):
    # 1.6 KB on disk; made contiguous it is 3.7 GB of float32.
    path = tmp_path / "expanded.pt"
    torch.save(torch.zeros(1).expand(1000, 1_000_000), path)
    assert path.stat().st_size < 4096
    result = read_in_child(path, layout="assistant_axis")
    assert_refused_cheaply(result, match="needs 3.7 GB")
    assert "limited to 16 MB (PERSONA_EXPLORER_MAX_VECTOR_MB)" in result["crafted"]["message"]


@pytest.mark.parametrize(
    "tensor",
    [
        torch.zeros(1).expand(N_LAYERS, D_MODEL),  # stride 0
        torch.zeros(N_LAYERS + D_MODEL - 1).as_strided((N_LAYERS, D_MODEL), (1, 1)),  # overlap
        torch.zeros(1000, D_MODEL)[:N_LAYERS],  # a view of a larger storage
        torch.zeros(N_LAYERS + 1, D_MODEL)[1:],  # offset into its storage
    ],
    ids=["stride-0", "overlapping", "larger-storage", "offset"],
)
def test_pt_views_within_the_budget_are_refused(tmp_path, tensor):
    path = tmp_path / "view.pt"
    torch.save(tensor, path)
    with pytest.raises(VectorFileError, match="owns exactly its data"):
        load(path, layout="assistant_axis")


def test_pt_transposed_tensor_is_accepted(tmp_path):
    # Dense but not row-major: it owns exactly its storage, so a copy costs what it says.
    path = tmp_path / "t.pt"
    torch.save(planted().T.contiguous().T, path)
    assert torch.equal(load(path, layout="assistant_axis").vectors, planted())


# --------------------------------------------------------------------------- 2. compressed .pt


def test_deflated_pt_is_refused_before_it_is_inflated(tmp_path):
    torch.save(torch.zeros(1024, 8192), tmp_path / "big.pt")  # 32 MiB of zeros
    path = rezip(tmp_path / "big.pt", tmp_path / "deflated.pt", compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 64 * 1024  # ~1000:1
    result = read_in_child(path, layout="assistant_axis")
    assert_refused_cheaply(result, match="compressed")


def test_pt_storages_beyond_the_budget_are_refused(tmp_path):
    path = tmp_path / "big.pt"
    torch.save(torch.zeros(N_LAYERS, 2**20), path)  # 32 MiB, stored
    with pytest.raises(VectorFileError, match="limited to 16 MB"):
        load(path, layout="assistant_axis")
    assert load(path, layout="assistant_axis", max_bytes=64 * 2**20).d_model == 2**20


def test_pt_legacy_format_is_refused_clearly(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(planted(), path, _use_new_zipfile_serialization=False)
    with pytest.raises(VectorFileError, match="legacy"):
        load(path, layout="assistant_axis")


def test_pt_with_too_many_zip_entries_is_refused(tmp_path):
    torch.save(planted(), tmp_path / "v.pt")
    path = rezip(tmp_path / "v.pt", tmp_path / "many.pt")
    with zipfile.ZipFile(path, "a") as z:
        for i in range(1100):
            z.writestr(f"{z.namelist()[0].split('/')[0]}/extra/{i}", b"")
    with pytest.raises(VectorFileError, match="entries"):
        load(path, layout="assistant_axis")


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        (
            lambda d: d[: len(d) - 22 + 10] + struct.pack("<H", 6) + d[len(d) - 22 + 12 :],
            "disagree",
        ),
        (lambda d: d + b"trailing", "followed by other data"),
    ],
    ids=["zip64-disagrees", "trailing-data"],
)
def test_pt_zip_end_records_must_be_unambiguous(tmp_path, patch, match):
    # zipfile and torch's miniz must see the same directory, or our checks would vouch for
    # entries torch never reads.
    path = tmp_path / "v.pt"
    torch.save(planted(), path)
    path.write_bytes(patch(path.read_bytes()))
    with pytest.raises(VectorFileError, match=match):
        load(path, layout="assistant_axis")


def test_pt_storage_record_smaller_than_claimed_is_refused(tmp_path):
    torch.save(planted(), tmp_path / "v.pt")
    path = rezip(tmp_path / "v.pt", tmp_path / "short.pt", **{"data/0": b"\0" * 16})
    with pytest.raises(VectorFileError, match="does not hold the size"):
        load(path, layout="assistant_axis")


# --------------------------------------------------------------------------- 3. GGUF offsets


def test_gguf_overlapping_tensors_are_refused_before_copying(tmp_path):
    # 4095 directions, each 1M floats, all pointing at the same 4 MB: 16 GB of copies.
    width = 1_000_000
    tensors = [(f"direction.{k}", [width], 0, 0) for k in range(1, 4096)]
    path = gguf_file(tmp_path / "overlap.gguf", tensors, b"\0" * (width * 4))
    assert path.stat().st_size < 5 * 2**20
    result = read_in_child(path)
    assert_refused_cheaply(result, match="overlap")


def test_gguf_with_65k_tensors_is_refused_fast(tmp_path):
    tensors = [(f"direction.{k}", [1], 0, 4 * k) for k in range(65536)]
    path = gguf_file(tmp_path / "many.gguf", tensors, b"\0" * (4 * 65536))
    result = read_in_child(path)
    assert_refused_cheaply(result, match="65536 tensors")


def test_gguf_tensor_data_outside_the_file_is_refused(tmp_path):
    path = gguf_file(tmp_path / "out.gguf", [("direction.1", [D_MODEL], 0, 10**12)], b"")
    with pytest.raises(VectorFileError, match="outside the file"):
        load(path)


def test_gguf_patched_offsets_overlap(tmp_path):
    # Written by gguf.GGUFWriter, then direction.2's offset patched to direction.1's.
    writer = gguf.GGUFWriter(str(tmp_path / "w.gguf"), "controlvector")
    for k in (1, 2):
        writer.add_tensor(f"direction.{k}", torch.full((D_MODEL,), float(k)).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = bytearray((tmp_path / "w.gguf").read_bytes())
    name = b"direction.2"
    at = data.index(name) + len(name) + 4 + 8 + 4  # n_dims, dims[0], type
    assert struct.unpack_from("<Q", data, at)[0] == 64  # aligned after direction.1
    struct.pack_into("<Q", data, at, 0)
    (tmp_path / "p.gguf").write_bytes(bytes(data))
    with pytest.raises(VectorFileError, match="overlap"):
        load(tmp_path / "p.gguf")


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (("direction.1", [D_MODEL, 2], 0, 0), "dimensions"),
        (("direction.1", [1] * 5, 0, 0), "at most 4"),
        (("direction.1", [D_MODEL], 2, 0), "expected F32"),  # Q4_0
        (("token_embd", [D_MODEL], 0, 0), "unexpected tensor"),
        (("direction.5000", [D_MODEL], 0, 0), "beyond 4096"),
    ],
)
def test_gguf_bad_tensor_infos_are_refused(tmp_path, tensor, match):
    path = gguf_file(tmp_path / "bad.gguf", [tensor], b"\0" * (D_MODEL * 8))
    with pytest.raises(VectorFileError, match=match):
        load(path)


# --------------------------------------------------------------------------- 4. pickle junk


def test_pt_with_megabytes_of_pickle_is_refused_fast(tmp_path):
    path = tmp_path / "junk.pt"
    torch.save({"vectors": planted(), "junk": list(range(3_000_000))}, path)
    with zipfile.ZipFile(path) as z:
        assert max(i.file_size for i in z.infolist() if i.filename.endswith("data.pkl")) > 2**23
    result = read_in_child(path, layout="assistant_axis")
    assert_refused_cheaply(result, match="data.pkl")


def test_pt_with_shared_tuples_is_refused_before_unpickling(tmp_path):
    # {t60: 1} with t = (t, t) at every level: a 330-byte pickle whose key takes 2**60 steps to
    # hash inside torch.load (weights_only unpickling runs no code, but it hashes keys).
    torch.save({"a": planted()}, tmp_path / "v.pt")
    pickle = b"\x80\x02}" + b"K\x00" + b"q\x01h\x01\x86" * 60 + b"K\x01s."
    path = rezip(tmp_path / "v.pt", tmp_path / "dag.pt", **{"data.pkl": pickle})
    result = read_in_child(path, layout="assistant_axis")
    assert_refused_cheaply(result, match="shares a container")


# --------------------------------------------------------------------------- 5. deep JSON

DEEP = "[" * 100_000 + "]" * 100_000


def test_deep_json_in_safetensors_metadata_is_refused(tmp_path):
    path = tmp_path / "deep.safetensors"
    safetensors.torch.save_file(
        {"vectors": planted()}, str(path), metadata={"persona_explorer": DEEP}
    )
    for reader in (load, read_info):
        with pytest.raises(VectorFileError, match="nests more than 32 levels"):
            reader(path)


def test_deep_json_in_gguf_metadata_is_refused(tmp_path):
    path = gguf_file(
        tmp_path / "deep.gguf",
        [("direction.1", [D_MODEL], 0, 0)],
        b"\0" * (D_MODEL * 4),
        kv={"persona_explorer.metadata": DEEP},
    )
    with pytest.raises(VectorFileError, match="nests more than 32 levels"):
        load(path)


def test_deep_json_with_brackets_inside_strings_is_not_deep(tmp_path):
    # The depth scan skips string contents, escaped quotes included.
    vec = full_vec(metadata={"note": '"[' * 50 + "\\" + "{" * 50})
    back = load(save(vec, tmp_path / "v.safetensors"))
    assert back.metadata == vec.metadata


def test_huge_metadata_json_is_refused(tmp_path):
    path = tmp_path / "huge.safetensors"
    blob = json.dumps({"format_version": 1, "pad": "x" * (2 * 2**20)})
    safetensors.torch.save_file(
        {"vectors": planted()}, str(path), metadata={"persona_explorer": blob}
    )
    with pytest.raises(VectorFileError, match="at most 1 MB of JSON"):
        load(path)


# --------------------------------------------------------------------------- 6. torch's wording


class _Exploit:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize(
    "obj",
    [
        {"vectors": _Exploit()},
        {"vectors": planted(), "when": __import__("datetime").date(2024, 1, 1)},
        {"vectors": planted(), "kind": torch.nn.Linear(2, 2)},
    ],
    ids=["exploit", "datetime", "module"],
)
def test_torch_refusals_are_reworded(tmp_path, obj):
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(VectorFileError) as info:
        load(path, layout="assistant_axis")
    message = str(info.value)
    assert "not a tensor file torch can load safely" in message
    assert not any(w in message for w in TORCH_WORDING), message


def test_torch_errors_after_our_checks_are_reworded(tmp_path):
    # Passes the scan (allowed globals, storage of the declared size) but claims a shape its
    # storage cannot hold: torch itself raises, and its text is replaced by ours.
    torch.save(torch.ones(4), tmp_path / "v.pt")
    with zipfile.ZipFile(tmp_path / "v.pt") as z:
        pickled = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert pickled.count(b"K\x04\x85") == 1  # the size (4,)
    path = rezip(
        tmp_path / "v.pt",
        tmp_path / "oob.pt",
        **{"data.pkl": pickled.replace(b"K\x04\x85", b"K\x64\x85")},
    )
    with pytest.raises(VectorFileError, match="something other than tensors") as info:
        load(path, layout="assistant_axis")
    assert isinstance(info.value.__cause__, RuntimeError)  # torch's, kept for the log only
    assert not any(w in str(info.value) for w in (*TORCH_WORDING, "setStorage"))


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda: torch.eye(3).to_sparse(), "_rebuild_sparse_tensor"),
        (
            lambda: torch.quantize_per_tensor(torch.ones(2, 2), 0.1, 0, torch.qint8),
            "_rebuild_qtensor",
        ),
    ],
    ids=["sparse", "quantized"],
)
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_tensor_kinds_a_vector_never_is_are_refused_before_torch(tmp_path, make, what):
    path = tmp_path / "x.pt"
    torch.save(make(), path)
    with pytest.raises(VectorFileError, match=f"names 'torch._utils {what}'"):
        load(path, layout="assistant_axis")


# --------------------------------------------------------------------------- safetensors headers


def _safetensors_with_header(path: Path, header: dict[str, Any], data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (
            {"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
             "b": {"dtype": "F32", "shape": [4, 4], "data_offsets": [32, 96]}},
            "overlap",
        ),
        ({"v": {"dtype": "F32", "shape": [4000, 10**6], "data_offsets": [0, 16 * 10**9]}},
         "limited to 16 MB"),
        ({"v": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 60]}}, "does not match"),
        ({"v": {"dtype": "Q4", "shape": [4, 4], "data_offsets": [0, 64]}}, "unknown dtype"),
        ({"v": {"dtype": "I32", "shape": [4, 4], "data_offsets": [0, 64]}}, "floating-point"),
        ({f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
          for i in range(300)}, "300 tensors"),
    ],
    ids=["overlap", "huge", "size-mismatch", "dtype", "int", "count"],
)  # fmt: skip
def test_bad_safetensors_headers_are_refused(tmp_path, header, match):
    path = _safetensors_with_header(tmp_path / "bad.safetensors", header, b"\0" * 1200)
    for reader in (load, read_info):
        with pytest.raises(VectorFileError, match=match):
            reader(path)


def test_safetensors_header_length_is_bounded(tmp_path):
    path = tmp_path / "long.safetensors"
    path.write_bytes(struct.pack("<Q", 200 * 2**20) + b"{" + b" " * 4096)
    result = read_in_child(path)
    assert_refused_cheaply(result, match="header")


# --------------------------------------------------------------------------- read_info


def test_read_info_reads_no_tensor_data(tmp_path, monkeypatch):
    vec = full_vec()
    data = save(vec, tmp_path / "v.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])  # the tensors' bytes are incomplete

    def boom(*args, **kwargs):
        raise AssertionError("read_info must not open the tensors")

    monkeypatch.setattr(safetensors, "safe_open", boom)
    info = read_info(cut)
    assert (info.name, info.n_layers, info.d_model) == (vec.name, N_LAYERS, D_MODEL)
    assert (info.layer, info.strength, info.best_layer) == (vec.layer, vec.strength, 7)
    with pytest.raises(VectorFileError, match="truncated"):
        load(cut)


def test_read_info_checks_the_fields_as_load_does(tmp_path):
    path = tmp_path / "bad.safetensors"
    meta = {**full_vec().to_json_metadata(), "format_version": 1, "layer": 99}
    safetensors.torch.save_file(
        {"vectors": planted()}, str(path), metadata={"persona_explorer": json.dumps(meta)}
    )
    for reader in (load, read_info):
        with pytest.raises(VectorFileError, match="out of range"):
            reader(path)


# --------------------------------------------------------------------------- against the model


@pytest.mark.parametrize("ext", [".safetensors", ".pt", ".gguf"])
def test_wrong_width_is_refused_before_data_is_read(tmp_path, monkeypatch, ext):
    from persona_explorer.vectors.files import common, control_vector, native, torch_pt

    layout = "assistant_axis" if ext == ".pt" else None
    vec = full_vec(embedding=None).with_(vectors=planted())
    path = save(vec, tmp_path / f"v{ext}", layout=layout)

    def boom(*args, **kwargs):
        raise AssertionError("tensor data was read")

    for module in (common, native, torch_pt):
        monkeypatch.setattr(module, "_matrix_from_file", boom)
    monkeypatch.setattr(safetensors, "safe_open", boom)
    monkeypatch.setattr(control_vector, "_directions", boom)
    with pytest.raises(VectorMismatchError, match=f"width {D_MODEL}; the model's d_model is 32"):
        load(path, layout=layout, d_model=32)
    with pytest.raises(VectorMismatchError, match="3 layers"):
        load(path, layout=layout, n_layers=3)


def test_max_bytes_names_the_limit(tmp_path):
    path = save(full_vec(), tmp_path / "v.safetensors")
    with pytest.raises(
        VectorFileError, match=r"limited to 100 bytes \(PERSONA_EXPLORER_MAX_VECTOR_MB\)"
    ):
        load(path, max_bytes=100)
    with pytest.raises(ValueError, match="max_bytes"):
        load(path, max_bytes=0)


# --------------------------------------------------------------------------- 7. persona files


def test_large_persona_file_is_refused(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"instruction": [{"pos": "a", "neg": "b"}], "questions": ["q"],
                                "pad": "x" * (2 * 2**20)}))  # fmt: skip
    with pytest.raises(PersonaError, match="1,048,576 bytes"):
        load_persona(path)


def test_deeply_nested_persona_file_is_refused(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"instruction": ' + DEEP + ', "questions": ["q"]}')
    with pytest.raises(PersonaError, match="nested too deeply"):
        load_persona(path)


def test_vector_value_round_trip_still_exact(tmp_path):
    # The checks above must not refuse what we write ourselves, at the sizes we write.
    big = PersonaVector("big", torch.randn(64, 4096))
    for ext, layout in ((".safetensors", None), (".pt", "assistant_axis"), (".gguf", None)):
        back = load(save(big, tmp_path / f"b{ext}", layout=layout), layout=layout)
        assert back.vectors.shape == (64, 4096)
