"""Checkpoint converter (`python -m conversion.to_vllm`): every input family, built
synthetically with the real key names and layouts, converted, loaded the way the
plugin loads heads, and compared with an independent computation of the same
heads straight from the source tensors.

Small sizes throughout (H=32, V=48); the 1 GB lazy-read test is in
test_conversion_large.py. No vLLM engine is started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conversion.to_vllm import main
from vllm_nfoxhead.core.format import read_heads_tensors, validate_heads_dir
from vllm_nfoxhead.core.heads import NFoxHeads

H, V = 32, 48
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------
# Independent reference: the heads' math straight from source tensors.
# ---------------------------------------------------------------------------------------
def ref_head(x: torch.Tensor, blocks: list[tuple[torch.Tensor, torch.Tensor | None]], proj: torch.Tensor) -> torch.Tensor:
    """logits = P r, r = ResBlock_L(...ResBlock_1(x)), ResBlock(x) = x + silu(W x + b)."""
    x = x.double()
    for w, b in blocks:
        y = x @ w.double().T + (b.double() if b is not None else 0.0)
        x = x + y * torch.sigmoid(y)  # silu written out
    return x @ proj.double().T


def ref_logits_reference_keys(src: dict[str, torch.Tensor], prefix: str, x: torch.Tensor,
                              base_lm: torch.Tensor | None = None) -> torch.Tensor:
    """Reference-trainer layout: {p}{i}.{l}.linear.weight/bias, {p}{i}.{L}.weight."""
    out = []
    i = 0
    while f"{prefix}{i}.0.linear.weight" in src or f"{prefix}{i}.0.weight" in src:
        blocks, layer = [], 0
        while f"{prefix}{i}.{layer}.linear.weight" in src:
            blocks.append((src[f"{prefix}{i}.{layer}.linear.weight"], src.get(f"{prefix}{i}.{layer}.linear.bias")))
            layer += 1
        proj = src.get(f"{prefix}{i}.{layer}.weight", base_lm)
        out.append(ref_head(x, blocks, proj))
        i += 1
    return torch.stack(out)


def ref_logits_vllm_keys(src: dict[str, torch.Tensor], num_heads: int, num_layers: int, x: torch.Tensor,
                         use_bias: bool = True, single_lm: str | None = None) -> torch.Tensor:
    """vLLM Medusa layout: blocks.{i}.layers.{l}.weight/bias, lm_heads.{i}.weight / lm_head.weight."""
    out = []
    for i in range(num_heads):
        blocks = [(src[f"blocks.{i}.layers.{l}.weight"], src.get(f"blocks.{i}.layers.{l}.bias") if use_bias else None)
                  for l in range(num_layers)]
        out.append(ref_head(x, blocks, src[single_lm] if single_lm else src[f"lm_heads.{i}.weight"]))
    return torch.stack(out)


def plugin_logits(heads_dir: Path, x: torch.Tensor, base_lm: torch.Tensor | None = None) -> torch.Tensor:
    """Load the converted directory exactly as the plugin does and run the heads."""
    cfg = validate_heads_dir(heads_dir)
    model = NFoxHeads(cfg).double()
    model.load_format_tensors(read_heads_tensors(heads_dir, cfg))
    with torch.no_grad():
        return model(x.double(), None if base_lm is None else base_lm.double())


def hidden(n: int = 5, h: int = H) -> torch.Tensor:
    return torch.randn(n, h, generator=torch.Generator().manual_seed(7))


# ---------------------------------------------------------------------------------------
# Synthetic checkpoints with the real key names.
# ---------------------------------------------------------------------------------------
class RefResBlock(nn.Module):
    """Same structure as the reference ResBlock (so state_dict keys are the real ones)."""

    def __init__(self, h: int) -> None:
        super().__init__()
        self.linear = nn.Linear(h, h)

    def forward(self, x):  # pragma: no cover - only the state_dict is used
        return x + nn.functional.silu(self.linear(x))


def reference_medusa_head(num_heads: int, num_layers: int, h: int = H, v: int = V, seed: int = 0) -> nn.ModuleList:
    """The reference `medusa_head`: [ResBlock]*L (one module repeated, as shipped) + Linear(h, v)."""
    torch.manual_seed(seed)
    heads = nn.ModuleList(
        nn.Sequential(*([RefResBlock(h)] * num_layers), nn.Linear(h, v, bias=False)) for _ in range(num_heads)
    )
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.2)  # reference init is W=0; random here so the test sees every tensor
    return heads


def rand_ref_tensors(num_heads: int, num_layers: int, own_proj: bool, prefix: str = "", seed: int = 1,
                     h: int = H, v: int = V, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Untied reference-layout tensors (num_layers may be > 1)."""
    g = torch.Generator().manual_seed(seed)
    t: dict[str, torch.Tensor] = {}
    for i in range(num_heads):
        for l in range(num_layers):
            t[f"{prefix}{i}.{l}.linear.weight"] = (torch.randn(h, h, generator=g) * 0.2).to(dtype)
            t[f"{prefix}{i}.{l}.linear.bias"] = (torch.randn(h, generator=g) * 0.2).to(dtype)
        if own_proj:
            t[f"{prefix}{i}.{num_layers}.weight"] = (torch.randn(v, h, generator=g) * 0.2).to(dtype)
    return t


def write_base_model(path: Path, tie: bool = False, h: int = H, v: int = V) -> torch.Tensor:
    """Tiny base model dir (config + weights); returns its LM head [V, H]."""
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(99)
    embed = torch.randn(v, h, generator=g)
    tensors = {"model.embed_tokens.weight": embed, "model.norm.weight": torch.ones(h)}
    lm = embed
    if not tie:
        lm = torch.randn(v, h, generator=g)
        tensors["lm_head.weight"] = lm
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": h, "vocab_size": v, "tie_word_embeddings": tie,
        "_name_or_path": "tiny/base"}))
    return lm


def write_medusa_v1(path: Path, heads: nn.ModuleList, stated_heads: int = 2, stated_layers: int = 1) -> dict:
    """v0.1 heads-only: config.json + medusa_lm_head.pt (torch.save of medusa_head.state_dict())."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({
        "base_model_name_or_path": "lmsys/vicuna-7b-v1.3", "medusa_num_heads": stated_heads,
        "medusa_num_layers": stated_layers, "transformers_version": "4.31.0"}))
    torch.save(heads.state_dict(), path / "medusa_lm_head.pt")
    return {k: v.clone() for k, v in heads.state_dict().items()}


def write_full_model(path: Path, heads: dict[str, torch.Tensor], kind: str, num_heads: int | None = 3,
                     junk_other_shard: bool = True) -> None:
    """Full model, sharded with an index: shard 1 = base body, shard 2 = lm_head + medusa_head.*.

    With `junk_other_shard` the base-body shard is garbage bytes: the converter must
    never open it (the index says it holds no head tensor).
    """
    path.mkdir(parents=True)
    cfg = {"model_type": "llama", "architectures": ["MedusaModel"], "hidden_size": H, "vocab_size": V,
           "num_hidden_layers": 2, "_name_or_path": "lmsys/vicuna-7b-v1.5"}
    if num_heads is not None:
        cfg.update(medusa_num_heads=num_heads, medusa_num_layers=1)
    (path / "config.json").write_text(json.dumps(cfg))
    body = {"model.embed_tokens.weight": torch.randn(V, H), "model.layers.0.mlp.up_proj.weight": torch.randn(H, H)}
    tail = {"lm_head.weight": torch.randn(V, H), "model.norm.weight": torch.ones(H), **heads}
    ext, index = (".safetensors", "model.safetensors.index.json") if kind == "safetensors" else (".bin", "pytorch_model.bin.index.json")
    stem = "model" if kind == "safetensors" else "pytorch_model"
    shard1, shard2 = f"{stem}-00001-of-00002{ext}", f"{stem}-00002-of-00002{ext}"
    for name, tensors in ((shard1, body), (shard2, tail)):
        if kind == "safetensors":
            save_file(tensors, str(path / name))
        else:
            torch.save(tensors, path / name)
    if junk_other_shard:
        (path / shard1).write_bytes(b"not a checkpoint" * 64)
    weight_map = {n: shard1 for n in body} | {n: shard2 for n in tail}
    (path / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


def write_vllm_medusa_dir(path: Path, tensors: dict[str, torch.Tensor], **config) -> None:
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "medusa", "architectures": ["MedusaModel"],
                                                  "hidden_size": H, "vocab_size": V, **config}))


def run_cli(capsys, *argv: str | Path) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv] + ["--quiet"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = float((a.double() - b.double()).abs().max())
    assert diff <= tol, diff


# ---------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------
def test_medusa_v1_pt_wrong_head_count(tmp_path, capsys):
    """v0.1: config says 2 heads, the .pt holds 5 (the real vicuna checkpoints): weights win, warning."""
    src = write_medusa_v1(tmp_path / "in", reference_medusa_head(5, 1))
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, tmp_path / "in", "--output", out)
    assert rc == 0, err
    assert "says medusa_num_heads=2 but the weights hold 5 heads" in err and "weights are the truth" in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_heads"] == 5 and cfg["num_layers"] == 1 and cfg["shared_lm_head"] is False
    assert cfg["base_model"] == "lmsys/vicuna-7b-v1.3" and cfg["extra"]["converted_from"] == "medusa"
    x = hidden()
    close(plugin_logits(out, x), ref_logits_reference_keys(src, "", x))


def test_medusa_v1_tied_multilayer_legacy_pickle(tmp_path, capsys):
    """[ResBlock]*2 (one module repeated: shared storage) saved in torch's legacy non-zip format."""
    heads = reference_medusa_head(3, 2)
    (tmp_path / "in").mkdir()
    torch.save(heads.state_dict(), tmp_path / "in" / "medusa_lm_head.pt", _use_new_zipfile_serialization=False)
    src = {k: v.clone() for k, v in heads.state_dict().items()}
    rc, _, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out")
    assert rc == 0, err
    assert "config.json is missing" in err  # no config: counts come from the weights
    x = hidden()
    close(plugin_logits(tmp_path / "out", x), ref_logits_reference_keys(src, "", x))


def test_medusa_v1_untied_layers_options(tmp_path, capsys):
    """num_layers=2 with distinct layers; --num-heads, --dtype, --tree, --verify."""
    (tmp_path / "in").mkdir()
    src = rand_ref_tensors(4, 2, own_proj=True)
    torch.save(src, tmp_path / "in" / "medusa_lm_head.pt")
    (tmp_path / "in" / "config.json").write_text(json.dumps({"medusa_num_heads": 4, "medusa_num_layers": 2}))
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, tmp_path / "in", "-o", out, "--num-heads", "3", "--dtype", "float16",
                              "--tree", "mc_sim_16", "--verify")
    assert rc == 0, err
    assert "verify nfoxhead: max abs logit difference" in stdout and "ok" in stdout
    cfg = validate_heads_dir(out)
    assert (cfg.num_heads, cfg.num_layers, cfg.dtype, cfg.tree) == (3, 2, "float16", "mc_sim_16")
    x = hidden()
    ref = ref_logits_reference_keys(src, "", x)[:3]
    close(plugin_logits(out, x), ref, tol=5e-2)  # fp16 storage
    # JSON tree is stored as a list, in canonical (depth, path) order
    rc, _, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out2", "--tree", "[[0],[0,0],[1]]")
    assert rc == 0 and validate_heads_dir(tmp_path / "out2").tree == [[0], [1], [0, 0]]


def test_medusa_v2_shared_lm_head_to_vllm_medusa(tmp_path, capsys):
    """Version 2: residual blocks only (safetensors), logits via the base LM head; plus vLLM's format."""
    (tmp_path / "in").mkdir()
    src = rand_ref_tensors(3, 1, own_proj=False)
    save_file(src, str(tmp_path / "in" / "medusa_lm_head.safetensors"))
    (tmp_path / "in" / "config.json").write_text(json.dumps(
        {"medusa_num_heads": 3, "medusa_num_layers": 1, "base_model_name_or_path": "tiny/base", "version": "2"}))
    base_lm = write_base_model(tmp_path / "base")
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, tmp_path / "in", "-o", out, "--base-model", tmp_path / "base",
                              "--to", "vllm-medusa", "--verify")
    assert rc == 0, err
    assert "verify vllm-medusa" in stdout
    cfg = validate_heads_dir(out)
    assert cfg.shared_lm_head and cfg.vocab_size == V and cfg.base_model == "tiny/base"
    x = hidden()
    ref = ref_logits_reference_keys(src, "", x, base_lm=base_lm)
    close(plugin_logits(out, x, base_lm), ref)
    # vLLM Medusa output: config as vLLM's loader needs it; lm_head = the base model's.
    vdir = out / "vllm-medusa"
    vcfg = json.loads((vdir / "config.json").read_text())
    assert vcfg["model_type"] == "medusa" and vcfg["medusa_fc_bias"] is True and vcfg["original_lm_head"] is True
    assert (vcfg["num_heads"], vcfg["num_hidden_layers"], vcfg["truncated_vocab_size"]) == (3, 1, V)
    vt = load_file(str(vdir / "model.safetensors"))
    assert torch.equal(vt["lm_head.weight"], base_lm)
    close(ref_logits_vllm_keys(vt, 3, 1, x, single_lm="lm_head.weight"), ref)


def test_medusa_v2_tied_base_uses_embeddings(tmp_path, capsys):
    """tie_word_embeddings: the base LM head is model.embed_tokens.weight."""
    (tmp_path / "in").mkdir()
    src = rand_ref_tensors(2, 1, own_proj=False)
    save_file(src, str(tmp_path / "in" / "medusa_lm_head.safetensors"))
    embed = write_base_model(tmp_path / "base", tie=True)
    rc, stdout, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out", "--base-model", tmp_path / "base",
                              "--to", "vllm-medusa")
    assert rc == 0, err
    vt = load_file(str(tmp_path / "out" / "vllm-medusa" / "model.safetensors"))
    assert torch.equal(vt["lm_head.weight"], embed)
    assert validate_heads_dir(tmp_path / "out").base_model == "tiny/base"  # from --base-model


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_full_model_sharded(tmp_path, capsys, kind):
    """Medusa 1.0 / axolotl merge: sharded + index; the non-head shard is junk and never opened."""
    src = rand_ref_tensors(3, 1, own_proj=True, prefix="medusa_head.")
    write_full_model(tmp_path / "in", src, kind)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, tmp_path / "in", "-o", out, "--verify")
    assert rc == 0, err
    assert "medusa-full" in stdout
    cfg = validate_heads_dir(out)
    assert (cfg.num_heads, cfg.hidden_size, cfg.vocab_size) == (3, H, V)
    assert cfg.base_model == "lmsys/vicuna-7b-v1.5"
    x = hidden()
    close(plugin_logits(out, x), ref_logits_reference_keys(src, "medusa_head.", x))
    assert set(load_file(str(out / "model.safetensors"))) == set(cfg.expected_shapes())  # no base weights copied


def test_full_model_single_file_missing_head_count(tmp_path, capsys):
    """Unsharded model.safetensors whose config lacks medusa_num_heads (1.0 13b/33b, #76)."""
    (tmp_path / "in").mkdir()
    src = rand_ref_tensors(2, 1, own_proj=True, prefix="medusa_head.")
    save_file({"model.embed_tokens.weight": torch.randn(V, H), "lm_head.weight": torch.randn(V, H), **src},
              str(tmp_path / "in" / "model.safetensors"))
    (tmp_path / "in" / "config.json").write_text(json.dumps({"model_type": "mistral", "hidden_size": H, "vocab_size": V}))
    rc, _, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out")
    assert rc == 0, err
    x = hidden()
    close(plugin_logits(tmp_path / "out", x), ref_logits_reference_keys(src, "medusa_head.", x))


def test_vllm_medusa_input_keeps_biases(tmp_path, capsys):
    """vLLM's own format, medusa_fc_bias false but biases in the file: kept, with a warning."""
    g = torch.Generator().manual_seed(3)
    t = {}
    for i in range(2):
        for l in range(2):
            t[f"blocks.{i}.layers.{l}.weight"] = torch.randn(H, H, generator=g) * 0.2
            t[f"blocks.{i}.layers.{l}.bias"] = torch.randn(H, generator=g) * 0.2
        t[f"lm_heads.{i}.weight"] = torch.randn(V, H, generator=g) * 0.2
    write_vllm_medusa_dir(tmp_path / "in", t, num_heads=2, num_hidden_layers=2, truncated_vocab_size=V)
    rc, _, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out", "--verify")
    assert rc == 0, err
    assert "medusa_fc_bias false" in err
    x = hidden()
    close(plugin_logits(tmp_path / "out", x), ref_logits_vllm_keys(t, 2, 2, x, use_bias=True))


def test_vllm_medusa_original_lm_head(tmp_path, capsys):
    """original_lm_head: one lm_head for all heads; shared when it is the base model's LM head."""
    base_lm = write_base_model(tmp_path / "base")
    g = torch.Generator().manual_seed(4)
    t = {f"blocks.{i}.layers.0.{n}": torch.randn(*((H, H) if n == "weight" else (H,)), generator=g) * 0.2
         for i in range(3) for n in ("weight", "bias")}
    t["lm_heads.0.weight"] = base_lm.clone()  # the loader maps lm_heads.0 -> lm_head
    write_vllm_medusa_dir(tmp_path / "in", t, num_heads=3, num_hidden_layers=1, medusa_fc_bias=True,
                          original_lm_head=True)
    x = hidden()
    ref = ref_logits_vllm_keys(t, 3, 1, x, single_lm="lm_heads.0.weight")
    rc, _, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "shared", "--base-model", tmp_path / "base")
    assert rc == 0, err
    assert validate_heads_dir(tmp_path / "shared").shared_lm_head
    close(plugin_logits(tmp_path / "shared", x, base_lm), ref)
    rc, _, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "copied")
    assert rc == 0 and "copied into every head" in err
    assert not validate_heads_dir(tmp_path / "copied").shared_lm_head
    close(plugin_logits(tmp_path / "copied", x), ref)


def test_vllm_medusa_round_trip_and_vllm_config(tmp_path, capsys):
    """Own-projection heads -> --to vllm-medusa (custom path) -> read back as the vllm-medusa family."""
    src = write_medusa_v1(tmp_path / "in", reference_medusa_head(4, 1), stated_heads=4)
    vdir = tmp_path / "vm"
    rc, _, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out", "--to", "vllm-medusa",
                         "--vllm-medusa-output", vdir, "--verify")
    assert rc == 0, err
    assert not (tmp_path / "out" / "vllm-medusa").exists()
    vt = load_file(str(vdir / "model.safetensors"))
    assert set(vt) == {f"blocks.{i}.layers.0.{n}" for i in range(4) for n in ("weight", "bias")} | {
        f"lm_heads.{i}.weight" for i in range(4)}
    x = hidden()
    ref = ref_logits_reference_keys(src, "", x)
    close(ref_logits_vllm_keys(vt, 4, 1, x), ref)
    rc, _, err = run_cli(capsys, vdir, "-o", tmp_path / "back")
    assert rc == 0, err
    close(plugin_logits(tmp_path / "back", x), ref)
    # vLLM's own config class reads it as intended (key renaming must not clobber anything).
    configs = pytest.importorskip("vllm.transformers_utils.configs.medusa")
    mc = configs.MedusaConfig.from_pretrained(str(vdir))
    assert (mc.num_heads, mc.num_hidden_layers, mc.hidden_size, mc.vocab_size) == (4, 1, H, V)
    assert mc.truncated_vocab_size == V and mc.medusa_fc_bias is True and mc.original_lm_head is False


def test_axolotl_zero_layer_heads(tmp_path, capsys):
    """axolotl medusa_num_layers: 0 -> Sequential(Linear) only: one identity block is written."""
    (tmp_path / "in").mkdir()
    g = torch.Generator().manual_seed(5)
    src = {f"medusa_head.{i}.0.weight": torch.randn(V, H, generator=g) for i in range(2)}
    save_file({"lm_head.weight": torch.randn(V, H), **src}, str(tmp_path / "in" / "model.safetensors"))
    (tmp_path / "in" / "config.json").write_text(json.dumps({"hidden_size": H, "vocab_size": V}))
    rc, _, err = run_cli(capsys, tmp_path / "in", "-o", tmp_path / "out")
    assert rc == 0 and "identity block" in err
    x = hidden()
    ref = torch.stack([x.double() @ src[f"medusa_head.{i}.0.weight"].double().T for i in range(2)])
    close(plugin_logits(tmp_path / "out", x), ref)


def test_subprocess_cli_and_no_vllm_import(tmp_path):
    """A real `python -m conversion.to_vllm` process; the conversion package never imports vLLM."""
    write_medusa_v1(tmp_path / "in", reference_medusa_head(3, 1), stated_heads=3)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = ("import sys, runpy; sys.argv = ['x'] + sys.argv[1:]; "
            "import conversion.to_vllm as m; rc = m.main(sys.argv[1:]); "
            "bad = [k for k in sys.modules if k == 'vllm' or k.startswith('vllm.')]; "
            "print('vllm modules:', bad); sys.exit(rc or (3 if bad else 0))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in"), "-o", str(tmp_path / "a"), "--verify"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "vllm modules: []" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "conversion.to_vllm", str(tmp_path / "in"), "--output",
                           str(tmp_path / "b"), "--verify"], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "verify nfoxhead: max abs logit difference" in proc.stdout
    validate_heads_dir(tmp_path / "b")
    proc = subprocess.run([sys.executable, "-m", "conversion.to_vllm", str(tmp_path / "in"), "--output",
                           str(tmp_path / "b")], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: NFoxHead:")
    assert "already exists" in proc.stderr


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--output", "--format", "--base-model", "--dtype", "--num-heads", "--tree", "--to",
                 "--vllm-medusa-output", "--verify", "--tolerance", "--force", "--quiet"):
        assert flag in text
