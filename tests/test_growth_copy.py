"""Growth at the speed of the disk (issue 12): the planned writer's output is byte-identical to building every
tensor and saving each shard with `safetensors.torch.save_file` (the previous writer, kept here as the oracle);
unchanged tensors are copied (with or without `os.copy_file_range`), zeros are never built, memory does not grow
with the shard size, and a failure mid-write leaves nothing under the final name."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, LlamaConfig
from transformers.utils.hub import convert_file_size_to_int

import growlm.growth.safetensors_io as io
from growlm.growth.grow import DTYPES, grow_checkpoint, write_weights
from growlm.growth.operators import GrowthOptions, plan_growth
from growlm.growth.safetensors_io import INDEX_FILE, LazySafetensorsReader, OutputTensor, write_safetensors
from growlm.growth.types import Copy, Zeros
from tests.conftest import REPO_ROOT, save_tiny_llama, tiny_llama


def reference_weights(src: Path, out: Path, options: GrowthOptions, *, dtype: str | None, shard_size) -> None:
    """The previous writer: build every target tensor, cast, buffer up to `shard_size` and `save_file` each shard."""
    reader = LazySafetensorsReader(src)
    plan = plan_growth(AutoConfig.from_pretrained(src), reader.names, options)
    limit = convert_file_size_to_int(shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, build in plan.tensors.items():
        tensor = build(reader.get_tensor)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(DTYPES[dtype])
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    out.mkdir()
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for k, shard in enumerate(shards, start=1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    tensors = [t for shard in shards for t in shard.values()]
    index = {"metadata": {"total_parameters": sum(t.numel() for t in tensors),
                          "total_size": sum(t.numel() * t.element_size() for t in tensors)},
             "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def new_weights(src: Path, out: Path, options: GrowthOptions, *, dtype: str | None, shard_size) -> None:
    with LazySafetensorsReader(src) as reader:
        plan = plan_growth(AutoConfig.from_pretrained(src), reader.names, options)
        out.mkdir()
        write_weights(plan, reader, out, dtype=DTYPES.get(dtype), max_shard_size=shard_size)


def assert_same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def mixed_dtype_source(path: Path) -> Path:
    """bf16 weights with float32 norm gains (a source with two dtypes)."""
    model = tiny_llama()
    state = {k: (v if "norm" in k else v.to(torch.bfloat16)).contiguous() for k, v in model.state_dict().items()}
    model.config.save_pretrained(path)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


SOURCES = {
    "fp32-gqa": dict(), "bf16": dict(dtype=torch.bfloat16), "mha-bias": dict(gqa=False, bias=True),
    "tied": dict(tied=True), "bias-bf16": dict(bias=True, dtype=torch.bfloat16),
}
CASES = [  # (source, options, dtype, shard size)
    ("fp32-gqa", dict(depth_op="stack", g=2), None, "2GB"),
    ("fp32-gqa", dict(depth_op="stack", layer_map=[2, 0, 1, 1, 0, 2], num_layers=6), None, 60_000),
    ("bf16", dict(depth_op="stack", g=3), None, 30_000),
    ("bf16", dict(depth_op="zero", g=2), None, 50_000),
    ("mha-bias", dict(depth_op="zero", g=2), None, "2GB"),
    ("mha-bias", dict(depth_op="stack", g=2, noise_alpha=0.2), None, 40_000),
    ("tied", dict(depth_op="stack", g=2), None, "2GB"),
    ("tied", dict(depth_op="stack", g=2, tie_word_embeddings=False), None, 40_000),
    ("fp32-gqa", dict(depth_op="zero", g=2), "bfloat16", 30_000),
    ("bf16", dict(depth_op="stack", g=2), "bfloat16", "2GB"),
    ("bf16", dict(depth_op="stack", g=2), "float32", 70_000),
    ("fp32-gqa", dict(width_op="split", hidden_size=96, intermediate_size=256), None, 50_000),
    ("bf16", dict(width_op="zero", hidden_size=128, num_attention_heads=8, num_key_value_heads=4,
                  depth_op="zero", g=2), None, 60_000),
    ("fp32-gqa", dict(width_op="split", hidden_size=128, depth_op="stack", g=2, noise_alpha=0.1), "float16", "2GB"),
    ("mixed", dict(depth_op="stack", g=2), None, 40_000),
    ("mixed", dict(depth_op="zero", g=2, width_op="split", hidden_size=96), None, "2GB"),
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    folders = {name: save_tiny_llama(root / name, **kwargs) for name, kwargs in SOURCES.items()}
    sharded = folders["fp32-gqa"]  # re-save sharded: several input files
    model = tiny_llama()
    for f in sharded.glob("*.safetensors"):
        f.unlink()
    model.save_pretrained(sharded, max_shard_size="60KB")
    assert (sharded / INDEX_FILE).is_file()
    (root / "mixed").mkdir()
    folders["mixed"] = mixed_dtype_source(root / "mixed")
    return folders


@pytest.mark.parametrize(("source", "options", "dtype", "shard_size"), CASES)
def test_byte_identical_to_the_previous_writer(sources, tmp_path, source, options, dtype, shard_size):
    reference_weights(sources[source], tmp_path / "old", GrowthOptions(**options), dtype=dtype, shard_size=shard_size)
    new_weights(sources[source], tmp_path / "new", GrowthOptions(**options), dtype=dtype, shard_size=shard_size)
    assert_same_files(tmp_path / "old", tmp_path / "new")


def test_header_matches_save_file_for_every_dtype(tmp_path):
    tensors = {f"t{i}": torch.ones(3, 2).to(dtype) for i, (dtype, _) in enumerate(io._DTYPES.values())}
    tensors.update({"a": torch.zeros(0), "é": torch.ones(5)})
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    header, _ = io.safetensors_header([OutputTensor(n, t.dtype, tuple(t.shape), lambda: None)
                                       for n, t in tensors.items()])
    assert (tmp_path / "ref.safetensors").read_bytes().startswith(header)


def test_plan_marks_copies_and_zeros(sources):
    config = AutoConfig.from_pretrained(sources["bf16"])
    plan = plan_growth(config, LazySafetensorsReader(sources["bf16"]).names, GrowthOptions(depth_op="zero", g=2))
    assert plan.tensors["model.layers.4.self_attn.q_proj.weight"] == Copy("model.layers.2.self_attn.q_proj.weight")
    assert isinstance(plan.tensors["model.layers.5.mlp.down_proj.weight"], Zeros)
    assert plan.tensors["lm_head.weight"] == Copy("lm_head.weight")


def test_zero_tensors_are_written_without_building(sources, tmp_path, monkeypatch):
    def no_build(self, get):
        raise AssertionError("a Zeros tensor was built")

    monkeypatch.setattr(Zeros, "__call__", no_build)
    new_weights(sources["bf16"], tmp_path / "out", GrowthOptions(depth_op="zero", g=2), dtype=None, shard_size="2GB")
    with LazySafetensorsReader(tmp_path / "out") as reader:
        for layer in (1, 3, 5):  # interpolate map [0, 0, 1, 1, 2, 2]: later copies are zeroed
            for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
                tensor = reader.get_tensor(f"model.layers.{layer}.{name}")
                assert tensor.dtype == torch.bfloat16 and not tensor.any()
        assert reader.get_tensor("model.layers.2.self_attn.o_proj.weight").any()


def test_tensors_are_built_on_one_thread_and_the_setting_is_restored(sources, tmp_path):
    """Row-block builders run on one torch thread (a second one cost 8x the CPU time on a busy machine)."""
    seen = set()

    def spy(build):
        return lambda get: seen.add(torch.get_num_threads()) or build(get)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with LazySafetensorsReader(sources["bf16"]) as reader:
            plan = plan_growth(AutoConfig.from_pretrained(sources["bf16"]), reader.names,
                               GrowthOptions(width_op="split", hidden_size=96))
            plan.tensors = {name: spy(build) for name, build in plan.tensors.items()}
            (tmp_path / "out").mkdir()
            write_weights(plan, reader, tmp_path / "out", dtype=None, max_shard_size="2GB")
        assert seen == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("failure", ["missing", "EXDEV", "ENOSYS"])
def test_buffered_copy_when_copy_file_range_is_unavailable(sources, tmp_path, monkeypatch, failure):
    if failure == "missing":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    else:
        def refuse(*args, **kwargs):
            raise OSError(getattr(errno, failure), os.strerror(getattr(errno, failure)))

        monkeypatch.setattr(os, "copy_file_range", refuse)
    options = GrowthOptions(depth_op="stack", g=2)
    reference_weights(sources["fp32-gqa"], tmp_path / "old", options, dtype=None, shard_size=60_000)
    new_weights(sources["fp32-gqa"], tmp_path / "new", options, dtype=None, shard_size=60_000)
    assert_same_files(tmp_path / "old", tmp_path / "new")


def test_kernel_copy_error_is_not_swallowed(sources, tmp_path, monkeypatch):
    def io_error(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "copy_file_range", io_error)
    with pytest.raises(OSError, match="Input/output error"):
        new_weights(sources["bf16"], tmp_path / "new", GrowthOptions(depth_op="stack", g=2), dtype=None,
                    shard_size="2GB")


def test_crash_mid_write_leaves_nothing(sources, tmp_path, monkeypatch):
    copies = []
    real_copy = io.RangeCopier.copy

    def crash_after_some(self, where, fd):
        copies.append(where)
        if len(copies) == 20:
            raise KeyboardInterrupt  # a kill mid-write: not even an Exception
        real_copy(self, where, fd)

    monkeypatch.setattr(io.RangeCopier, "copy", crash_after_some)
    with pytest.raises(KeyboardInterrupt):
        grow_checkpoint(sources["fp32-gqa"], tmp_path / "out", GrowthOptions(depth_op="stack", g=2),
                        max_shard_size=60_000)
    assert len(copies) == 20 and list(tmp_path.iterdir()) == []


def test_truncated_source_is_refused_before_writing(sources, tmp_path):
    src = tmp_path / "src"
    save_tiny_llama(src)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        grow_checkpoint(src, tmp_path / "out", GrowthOptions(depth_op="stack", g=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


RSS_CHILD = textwrap.dedent("""
    import json, resource, sys
    from growlm.growth.grow import grow_checkpoint
    from growlm.growth.operators import GrowthOptions
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grow_checkpoint(sys.argv[1], sys.argv[2], GrowthOptions(**json.loads(sys.argv[3])), max_shard_size="5GB")
    print(json.dumps({"before_mib": before / 1024,
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


@pytest.mark.parametrize("options", [dict(depth_op="zero", g=2), dict(depth_op="stack", g=2, noise_alpha=0.1)])
def test_peak_memory_does_not_grow_with_the_shard(tmp_path, options):
    """A 0.57 GB single-shard source (1.1 GB output shard) grows in the imported interpreter's footprint plus about
    one tensor (the 131 MB embedding), or a few float32 copies of it when noise is computed."""
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=6,
                         num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False)
    src = tmp_path / "src"
    src.mkdir()
    config.save_pretrained(src)
    from growlm.modeling import tensor_shapes

    # the writer itself makes the source: a 0.57 GB model.safetensors (one shard) with constant tensors
    fill = [OutputTensor(name, torch.float32, shape, lambda shape=shape: torch.full(shape, 0.01))
            for name, shape in tensor_shapes(config).items()]
    write_safetensors(src, fill, max_shard_size="5GB")
    assert (src / "model.safetensors").stat().st_size > 550e6
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", RSS_CHILD, str(src), str(tmp_path / "out"), json.dumps(options)],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rss = json.loads(result.stdout.strip().splitlines()[-1])
    largest_mib = 32000 * 1024 * 4 / 2**20  # the embedding (125 MiB)
    # noise builds one float32 tensor plus its noise and mix at a time (~4 copies of the largest)
    budget = 4 * largest_mib + 100 if options.get("noise_alpha") else largest_mib + 100
    assert rss["peak_mib"] - rss["before_mib"] < budget, rss


WIDTH_RSS_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from transformers import AutoConfig
    from growlm.growth.grow import write_weights
    from growlm.growth.operators import GrowthOptions, plan_growth
    from growlm.growth.safetensors_io import LazySafetensorsReader

    def hwm_mib():
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) / 1024

    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    with LazySafetensorsReader(src) as reader:
        plan = plan_growth(AutoConfig.from_pretrained(src), reader.names, GrowthOptions(**json.loads(sys.argv[3])))
        out.mkdir()
        before = hwm_mib()  # the interpreter with every module the growth uses imported, the plan made
        write_weights(plan, reader, out, dtype=None, max_shard_size="5GB")
    print(json.dumps({"before_mib": before, "peak_mib": hwm_mib()}))
""")


@pytest.mark.parametrize("options", [
    dict(width_op="split", hidden_size=1024, intermediate_size=2752, num_attention_heads=8, num_key_value_heads=8),
    dict(width_op="split", hidden_size=1024, intermediate_size=2752, num_attention_heads=8, num_key_value_heads=8,
         split="even", noise_alpha=0.1),
    dict(width_op="zero", hidden_size=1024, intermediate_size=2752, num_attention_heads=8, num_key_value_heads=8),
])
def test_width_growth_peak_memory_is_about_two_target_tensors(tmp_path, options):
    """Width growth (issue target: peak RSS <= 2x the largest target tensor + 0.5 GB) builds one tensor at a time
    in row blocks: a bf16 2L512H -> H1024 growth (largest target tensor: the 32000x1024 bf16 embedding, 62.5 MiB)
    peaks within the imported interpreter's footprint plus 2x that tensor (the output and its source) and a margin
    for the float32 row blocks. Whole-tensor float32 builders needed several times that."""
    config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    src = tmp_path / "src"
    src.mkdir()
    config.dtype = "bfloat16"
    config.save_pretrained(src)
    from growlm.modeling import tensor_shapes

    generator = torch.Generator().manual_seed(0)
    fill = [OutputTensor(name, torch.bfloat16, shape,
                         lambda shape=shape: torch.randn(shape, generator=generator).to(torch.bfloat16))
            for name, shape in tensor_shapes(config).items()]
    write_safetensors(src, fill, max_shard_size="5GB")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", WIDTH_RSS_CHILD, str(src), str(tmp_path / "out"),
                             json.dumps(options)], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rss = json.loads(result.stdout.strip().splitlines()[-1])
    largest_mib = 32000 * 1024 * 2 / 2**20  # the grown embedding / lm_head, bf16
    assert (tmp_path / "out" / "model.safetensors").stat().st_size > 2 * largest_mib * 2**20
    margin_mib = 48  # float32 row blocks (4 MiB each, a few alive at once) and allocator slack
    assert rss["peak_mib"] - rss["before_mib"] <= 2 * largest_mib + margin_mib, rss
