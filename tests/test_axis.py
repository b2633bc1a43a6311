"""The Assistant Axis: math on synthetic tensors, the file format, the build on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from persona_explorer.axis.assistant_axis import (
    QUANTILE_LEVELS,
    AxisData,
    AxisFileError,
    assistant_axis,
    check_percentile,
    default_axis_layer,
    default_cap_layers,
    normalised_projection,
    pc1_axis_cosine,
    pca,
    project,
    token_quantiles,
)
from persona_explorer.axis.build import (
    ASSETS_AXIS_DIR,
    CURATED_ROLES,
    EMBEDDED_AXIS_NAME,
    build_axis,
    shipped_axis_path,
)
from persona_explorer.cli import main
from persona_explorer.core.errors import InputError
from persona_explorer.engine.model import EMBEDDED_MODEL_ID, LoadedModel
from persona_explorer.personas.data import list_builtin
from persona_explorer.steering.ops import Cap

N_ROLES, N_LAYERS, D = 5, 4, 8


def _data(seed: int = 0) -> AxisData:
    g = torch.Generator().manual_seed(seed)
    roles = torch.randn(N_ROLES, N_LAYERS, D, generator=g)
    default = torch.randn(N_LAYERS, D, generator=g)
    tokens = torch.randn(50, N_LAYERS, generator=g)
    return AxisData(
        model_id="test",
        roles=tuple(f"r{i}" for i in range(N_ROLES)),
        role_vectors=roles,
        default_vector=default,
        axis=assistant_axis(default, roles),
        default_token_quantiles=token_quantiles(tokens),
        metadata={"note": "synthetic"},
    )


def test_axis_is_default_mean_minus_roles_mean() -> None:
    g = torch.Generator().manual_seed(1)
    roles = torch.randn(N_ROLES, N_LAYERS, D, generator=g)
    default = torch.randn(N_LAYERS, D, generator=g)
    assert torch.equal(assistant_axis(default, roles), default - roles.mean(0))


def test_normalised_projection_maps_roles_mean_to_zero_and_default_to_one() -> None:
    data = _data()
    roles_proj = project(data.role_vectors, data.axis)  # [n_roles, n_layers]
    default_proj = project(data.default_vector, data.axis)
    mean_proj = roles_proj.mean(0)
    norm = normalised_projection(torch.stack([mean_proj, default_proj]), mean_proj, default_proj)
    assert torch.allclose(norm[0], torch.zeros(N_LAYERS), atol=1e-5)
    assert torch.allclose(norm[1], torch.ones(N_LAYERS), atol=1e-5)


def test_pca_finds_a_planted_direction() -> None:
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(64, generator=g)
    direction /= direction.norm()
    data = torch.randn(200, 1, generator=g) * 10 * direction + 0.1 * torch.randn(
        200, 64, generator=g
    )
    comps, ratio, coords = pca(data, 3)
    assert comps.shape == (3, 64) and coords.shape == (200, 3)
    assert abs(float(comps[0] @ direction)) > 0.99
    assert float(ratio.sum()) <= 1 + 1e-6 and ratio[0] > 0.9
    roles = data.reshape(200, 1, 64)
    axis = (3 * direction).reshape(1, 64)
    assert float(pc1_axis_cosine(roles, axis)[0]) > 0.99
    assert float(pc1_axis_cosine(roles, -axis)[0]) > 0.99  # sign-invariant


def test_floors_match_quantile_and_are_monotone() -> None:
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(400, N_LAYERS, generator=g) * torch.arange(1, N_LAYERS + 1)
    data = AxisData(
        "t",
        ("a",),
        torch.zeros(1, N_LAYERS, D),
        torch.zeros(N_LAYERS, D),
        torch.zeros(N_LAYERS, D),
        token_quantiles(tokens),
    )
    # At the table's own levels (every 5th percentile) the floor is the quantile itself.
    for p in (0, 5, 25, 50, 95, 100):
        expected = torch.quantile(tokens.double(), p / 100, dim=0).float()
        assert torch.allclose(data.floors(p), expected, atol=1e-5)
    floors = torch.stack([data.floors(p) for p in range(0, 101, 3)])
    assert (floors[1:] >= floors[:-1] - 1e-6).all()


@pytest.mark.parametrize("n", [1, 2, 4, 12, 30, 64, 80])
def test_cap_window_is_inside_the_stack_and_starts_mid_way(n: int) -> None:
    window = default_cap_layers(n)
    assert window and all(0 <= layer < n for layer in window)
    assert list(window) == list(range(window[0], window[-1] + 1))
    assert len(window) == min(n, max(2, round(n / 8)))
    assert 0 <= default_axis_layer(n) < n
    assert default_cap_layers(30) == (15, 16, 17, 18)


def test_cap_plan_uses_the_axis_and_the_percentile_floor() -> None:
    data = _data()
    plan = data.cap_plan([1, 3], percentile=40)
    assert [op.layer for op in plan] == [1, 3]
    assert all(isinstance(op, Cap) for op in plan)
    floors = data.floors(40)
    for op in plan:
        assert torch.equal(op.direction, data.axis[op.layer])
        assert op.floor == pytest.approx(float(floors[op.layer]))
    assert [op.layer for op in data.cap_plan()] == list(default_cap_layers(N_LAYERS))
    for bad in ([], [N_LAYERS], [-1]):
        with pytest.raises(InputError):
            data.cap_plan(bad)


@pytest.mark.parametrize("bad", [float("nan"), -1, 100.5, "x", None, float("inf")])
def test_percentile_check_refuses_what_is_not_a_percentile(bad: object) -> None:
    with pytest.raises(InputError):
        check_percentile(bad)
    assert check_percentile("25") == 25.0


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    data = _data()
    path = data.save(tmp_path / "sub" / "axis.safetensors")
    back = AxisData.load(path)
    assert back.model_id == data.model_id and back.roles == data.roles
    assert back.metadata == data.metadata
    for name in ("role_vectors", "default_vector", "axis", "default_token_quantiles"):
        assert torch.equal(getattr(back, name), getattr(data, name))


def test_wrong_shapes_and_other_files_are_refused(tmp_path: Path) -> None:
    data = _data()
    header = {"format": "persona-explorer-axis", "roles": '["a"]', "model_id": "t"}
    bad = {
        "role_vectors": data.role_vectors,
        "default_vector": torch.zeros(N_LAYERS, D + 1),
        "axis": data.axis,
        "default_token_quantiles": data.default_token_quantiles,
    }
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=header)
    with pytest.raises(AxisFileError, match="shape"):
        AxisData.load(tmp_path / "bad.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(AxisFileError, match="not an axis file"):
        AxisData.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AxisFileError):
        AxisData.load(tmp_path / "junk.safetensors")
    with pytest.raises(AxisFileError):
        AxisData.load(tmp_path / "missing.safetensors")


def test_curated_roles_exist_and_are_distinct() -> None:
    assert len(CURATED_ROLES) >= 40 and len(set(CURATED_ROLES)) == len(CURATED_ROLES)
    assert set(CURATED_ROLES) <= set(list_builtin("role"))


def test_build_axis_on_tiny_model(llama: LoadedModel) -> None:
    seen: list[float] = []
    data = build_axis(
        llama,
        ["pirate", "doctor", "robot"],
        n_questions=2,
        max_new_tokens=4,
        prompts_per_role=2,
        progress=lambda f, _m: seen.append(f),
    )
    n, d = llama.n_layers, llama.d_model
    assert data.role_vectors.shape[1:] == (n, d) and 2 <= len(data.roles) <= 3
    assert data.axis.shape == data.default_vector.shape == (n, d)
    assert data.default_token_quantiles.shape == (len(QUANTILE_LEVELS), n)
    for t in (data.role_vectors, data.axis, data.default_token_quantiles):
        assert torch.isfinite(t).all()
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)


def test_shipped_asset_fits_the_embedded_model() -> None:
    path = ASSETS_AXIS_DIR / f"{EMBEDDED_AXIS_NAME}.safetensors"
    assert shipped_axis_path(EMBEDDED_MODEL_ID) == path
    data = AxisData.load(path)
    assert (data.n_layers, data.d_model) == (30, 576)
    assert len(data.roles) >= 40 and data.role_vectors.shape == (len(data.roles), 30, 576)
    assert torch.isfinite(data.axis).all() and (data.axis.norm(dim=-1) > 0).all()
    assert (data.floors(75) >= data.floors(25)).all()


def test_cli_axis_build_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["axis", "build", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--roles" in out and "--questions" in out and "--max-new-tokens" in out


def test_axis_for_builds_once_into_the_cache_never_into_assets(
    llama: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from persona_explorer.axis import build as axis_build

    roles = axis_build.CURATED_ROLES[:2]
    calls = []
    real_build = axis_build.build_axis

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real_build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(axis_build, "build_axis", counting)
    first = axis_build.axis_for(llama, tmp_path, roles=roles, n_questions=1, max_new_tokens=3)
    second = axis_build.axis_for(llama, tmp_path, roles=roles, n_questions=1, max_new_tokens=3)
    assert len(calls) == 1 and torch.equal(first.axis, second.axis)
    assert axis_build.axis_path(llama.model_id, tmp_path).is_file()
    assert axis_build.axis_path(llama.model_id, tmp_path).is_relative_to(tmp_path)
