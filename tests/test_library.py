"""The on-disk vector library: round trips, safe names, rename/delete, crashes, restarts."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from persona_explorer import vector_files
from persona_explorer.library import Library, LibraryError, clean_name, slugify
from persona_explorer.vectors import PersonaVector


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
    assert sorted(p.name for p in lib.root.iterdir()) == ["a.safetensors", "b.safetensors"]


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
    with pytest.raises(LibraryError):
        lib.get(bad_id)  # type: ignore[arg-type]
    with pytest.raises(LibraryError):
        lib.delete(bad_id)  # type: ignore[arg-type]
    with pytest.raises(LibraryError):
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


@pytest.mark.parametrize("name", ["", "   ", "x" * 81, 7])
def test_bad_names_are_refused(lib: Library, name: object) -> None:
    with pytest.raises(LibraryError):
        lib.save(make_vec(), name=name)  # type: ignore[arg-type]
    lib.save(make_vec())
    with pytest.raises(LibraryError):
        lib.rename("pirate", name)  # type: ignore[arg-type]


def test_delete(lib: Library) -> None:
    lib.save(make_vec("a"))
    lib.save(make_vec("b"))
    lib.delete("a")
    assert lib.ids() == ["b"]
    with pytest.raises(LibraryError):
        lib.delete("a")
    with pytest.raises(LibraryError):
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
    assert [p.name for p in lib.root.iterdir()] == ["pirate.safetensors"]


def test_stale_temp_files_are_ignored_and_swept(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    Library(root).save(make_vec("pirate"))
    stale = root / ".pirate.safetensors.abc123.tmp"
    stale.write_bytes(b"junk")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    fresh = root / ".other.safetensors.def456.tmp"
    fresh.write_bytes(b"junk")  # may belong to a save in progress: left alone
    lib = Library(root)
    assert lib.ids() == ["pirate"]
    assert not stale.exists() and fresh.exists()


def test_unreadable_files_are_listed_with_their_error(lib: Library) -> None:
    lib.save(make_vec("good"))
    (lib.root / "broken.safetensors").write_bytes(b"\x00not a safetensors file")
    entries = {e.id: e for e in lib.entries()}
    assert entries["good"].error is None
    assert entries["broken"].vector is None and entries["broken"].error
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
    with pytest.raises(LibraryError):
        ro.save(make_vec("x"))
    with pytest.raises(LibraryError):
        ro.rename("pirate", "x")
    with pytest.raises(LibraryError):
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

    def slow_read(self: Library, path: Path) -> object:
        nonlocal inside, peak
        with guard:
            inside += 1
            peak = max(peak, inside)
        time.sleep(0.01)
        try:
            return original(self, path)
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
