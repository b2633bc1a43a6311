"""The compiled CPU kernels against plain references, and the compact weight copies.

References are independent of the kernel: gguf's own numpy dequantizer for the GGUF blocks, torch
for the 16-bit formats, float64 matmuls for the products, and the element-wise ops as the fast
decoder wrote them in torch before they were compiled.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from persona_explorer.core.cpu import cpu_flags, read_cpuinfo
from persona_explorer.engine import compact, kernels
from persona_explorer.engine.fast_llama import FastLlamaDecoder, _decode_attention, _rotate_half
from persona_explorer.engine.kernels import BLOCK_BYTES, Matrix, WeightFormat
from persona_explorer.engine.model import LoadedModel, model_from_hf
from persona_explorer.steering.generation import left_pad
from tests.tiny_models import (
    bridge_resids,
    build_hf_model,
    build_tiny,
    build_tokenizer,
    with_decoder,
)

pytestmark = pytest.mark.usefixtures("one_thread")

GGUF_TYPES = {
    WeightFormat.Q4_1: gguf.GGMLQuantizationType.Q4_1,
    WeightFormat.Q8_0: gguf.GGMLQuantizationType.Q8_0,
}


@pytest.fixture(scope="module")
def ops():
    module = kernels.load(True)
    if module is None:
        pytest.skip("no compiler or no AVX2: the kernel falls back (tested below)")
    return module


def random_blocks(fmt: WeightFormat, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random codes with realistic fp16 scales (and minimums): every bit pattern of the codes."""
    rng = np.random.default_rng(seed)
    n = cols // 32
    raw = rng.integers(0, 256, (rows, n, BLOCK_BYTES[fmt]), dtype=np.uint8)
    raw[:, :, 0:2] = (
        (rng.standard_normal((rows, n)) * 0.02).astype(np.float16)[..., None].view(np.uint8)
    )
    if fmt == WeightFormat.Q4_1:
        raw[:, :, 2:4] = (
            (rng.standard_normal((rows, n)) * 0.1).astype(np.float16)[..., None].view(np.uint8)
        )
    return raw.reshape(rows, n * BLOCK_BYTES[fmt])


def reference_product(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (x.double() @ weights.double().T).float()


def assert_close_product(got: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> None:
    want = reference_product(x, weights)
    # Only the order of summation differs: bounded by K * eps * sum |w x|.
    bound = (x.abs().double() @ weights.abs().double().T).float() * 2e-6 * 4
    assert ((got - want).abs() <= bound + 1e-30).all()


@pytest.mark.parametrize("fmt", [WeightFormat.Q4_1, WeightFormat.Q8_0])
@pytest.mark.parametrize(("rows", "cols"), [(1, 32), (7, 96), (65, 576), (3, 1536)])
def test_block_kernel_matches_dequantize_then_matmul(
    ops, fmt: WeightFormat, rows: int, cols: int
) -> None:
    raw = random_blocks(fmt, rows, cols, seed=rows * cols)
    reference = torch.from_numpy(gguf.quants.dequantize(raw, GGUF_TYPES[fmt]).copy())
    stored = Matrix(torch.from_numpy(raw), fmt, cols)
    repacked = kernels.repack(stored)
    assert (
        repacked.fmt
        == {WeightFormat.Q4_1: WeightFormat.Q4_1X, WeightFormat.Q8_0: WeightFormat.Q8_0X}[fmt]
    )
    for mat in (stored, repacked):
        # The same numbers as gguf's dequantizer (the one transformers uses), bit for bit.
        assert torch.equal(kernels.dequantize(ops, mat), reference)
        for batch in (1, 2, 3, 4):
            x = torch.randn(batch, cols)
            assert_close_product(kernels.Group(ops, [mat])(x), x, reference)
    # Both layouts sum in the same order: identical products.
    x = torch.randn(2, cols)
    assert torch.equal(kernels.Group(ops, [stored])(x), kernels.Group(ops, [repacked])(x))


@pytest.mark.parametrize(
    ("fmt", "dtype"),
    [
        (WeightFormat.F32, torch.float32),
        (WeightFormat.BF16, torch.bfloat16),
        (WeightFormat.F16, torch.float16),
    ],
)
@pytest.mark.parametrize(("rows", "cols"), [(5, 37), (33, 64), (2, 200)])
def test_plain_kernel_reads_16_bit_rows_exactly(
    ops, fmt: WeightFormat, dtype: torch.dtype, rows: int, cols: int
) -> None:
    weights = torch.randn(rows, cols).to(dtype)
    data = weights if dtype == torch.float32 else weights.view(torch.int16)
    mat = Matrix(data.contiguous(), fmt, cols)
    assert torch.equal(kernels.dequantize(ops, mat), weights.float())
    for batch in (1, 2, 3, 4):
        x = torch.randn(batch, cols)
        assert_close_product(kernels.Group(ops, [mat])(x), x, weights.float())


def test_grouped_matrices_identical_rows_and_the_fused_residual(ops) -> None:
    q4 = Matrix(torch.from_numpy(random_blocks(WeightFormat.Q4_1, 9, 64, 1)), WeightFormat.Q4_1, 64)
    q8 = Matrix(torch.from_numpy(random_blocks(WeightFormat.Q8_0, 4, 64, 2)), WeightFormat.Q8_0, 64)
    f32 = kernels.plain(torch.randn(3, 64))
    x = torch.randn(1, 64).repeat(4, 1)
    out = kernels.Group(ops, [q4, q8, f32])(x)
    assert out.shape == (4, 16)
    # Identical input rows give bit-identical outputs: a strength-0 row equals the baseline.
    assert all(torch.equal(out[0], out[i]) for i in range(1, 4))
    whole = torch.cat([kernels.dequantize(ops, m) for m in (q4, q8, f32)])
    assert_close_product(out, x, whole)
    residual = torch.randn(4, 16)
    assert torch.equal(kernels.Group(ops, [q4, q8, f32])(x, residual), out + residual)


def test_elementwise_ops_match_torch(ops) -> None:
    x = torch.randn(3, 5, 64) * 3
    w = torch.randn(64)
    xf = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert torch.allclose(ops.rms_norm(x, w, 1e-5), w * xf, rtol=1e-5, atol=1e-6)

    heads, kv, dim = 4, 2, 16
    qkv = torch.randn(7, (heads + 2 * kv) * dim)
    cos, sin = torch.randn(7, dim), torch.randn(7, dim)
    want = qkv.clone()
    for h in range(heads + kv):
        part = want[:, h * dim : (h + 1) * dim]
        part.copy_(part * cos + _rotate_half(part) * sin)
    ops.rope_(qkv, cos, sin, heads + kv, dim)
    assert torch.equal(qkv, want)  # same arithmetic, no contraction

    gate_up = torch.randn(3, 2 * 37) * 4
    gate, up = gate_up.split(37, -1)
    assert torch.allclose(ops.silu_mul(gate_up), F.silu(gate) * up, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (2, 9), (4, 70)])
def test_decode_attention_matches_the_torch_step(ops, batch: int, length: int) -> None:
    heads, kv, dim, total = 6, 2, 32, 80
    torch.manual_seed(length)
    kcache = torch.randn(batch, kv, total, dim)
    vcache = torch.randn(batch, kv, total, dim)
    valid = torch.zeros(batch, total, dtype=torch.bool)
    valid[:, :length] = True
    valid[0, : length // 2] = False  # left padding on one row
    valid[:, length - 1] = True
    qkv = torch.randn(batch, (heads + 2 * kv) * dim)
    cos, sin = torch.randn(batch, dim), torch.randn(batch, dim)
    # Reference: the torch path of the decoder's step.
    q, k, v = qkv.clone().split([heads * dim, kv * dim, kv * dim], -1)
    q = q.view(batch, 1, heads, dim).transpose(1, 2)
    k = k.reshape(batch, 1, kv, dim).transpose(1, 2)
    c, s = cos[:, None, None], sin[:, None, None]
    q = q * c + _rotate_half(q) * s
    k = k * c + _rotate_half(k) * s
    kref, vref = kcache.clone(), vcache.clone()
    kref[:, :, length - 1] = k[:, :, 0]
    vref[:, :, length - 1] = v.reshape(batch, kv, dim)
    mask = valid[:, None, None, :length]
    want = _decode_attention(q, kref[:, :, :length], vref[:, :, :length], mask, dim**-0.5)
    got = ops.decode_attention(
        qkv, cos, sin, kcache, vcache, valid, length - 1, heads, kv, dim**-0.5
    )
    assert torch.equal(kcache, kref) and torch.equal(vcache, vref)
    assert torch.allclose(got, want.reshape(batch, heads * dim), rtol=1e-5, atol=1e-5)
    # Identical rows stay identical.
    same = ops.decode_attention(
        qkv[:1].repeat(3, 1),
        cos[:1].repeat(3, 1),
        sin[:1].repeat(3, 1),
        kcache[:1].repeat(3, 1, 1, 1),
        vcache[:1].repeat(3, 1, 1, 1),
        valid[:1].repeat(3, 1),
        length - 1,
        heads,
        kv,
        dim**-0.5,
    )
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])


def half_width_copy(dtype: torch.dtype) -> LoadedModel:
    """A tiny Llama whose fp32 weights are exactly bf16/fp16 values (a half-width checkpoint)."""
    hf = build_hf_model("llama", seed=0)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.to(dtype).float())
    return model_from_hf(hf, build_tokenizer(), f"tiny-{dtype}")


@pytest.mark.parametrize(("dtype", "fmt"), [(torch.bfloat16, "BF16"), (torch.float16, "F16")])
def test_half_width_checkpoints_decode_from_16_bit_copies(ops, dtype, fmt: str) -> None:
    model = half_width_copy(dtype)
    dec = FastLlamaDecoder(model)
    assert dec.kernel == f"{kernels.best_isa()}-gemv ({fmt})"
    fp32_bytes = sum(w.numel() * 4 for k, w in model.weights.items() if k.endswith("proj.weight"))
    assert dec.step_weight_bytes < 0.55 * (fp32_bytes + model.weights["lm_head.weight"].numel() * 4)
    # Decoding steps agree with the bridge over prompt + generated tokens.
    prompt = model.chat_ids("Hello there, how are you?")
    ids, mask = left_pad([prompt], model.pad_token_id)
    session = dec.session(ids, mask, 6)
    seen: list[torch.Tensor] = []
    tokens = list(prompt)
    with torch.inference_mode():
        tok = session.prefill().argmax(-1)
        for _ in range(5):
            tokens.append(int(tok))
            tok = session.step(tok, lambda i, h: seen.append(h[0, -1].clone()) or h).argmax(-1)
    _, ref = bridge_resids(model, tokens)
    n_layers = model.n_layers
    for step in range(5):
        for layer in range(n_layers):
            want = ref[layer][len(prompt) + step]
            got = seen[step * (n_layers + 1) + layer + 1]
            assert (got - want).abs().max() <= 1e-4 * want.abs().max(), (step, layer)


def test_a_copy_that_does_not_match_is_dropped(ops, caplog: pytest.LogCaptureFixture) -> None:
    weight = torch.randn(8, 64)
    wrong = Matrix(
        torch.from_numpy(random_blocks(WeightFormat.Q8_0, 8, 64, 5)), WeightFormat.Q8_0, 64
    )
    with caplog.at_level(logging.WARNING):
        mats = compact.compact_matrices(ops, {"w": weight}, ["w"], {"w": wrong})
    assert mats["w"].fmt == WeightFormat.F32 and mats["w"].data is weight
    assert "did not match" in caplog.text


def test_without_the_kernel_everything_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "unsupported_reason", lambda: "the CPU does not report F16C")
    assert kernels.load(True) is None
    model = with_decoder(build_tiny("llama"), "fast")
    dec = FastLlamaDecoder(model)
    assert dec.kernel == "onednn" and dec.ops is None
    prompt = model.chat_ids("Hello there")
    ids, mask = left_pad([prompt, prompt], model.pad_token_id)
    session = dec.session(ids, mask, 3)
    with torch.inference_mode():
        tok = session.prefill().argmax(-1)
        out = session.step(tok)
    assert torch.equal(out[0], out[1]) and torch.isfinite(out).all()


def test_stored_blocks_round_trip_and_odd_entries_are_ignored(tmp_path) -> None:
    from safetensors.torch import save_file

    from persona_explorer.engine.gguf_blocks import (
        BLOCK_FILE,
        QuantizedWeight,
        load_blocks,
        save_blocks,
    )

    embed = QuantizedWeight(torch.from_numpy(random_blocks(WeightFormat.Q8_0, 6, 64, 3)), "Q8_0")
    down = QuantizedWeight(torch.from_numpy(random_blocks(WeightFormat.Q4_1, 4, 96, 4)), "Q4_1")
    blocks = {"model.embed_tokens.weight": embed, "model.layers.0.mlp.down_proj.weight": down}
    save_blocks(tmp_path, blocks)
    loaded = load_blocks(tmp_path, tied_embeddings=True)
    assert set(loaded) == {*blocks, "lm_head.weight"}
    assert loaded["lm_head.weight"] is loaded["model.embed_tokens.weight"]
    assert torch.equal(loaded["model.layers.0.mlp.down_proj.weight"].data, down.data)
    assert loaded["model.layers.0.mlp.down_proj.weight"].in_features == 96
    # A file someone else wrote: unknown kinds, wrong dtypes and shapes are skipped, not used.
    save_file(
        {
            "a": torch.zeros(4, 20, dtype=torch.uint8),
            "b": torch.zeros(4, 5),
            "c": torch.zeros(3, dtype=torch.uint8),
        },
        str(tmp_path / BLOCK_FILE),
        metadata={"a": "Q9_9", "b": "Q8_0", "c": "Q4_1"},
    )
    assert load_blocks(tmp_path, tied_embeddings=False) == {}
    assert load_blocks(tmp_path / "missing", tied_embeddings=False) == {}
    # Rows that are not whole blocks are not blocks.
    save_file(
        {"d": torch.zeros(4, 25, dtype=torch.uint8)}, str(tmp_path / BLOCK_FILE), {"d": "Q4_1"}
    )
    assert load_blocks(tmp_path, tied_embeddings=False) == {}


def test_16_bit_copies_only_where_memory_allows(ops) -> None:
    weights = {"a": torch.randn(64, 64).to(torch.bfloat16).float(), "b": torch.randn(64, 64)}
    roomy = compact.compact_matrices(ops, weights, ["a", "b"], {}, free_bytes=1 << 30)
    assert (roomy["a"].fmt, roomy["b"].fmt) == (WeightFormat.BF16, WeightFormat.F32)
    assert torch.equal(kernels.dequantize(ops, roomy["a"]), weights["a"])
    tight = compact.compact_matrices(ops, weights, ["a", "b"], {}, free_bytes=64 * 64 * 2)
    assert tight["a"].fmt == WeightFormat.F32 and tight["a"].data is weights["a"]


def test_decoding_steps_of_big_batches_use_the_packed_products(ops) -> None:
    """More rows than the matrix-vector kernel takes: the step runs per op (oneDNN products,
    compiled attention) and identical rows still agree bit for bit."""
    model = with_decoder(build_tiny("llama"), "fast")
    dec = FastLlamaDecoder(model)
    prompt = model.chat_ids("Hello there")
    rows = kernels.MAX_ROWS + 3
    ids, mask = left_pad([prompt] * rows, model.pad_token_id)
    session = dec.session(ids, mask, 4)
    with torch.inference_mode():
        tok = session.prefill().argmax(-1)
        for _ in range(3):
            logits = session.step(tok)
            tok = logits.argmax(-1)
    assert all(torch.equal(logits[0], logits[i]) for i in range(1, rows))


# --------------------------------------------------------------------------- the CPU check

CPUINFO = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("name", ["cpuinfo_epyc_avx2.txt", "cpuinfo_xeon_avx512_amx.txt"])
def test_the_kernel_runs_on_both_kinds_of_machine(name: str) -> None:
    assert kernels.unsupported_reason((CPUINFO / name).read_text()) is None


@pytest.mark.parametrize(
    ("drop", "named"),
    [({"f16c"}, "F16C"), ({"fma"}, "FMA"), ({"avx2", "fma", "f16c"}, "AVX2, FMA, F16C")],
)
def test_a_cpu_without_the_extensions_is_refused(drop: set[str], named: str) -> None:
    text = (CPUINFO / "cpuinfo_epyc_avx2.txt").read_text()
    flags_line = next(line for line in text.splitlines() if line.startswith("flags"))
    kept = " ".join(f for f in flags_line.split(":", 1)[1].split() if f not in drop)
    reason = kernels.unsupported_reason(text.replace(flags_line, f"flags\t\t: {kept}"))
    assert reason == f"the CPU does not report {named}"


def test_without_cpu_flags_torch_decides() -> None:
    assert kernels.unsupported_reason("processor : 0\n", capability="AVX512") is None
    assert "no AVX2" in (kernels.unsupported_reason("", capability="DEFAULT") or "")


def test_a_refusing_check_keeps_the_kernel_from_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    epyc = (CPUINFO / "cpuinfo_epyc_avx2.txt").read_text()
    no_avx2 = epyc.replace(" avx2 ", " ")
    monkeypatch.setattr(kernels, "read_cpuinfo", lambda: no_avx2)
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_module", None)

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled on a CPU without AVX2")

    monkeypatch.setattr("torch.utils.cpp_extension.load_inline", no_build)
    assert kernels.load(True) is None


def test_one_table_of_block_sizes_and_it_matches_gguf() -> None:
    from persona_explorer.engine import gguf_blocks

    for kind, size in gguf_blocks.KINDS.items():
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
        assert (block, type_size) == (kernels.BLOCK, size)
        assert BLOCK_BYTES[WeightFormat[kind]] == size


# --------------------------------------------------------------------------- AVX-512 and AVX2


def test_best_isa_reads_the_cpu_flags() -> None:
    assert kernels.best_isa((CPUINFO / "cpuinfo_xeon_avx512_amx.txt").read_text()) == "avx512"
    assert kernels.best_isa((CPUINFO / "cpuinfo_epyc_avx2.txt").read_text()) == "avx2"


@pytest.mark.parametrize(
    "fmt",
    [WeightFormat.Q4_1, WeightFormat.Q8_0, WeightFormat.F32, WeightFormat.BF16, WeightFormat.F16],
)
def test_both_isas_give_every_row_the_same_bits_in_any_batch(ops, fmt: WeightFormat) -> None:
    """The AVX-512 products hold two AVX2 accumulators per register: same sums, bit for bit,
    for any number of rows (a visitor's answer cannot depend on the machine's ISA within a
    run, nor on how many visitors share the step)."""
    if "avx512f" not in (cpu_flags(read_cpuinfo()) or set()):
        pytest.skip("this CPU has no AVX-512F")
    gen = torch.Generator().manual_seed(3)
    cols = 576 if fmt in BLOCK_BYTES else 70  # a plain row with a tail after its last 32
    if fmt in BLOCK_BYTES:
        mats = [Matrix(torch.from_numpy(random_blocks(fmt, 37, cols, 1)), fmt, cols)]
        mats.append(kernels.repack(mats[0]))
    else:
        w = torch.randn(37, cols, generator=gen)
        data = {
            WeightFormat.F32: w,
            WeightFormat.BF16: w.to(torch.bfloat16).view(torch.int16),
            WeightFormat.F16: w.to(torch.float16).view(torch.int16),
        }[fmt]
        mats = [Matrix(data.contiguous(), fmt, cols)]
    x = torch.randn(19, cols, generator=gen)
    before = kernels.isa_of(ops)
    try:
        for mat in mats:
            group = kernels.Group(ops, [mat])
            kernels.use_isa(ops, "avx2")
            alone = torch.cat([group(x[i : i + 1]) for i in range(len(x))])
            for rows in (1, 2, 3, 8, 9, 19):
                for isa in kernels.ISAS:
                    kernels.use_isa(ops, isa)
                    assert torch.equal(group(x[:rows]), alone[:rows]), (mat.fmt, isa, rows)
    finally:
        kernels.use_isa(ops, before)
