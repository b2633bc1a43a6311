"""The on-disk vector library: round trips, safe names, rename/delete, crashes, restarts,
quotas, ownership, hostile files, concurrent writers."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_DESCRIPTION_CHARS, Limits
from persona_explorer.core.names import clean_name, slugify
from persona_explorer.vectors import files as vector_files
from persona_explorer.vectors.library import Library, LibraryError
from persona_explorer.vectors.persona_vector import PersonaVector

REPO_ROOT = Path(__file__).resolve().parent.parent


def vector_files_in(root: Path) -> list[str]:
    """What the library directory holds, less the lock file (the one non-vector it keeps)."""
    return sorted(p.name for p in root.iterdir() if p.name != ".lock")


def make_vec(name: str = "pirate", seed: int = 0, **fields: object) -> PersonaVector:
    gen = torch.Generator().manual_seed(seed)
    defaults: dict = {
        "model_id": "embedded:SmolLM2-135M-Instruct",
        "layer": 3,
        "strength": 2.0,
        "metadata": {"source": "test"},
    }
    defaults.update(fields)
    return PersonaVector(name=name, vectors=torch.randn(6, 8, generator=gen), **defaults)


@pytest.fixture
def lib(tmp_path: Path) -> Library:
    return Library(tmp_path / "lib")


def test_save_then_list_and_get_round_trips(lib: Library) -> None:
    vec = make_vec()
    entry = lib.save(vec)
    assert entry.id == "pirate"
    assert entry.path == lib.root / "pirate.safetensors"
    [listed] = lib.entries()
    assert listed.id == "pirate" and listed.error is None
    got = lib.get("pirate")
    assert torch.equal(got.vectors, vec.vectors)
    assert (got.name, got.model_id, got.layer, got.strength) == (
        "pirate",
        vec.model_id,
        3,
        2.0,
    )
    assert got.metadata["source"] == "test"
    assert "saved" in got.metadata and "created" in got.metadata


def test_only_vector_files_live_in_the_library_directory(lib: Library) -> None:
    lib.save(make_vec("a"))
    lib.save(make_vec("b"))
    assert vector_files_in(lib.root) == ["a.safetensors", "b.safetensors"]


def test_the_library_survives_a_restart(tmp_path: Path) -> None:
    Library(tmp_path / "lib").save(make_vec("evil", seed=1))
    again = Library(tmp_path / "lib")
    assert again.ids() == ["evil"]
    assert torch.equal(again.get("evil").vectors, make_vec("evil", seed=1).vectors)


def test_same_name_gets_a_fresh_id_instead_of_overwriting(lib: Library) -> None:
    first = lib.save(make_vec("pirate", seed=1))
    second = lib.save(make_vec("pirate", seed=2))
    third = lib.save(make_vec("Pirate!", seed=3))
    assert (first.id, second.id, third.id) == ("pirate", "pirate-2", "pirate-3")
    assert torch.equal(lib.get("pirate").vectors, make_vec(seed=1).vectors)
    assert len(lib.entries()) == 3


def test_save_under_another_name(lib: Library) -> None:
    entry = lib.save(make_vec("pirate"), name="  Captain   Hook ")
    assert entry.id == "captain-hook"
    assert lib.get("captain-hook").name == "Captain Hook"


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "/absolute/path", "..", "a/../../b", "C:\\windows\\system32", "~root"],
)
def test_hostile_names_stay_inside_the_library(lib: Library, tmp_path: Path, name: str) -> None:
    entry = lib.save(make_vec(), name=name)
    assert entry.path.parent == lib.root
    assert entry.path.resolve().is_relative_to(lib.root.resolve())
    assert lib.get(entry.id).name == clean_name(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib"]


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "", "UPPER", ".hidden", "x" * 200, None, 3])
def test_ids_from_outside_are_checked(lib: Library, bad_id: object) -> None:
    lib.save(make_vec())
    with pytest.raises(InputError):
        lib.get(bad_id)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        lib.delete(bad_id)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        lib.rename(bad_id, "new")  # type: ignore[arg-type]
    assert lib.ids() == ["pirate"]


def test_rename_moves_the_file_and_the_name(lib: Library) -> None:
    lib.save(make_vec("pirate"))
    entry = lib.rename("pirate", "Sea Dog")
    assert entry.id == "sea-dog"
    assert lib.ids() == ["sea-dog"]
    assert lib.get("sea-dog").name == "Sea Dog"
    assert torch.equal(lib.get("sea-dog").vectors, make_vec().vectors)
    assert not (lib.root / "pirate.safetensors").exists()


def test_rename_to_the_same_file_name_rewrites_in_place(lib: Library) -> None:
    lib.save(make_vec("pirate"))
    entry = lib.rename("pirate", "PIRATE")
    assert entry.id == "pirate" and lib.ids() == ["pirate"]
    assert lib.get("pirate").name == "PIRATE"


def test_rename_never_overwrites_another_vector(lib: Library) -> None:
    lib.save(make_vec("a", seed=1))
    lib.save(make_vec("b", seed=2))
    entry = lib.rename("a", "b")
    assert entry.id == "b-2"
    assert torch.equal(lib.get("b").vectors, make_vec(seed=2).vectors)
    assert sorted(lib.ids()) == ["b", "b-2"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 81, 7, "\u200b\u202e\u2066", "x" * 100_000])
def test_bad_names_are_refused(lib: Library, name: object) -> None:
    with pytest.raises(InputError):
        lib.save(make_vec(), name=name)  # type: ignore[arg-type]
    lib.save(make_vec())
    with pytest.raises(InputError):
        lib.rename("pirate", name)  # type: ignore[arg-type]


def test_delete(lib: Library) -> None:
    lib.save(make_vec("a"))
    lib.save(make_vec("b"))
    lib.delete("a")
    assert lib.ids() == ["b"]
    with pytest.raises(InputError):
        lib.delete("a")
    with pytest.raises(InputError):
        lib.get("a")


def test_a_crash_during_save_leaves_the_library_intact(
    lib: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib.save(make_vec("pirate", seed=1))

    def torn_write(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        with open(filename, "wb") as fh:
            fh.write(b"half a header")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", torn_write)
    with pytest.raises(OSError, match="disk full"):
        lib.save(make_vec("other"))
    with pytest.raises(OSError, match="disk full"):
        lib.rename("pirate", "renamed")
    monkeypatch.undo()
    assert lib.ids() == ["pirate"]
    assert torch.equal(lib.get("pirate").vectors, make_vec(seed=1).vectors)
    assert vector_files_in(lib.root) == ["pirate.safetensors"]


def test_stale_temp_files_and_directories_are_ignored_and_swept_at_start(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    Library(root).save(make_vec("pirate"))
    stale_file = root / ".pirate.safetensors.abc123.tmp"
    stale_file.write_bytes(b"junk")
    stale_dir = root / ".pirate.abc123.tmp"
    stale_dir.mkdir()
    (stale_dir / "vector.safetensors").write_bytes(b"half a vector")
    old = time.time() - 120  # a killed writer's leftovers, older than any write takes
    for p in (stale_dir / "vector.safetensors", stale_dir, stale_file):
        os.utime(p, (old, old))
    fresh = root / ".other.safetensors.def456.tmp"
    fresh.write_bytes(b"junk")  # may belong to a save in progress: left for the next start
    lib = Library(root)
    assert lib.ids() == ["pirate"]
    assert not stale_file.exists() and not stale_dir.exists() and fresh.exists()
    assert vector_files_in(root) == [fresh.name, "pirate.safetensors"]
    os.utime(fresh, (old, old))  # another process died while this one keeps running
    lib.save(make_vec("later"))
    assert vector_files_in(root) == ["later.safetensors", "pirate.safetensors"]


def test_unreadable_files_are_listed_with_their_error(lib: Library) -> None:
    lib.save(make_vec("good"))
    (lib.root / "broken.safetensors").write_bytes(b"\x00not a safetensors file")
    entries = {e.id: e for e in lib.entries()}
    assert entries["good"].error is None
    assert entries["broken"].info is None and entries["broken"].error
    with pytest.raises(LibraryError, match="cannot be read"):
        lib.get("broken")


def test_files_replaced_on_disk_are_reread(lib: Library) -> None:
    lib.save(make_vec("pirate", seed=1))
    assert torch.equal(lib.get("pirate").vectors, make_vec(seed=1).vectors)
    vector_files.save(make_vec("pirate", seed=2), lib.root / "pirate.safetensors")
    assert torch.equal(lib.get("pirate").vectors, make_vec(seed=2).vectors)


def test_vectors_for_another_model_are_kept(lib: Library) -> None:
    lib.save(make_vec("foreign", model_id="meta-llama/Llama-3.1-8B-Instruct"))
    assert lib.get("foreign").model_id == "meta-llama/Llama-3.1-8B-Instruct"


def test_find_by_name(lib: Library) -> None:
    lib.save(make_vec("Sea Dog"))
    assert lib.find_by_name("sea dog").id == "sea-dog"  # type: ignore[union-attr]
    assert lib.find_by_name("sea-dog").id == "sea-dog"  # type: ignore[union-attr]
    assert lib.find_by_name("nobody") is None


def test_read_only_library_refuses_writes(tmp_path: Path) -> None:
    Library(tmp_path / "lib").save(make_vec())
    ro = Library(tmp_path / "lib", read_only=True)
    assert ro.ids() == ["pirate"]
    assert not ro.can_modify(ro.entry("pirate"), None)
    with pytest.raises(InputError):
        ro.save(make_vec("x"))
    with pytest.raises(InputError):
        ro.rename("pirate", "x")
    with pytest.raises(InputError):
        ro.delete("pirate")
    assert Library(tmp_path / "missing", read_only=True).entries() == []
    assert not (tmp_path / "missing").exists()


def test_concurrent_saves_of_one_name_all_survive(lib: Library) -> None:
    def worker(i: int) -> None:
        lib.save(make_vec("same", seed=i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lib.ids()) == 8


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Pirate", "pirate"),
        ("  sea dog  ", "sea-dog"),
        ("Café Crème", "cafe-creme"),
        ("../../etc/passwd", "etc-passwd"),
        ("我的", "vector"),
        ("", "vector"),
        ("a" * 100, "a" * 64),
        ("x_y-z", "x_y-z"),
    ],
)
def test_slugify(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_listing_updates_its_cache_under_the_lock(
    lib: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent listings never read and update the cache at the same time."""
    for i in range(4):
        lib.save(make_vec(f"v{i}", seed=i))
    lib._cache.clear()
    inside, peak = 0, 0
    guard = threading.Lock()
    original = Library._read

    def slow_read(self: Library, path: Path, size: int) -> object:
        nonlocal inside, peak
        with guard:
            inside += 1
            peak = max(peak, inside)
        time.sleep(0.01)
        try:
            return original(self, path, size)
        finally:
            with guard:
                inside -= 1

    monkeypatch.setattr(Library, "_read", slow_read)
    results: list[list[str]] = []

    def list_all() -> None:
        lib._cache.clear()
        results.append(sorted(e.id for e in lib.entries()))

    threads = [threading.Thread(target=list_all) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert peak == 1
    assert all(r == results[0] for r in results) and len(results[0]) == 4


def test_rename_while_listing_does_not_deadlock(lib: Library) -> None:
    entry = lib.save(make_vec("old"))
    done = threading.Event()

    def rename() -> None:
        lib.rename(entry.id, "new")
        done.set()

    t = threading.Thread(target=rename)
    t.start()
    t.join(timeout=10)
    assert done.is_set() and [e.name for e in lib.entries()] == ["new"]


# --------------------------------------------------------------------------- quotas


def small_limits(**changes: int) -> Limits:
    return Limits(**changes)  # type: ignore[arg-type]


def test_total_vector_quota(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib", limits=small_limits(library_max_vectors=3))
    for i in range(3):
        lib.save(make_vec(f"v{i}"), owner=f"visitor-{i}")
    with pytest.raises(LibraryError, match="PERSONA_EXPLORER_LIBRARY_MAX_VECTORS"):
        lib.save(make_vec("one too many"), owner="visitor-9")
    with pytest.raises(LibraryError, match="holds 3 vectors"):
        lib.save(make_vec("admin too"))  # the total protects the server from everyone
    assert len(lib.ids()) == 3
    lib.delete("v0", owner="visitor-0")
    lib.save(make_vec("room again"))
    assert len(lib.ids()) == 3


def test_per_owner_quota(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib", limits=small_limits(library_max_per_owner=2))
    lib.save(make_vec("a1"), owner="alice")
    lib.save(make_vec("a2"), owner="alice")
    with pytest.raises(LibraryError, match="PERSONA_EXPLORER_LIBRARY_MAX_PER_OWNER"):
        lib.save(make_vec("a3"), owner="alice")
    lib.save(make_vec("b1"), owner="bob")  # another browser has its own allowance
    lib.save(make_vec("admin1"))  # the administrator has none
    lib.save(make_vec("admin2"))
    lib.save(make_vec("admin3"))
    lib.delete("a1", owner="alice")
    lib.save(make_vec("a3"), owner="alice")
    assert sorted(lib.ids()) == ["a2", "a3", "admin1", "admin2", "admin3", "b1"]


def test_a_vector_over_the_size_limit_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = Library(tmp_path / "lib", limits=small_limits(max_vector_mb=1))
    big = PersonaVector(name="huge", vectors=torch.zeros(64, 4200))  # 1.03 MiB of float32

    def must_not_write(*args: object, **kwargs: object) -> None:
        raise AssertionError("an oversized vector reached the writer")

    monkeypatch.setattr(vector_files, "save", must_not_write)
    with pytest.raises(LibraryError, match="PERSONA_EXPLORER_MAX_VECTOR_MB"):
        lib.save(big, owner="alice")
    assert vector_files_in(lib.root) == []


def test_total_bytes_quota(tmp_path: Path) -> None:
    limits = small_limits(library_max_total_mb=1, max_vector_mb=1)
    lib = Library(tmp_path / "lib", limits=limits)

    def vec(i: int) -> PersonaVector:
        return PersonaVector(name=f"v{i}", vectors=torch.full((10, 7000), float(i)))  # 280 kB

    for i in range(3):
        lib.save(vec(i))
    with pytest.raises(LibraryError, match="PERSONA_EXPLORER_LIBRARY_MAX_TOTAL_MB"):
        lib.save(vec(3))
    assert sorted(lib.ids()) == ["v0", "v1", "v2"]
    assert vector_files_in(lib.root) == ["v0.safetensors", "v1.safetensors", "v2.safetensors"]
    assert sum(e.size for e in lib.entries()) <= limits.library_max_total_bytes


def test_quotas_hold_across_two_libraries_writing_at_once(tmp_path: Path) -> None:
    limits = small_limits(library_max_vectors=10)
    libs = [Library(tmp_path / "lib", limits=limits) for _ in range(2)]
    refused: list[LibraryError] = []

    def worker(lib: Library, t: int) -> None:
        for i in range(5):
            try:
                lib.save(make_vec("v", seed=t * 10 + i))
            except LibraryError as exc:
                refused.append(exc)

    threads = [threading.Thread(target=worker, args=(libs[t % 2], t)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(libs[0].ids()) == 10 and len(refused) == 30


# --------------------------------------------------------------------------- hostile files


def write_raw_safetensors(path: Path, header: dict, data: bytes = b"", size: int = 0) -> None:
    """A safetensors file built by hand (headers no writer would produce); ``size`` pads the
    file (sparsely) to that many bytes."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + data)
        if size:
            fh.truncate(size)


def ours(**fields: object) -> str:
    base = {"format_version": 1, "layer_convention": "resid_post", "name": "hostile"}
    return json.dumps({**base, **fields})


HUGE = 263 * 2**20  # a 263 MiB tensor: [263 * 256, 1024] float32
HUGE_TENSOR = {"dtype": "F32", "shape": [263 * 256, 1024], "data_offsets": [0, HUGE]}


def plant_hostile_files(root: Path) -> list[str]:
    write_raw_safetensors(
        root / "huge.safetensors",
        {"__metadata__": {"persona_explorer": ours()}, "vectors": HUGE_TENSOR},
        size=HUGE + 4096,
    )
    write_raw_safetensors(  # declares 263 MiB, holds none of it
        root / "truncated.safetensors",
        {"__metadata__": {"persona_explorer": ours()}, "vectors": HUGE_TENSOR},
    )
    deep = "[" * 100_000 + "]" * 100_000
    write_raw_safetensors(
        root / "deep.safetensors",
        {
            "__metadata__": {"persona_explorer": ours()[:-1] + ', "metadata": ' + deep + "}"},
            "vectors": {"dtype": "F32", "shape": [6, 8], "data_offsets": [0, 192]},
        },
        data=bytes(192),
    )
    (root / "garbage.safetensors").write_bytes(b"\xff" * 64)
    return ["deep", "garbage", "huge", "truncated"]


def test_hostile_files_are_listed_as_unreadable_and_break_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "lib"
    Library(root).save(make_vec("good"), owner="alice")
    bad = plant_hostile_files(root)
    with caplog.at_level(logging.WARNING, logger="persona_explorer.vectors.library"):
        lib = Library(root)  # a restart with them present
        for _ in range(3):
            entries = {e.id: e for e in lib.entries()}
    assert sorted(entries) == sorted(["good", *bad])
    assert entries["good"].info is not None and entries["good"].error is None
    for entry_id in bad:
        assert entries[entry_id].info is None and entries[entry_id].error, entry_id
        with pytest.raises(LibraryError, match="cannot be read"):
            lib.get(entry_id)
    assert "MAX_VECTOR_MB" in entries["huge"].error  # type: ignore[operator]
    assert "deep" in entries["deep"].error  # type: ignore[operator]
    warnings = [r for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(warnings) == len(bad)  # once each, not once per listing
    for entry_id in bad:  # garbage anyone can remove
        assert lib.can_modify(entries[entry_id], "bob")
        lib.delete(entry_id, owner="bob")
    assert lib.ids() == ["good"]


def test_a_file_whose_data_is_cut_off_is_marked_unreadable_once_loading_fails(
    lib: Library,
) -> None:
    lib.save(make_vec("good"))
    write_raw_safetensors(  # a sound header; the data behind it is missing
        lib.root / "cut.safetensors",
        {
            "__metadata__": {"persona_explorer": ours()},
            "vectors": {"dtype": "F32", "shape": [6, 8], "data_offsets": [0, 192]},
        },
        data=bytes(100),
    )
    lib.entries()
    with pytest.raises(LibraryError, match="cannot be read"):
        lib.get("cut")
    cut = lib.entry("cut")
    assert cut.info is None and cut.error and lib.can_modify(cut, "anyone")
    lib.delete("cut", owner="anyone")
    assert lib.ids() == ["good"]


@pytest.mark.parametrize("exc", [RecursionError, MemoryError, KeyError, OSError])
def test_whatever_one_file_raises_it_stays_one_unreadable_entry(
    lib: Library, monkeypatch: pytest.MonkeyPatch, exc: type[BaseException]
) -> None:
    lib.save(make_vec("good"))
    lib.save(make_vec("bad"))
    real_read_info = vector_files.read_info

    def read_info(path: Path, *args: object, **kwargs: object) -> object:
        if Path(path).stem == "bad":
            raise exc("boom")
        return real_read_info(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(vector_files, "read_info", read_info)
    entries = {e.id: e for e in Library(lib.root).entries()}
    assert entries["good"].info is not None
    assert entries["bad"].info is None and entries["bad"].error


def test_listing_reads_headers_only(lib: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        lib.save(make_vec(f"v{i}", seed=i, layer=i + 1))

    def no_tensors(*args: object, **kwargs: object) -> None:
        raise AssertionError("the listing loaded a vector's tensors")

    monkeypatch.setattr(vector_files, "load", no_tensors)
    fresh = Library(lib.root)
    entries = fresh.entries()
    assert [e.id for e in entries] == ["v0", "v1", "v2"]
    for i, e in enumerate(entries):
        assert e.info is not None and e.error is None
        assert (e.info.n_layers, e.info.d_model, e.info.layer) == (6, 8, i + 1)
        assert e.info.model_id == "embedded:SmolLM2-135M-Instruct" and e.info.strength == 2.0
        assert e.size == e.path.stat().st_size
    assert fresh.find_by_name("V1") is not None and fresh.entry("v2").name == "v2"


def test_get_loads_on_use_and_keeps_recent_vectors(
    lib: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(40):
        lib.save(make_vec(f"v{i}", seed=i))
    calls: list[Path] = []
    real_load = vector_files.load

    def counting_load(path: Path, *args: object, **kwargs: object) -> PersonaVector:
        calls.append(Path(path))
        return real_load(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(vector_files, "load", counting_load)
    fresh = Library(lib.root)
    fresh.entries()
    assert calls == []
    first = fresh.get("v0")
    assert fresh.get("v0") is first and len(calls) == 1
    vector_files.save(make_vec("v0", seed=99), fresh.root / "v0.safetensors")
    assert torch.equal(fresh.get("v0").vectors, make_vec(seed=99).vectors) and len(calls) == 2
    for i in range(40):
        fresh.get(f"v{i}")
    assert len(fresh._loaded) == 32  # bounded
    fresh.delete("v39")
    assert len(fresh._loaded) == 31


# --------------------------------------------------------------------------- ownership


def test_only_the_saver_can_rename_or_delete(lib: Library) -> None:
    lib.save(make_vec("mine"), owner="alice-token")
    entry = lib.entry("mine")
    assert lib.can_modify(entry, "alice-token") and not lib.can_modify(entry, "bob-token")
    with pytest.raises(LibraryError, match="Only the browser that saved"):
        lib.rename("mine", "stolen", owner="bob-token")
    with pytest.raises(LibraryError, match="Only the browser that saved"):
        lib.delete("mine", owner="bob-token")
    assert lib.ids() == ["mine"]
    renamed = lib.rename("mine", "still mine", owner="alice-token")
    assert renamed.owner == entry.owner == lib.entry("still-mine").owner  # kept by a rename
    lib.delete("still-mine", owner="alice-token")
    assert lib.ids() == []


def test_the_owner_is_stored_as_a_hash_never_the_token(lib: Library) -> None:
    token = "s3cret-visitor-token-0123456789"
    lib.save(make_vec("mine"), owner=token)
    entry = lib.entry("mine")
    assert entry.owner is not None and len(entry.owner) == 32 and token not in entry.owner
    assert token.encode() not in entry.path.read_bytes()
    assert lib.get("mine").metadata["owner"] == entry.owner


def test_a_copied_owner_hash_is_replaced_by_the_savers(lib: Library) -> None:
    lib.save(make_vec("original"), owner="alice")
    alices = lib.entry("original").owner
    copy = make_vec("copy", metadata={"owner": alices})  # e.g. a downloaded file uploaded again
    lib.save(copy, owner="bob")
    assert lib.entry("copy").owner not in (None, alices)
    assert not lib.can_modify(lib.entry("copy"), "alice")
    lib.save(copy, name="admin copy")
    assert lib.entry("admin-copy").owner is None


def test_the_administrator_and_unowned_entries(lib: Library) -> None:
    lib.save(make_vec("shared"))  # CLI / admin: no owner
    lib.save(make_vec("alices"), owner="alice")
    shared = lib.entry("shared")
    assert shared.owner is None
    assert not lib.can_modify(shared, "alice")  # no visitor may touch an unowned vector
    with pytest.raises(LibraryError, match="Only the browser"):
        lib.delete("shared", owner="alice")
    assert lib.can_modify(shared, None) and lib.can_modify(lib.entry("alices"), None)
    lib.rename("alices", "moderated")  # the administrator may modify every entry
    lib.delete("moderated")
    lib.delete("shared")
    assert lib.ids() == []


@pytest.mark.parametrize("owner", ["", 5])
def test_a_missing_owner_token_is_refused(lib: Library, owner: object) -> None:
    with pytest.raises(LibraryError, match="no id"):
        lib.save(make_vec(), owner=owner)  # type: ignore[arg-type]
    lib.save(make_vec())
    with pytest.raises(LibraryError, match="no id"):
        lib.delete("pirate", owner=owner)  # type: ignore[arg-type]
    assert not lib.can_modify(lib.entry("pirate"), owner)  # type: ignore[arg-type]


def test_read_only_library_refuses_even_garbage_deletion(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    (root / "garbage.safetensors").write_bytes(b"junk")
    ro = Library(root, read_only=True)
    [entry] = ro.entries()
    assert entry.info is None and not ro.can_modify(entry, "anyone")
    with pytest.raises(LibraryError, match="read-only"):
        ro.delete("garbage", owner="anyone")
    with pytest.raises(LibraryError, match="read-only"):
        ro.delete("garbage")
    assert not (root / ".lock").exists()


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("evil\u202egpj.exe", "evilgpj.exe"),  # right-to-left override
        ("\u2066isolated\u2069 \u200fmark\u200e \u061calm", "isolated mark alm"),
        ("zero\u200bwidth\u200c\u200d\u2060\ufeff", "zerowidth"),
        ("ctl\x00\x07\x1b[31mred\x7f", "ctl[31mred"),
        ("  tab\tand\nnew\r\nline  ", "tab and new line"),
        ("a \u200b b", "a b"),
        ("Cafe\u0301", "Café"),
    ],
)
def test_names_lose_invisible_and_control_characters(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


def test_saved_names_and_descriptions_are_clean(lib: Library) -> None:
    vec = make_vec("pi\u202erate\u200b", metadata={"description": "\u202e" + "long " * 400})
    lib.save(vec)
    got = lib.get("pirate")
    assert got.name == "pirate"
    description = got.metadata["description"]
    assert len(description) <= MAX_DESCRIPTION_CHARS and "\u202e" not in description


def test_names_in_files_written_by_others_are_shown_clean(lib: Library) -> None:
    vector_files.save(make_vec("sneaky\u202e\u200bname"), lib.root / "sneaky.safetensors")
    assert [e.name for e in lib.entries()] == ["sneakyname"]


# --------------------------------------------------------------------------- concurrency


def test_two_libraries_and_a_second_process_saving_at_once_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    script = (
        "import sys, torch\n"
        "from persona_explorer.vectors.library import Library\n"
        "from persona_explorer.vectors.persona_vector import PersonaVector\n"
        "lib = Library(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "for i in range(50, 100):\n"
        "    v = torch.full((6, 8), float(i))\n"
        "    lib.save(PersonaVector(name='same', vectors=v, metadata={'seed': i}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    other = subprocess.Popen(
        [sys.executable, "-c", script, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == "ready"
        libs = [Library(root), Library(root)]

        def worker(t: int) -> None:
            for i in range(t * 5, t * 5 + 5):
                v = torch.full((6, 8), float(i))
                libs[t % 2].save(PersonaVector(name="same", vectors=v, metadata={"seed": i}))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(10)]
        other.stdin.write("go\n")
        other.stdin.flush()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert other.wait(timeout=120) == 0
    finally:
        if other.poll() is None:
            other.kill()
    entries = Library(root).entries()
    assert len(entries) == 100 and len({e.id for e in entries}) == 100
    seeds = sorted(e.info.metadata["seed"] for e in entries if e.info is not None)
    assert seeds == list(range(100))
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
