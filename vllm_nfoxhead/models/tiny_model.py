"""A tiny real Llama checkpoint with heads fitted to it, for tests and the demo.

Random weights (fixed seed) prove plumbing, so the heads are fitted to the
model's own greedy continuations: drafts then get accepted often, and the
accepted-path code runs, which a random head would never exercise.
Built with transformers and tokenizers only; no download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from vllm_nfoxhead.core.format import HeadsConfig, save_heads
from vllm_nfoxhead.core.heads import NFoxHeads
from vllm_nfoxhead.core.staging import staged_directory
from vllm_nfoxhead.training.trainer import IGNORE, context_tokens, head_losses

CORPUS = (
    "the quick brown fox jumps over the lazy dog . a small model writes short text . "
    "speculative decoding drafts tokens and the model verifies them in one pass . "
    "heads read the last hidden state and guess the next few tokens . "
    "one two three four five six seven eight nine ten eleven twelve . "
    "paris is the capital of france and rome is the capital of italy . "
)
SEED_PROMPTS = [
    "the quick brown", "one two", "speculative decoding", "paris is the",
    "heads read", "a small model", "rome", "seven eight nine", "the lazy dog .",
    "verifies them", "guess the next", "capital of", "twelve .", "fox", "short text",
    "in one pass",
]


def build_tokenizer(out_dir: Path, vocab_size: int = 384) -> None:
    """A byte-level BPE trained on CORPUS, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    # A minimal template so the OpenAI chat endpoint works.
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} . {% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    fast.save_pretrained(str(out_dir))


def build_model(out_dir: Path, vocab_size: int = 384, seed: int = 0) -> None:
    """LlamaForCausalLM: hidden 128, 2 layers, head_dim 64 (a CPU-attention size)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=1024, tie_word_embeddings=False,
        initializer_range=0.08, bos_token_id=0, eos_token_id=1,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)


# Per sequence: (post-norm hidden states [T, H] float32, token ids [T] int64).
SequenceStates = list[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def greedy_hidden_states(model_dir: Path, prompts: list[str], new_tokens: int = 48,
                         layers: tuple[int, ...] = ()) -> tuple[SequenceStates, torch.Tensor, torch.Tensor]:
    """Greedy-continue each prompt; return post-norm hidden [T,H] and tokens [T] per sequence,
    the LM head [V, H] and the input embeddings [V, H]. With `layers`, hidden is
    [T, (len(layers) + 1) * H]: the states after those layers, then the final one."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    for prompt in prompts:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        seq = model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=None, pad_token_id=1)
        o = model.model(seq, output_hidden_states=bool(layers))
        hidden = torch.cat([*(o.hidden_states[i][0] for i in layers), o.last_hidden_state[0]], -1)  # post final norm last
        out.append((hidden, seq[0]))
    return out, model.lm_head.weight.detach().clone(), model.model.embed_tokens.weight.detach().clone()


def fit_heads(sequences: SequenceStates, lm_head: torch.Tensor, num_heads: int, steps: int = 300,
              shared_lm_head: bool = False, seed: int = 0, embed: torch.Tensor | None = None) -> NFoxHeads:
    """Fit heads so head k predicts token t+k+2 from hidden state t.

    With `embed` [V, H] the heads are token-conditioned and see tokens t+1..t+k+1.
    """
    hidden_size, vocab_size = lm_head.shape[1], lm_head.shape[0]
    config = HeadsConfig(num_heads=num_heads, num_layers=1, hidden_size=hidden_size,
                         vocab_size=vocab_size, shared_lm_head=shared_lm_head,
                         conditioning="none" if embed is None else "tokens")
    torch.manual_seed(seed)
    heads = NFoxHeads(config)
    if heads.lm_heads is not None:
        for proj in heads.lm_heads:
            proj.weight.data.copy_(lm_head)
    targets = [shifted_targets(tokens, num_heads) for _, tokens in sequences]  # [T, K] each
    contexts = [None if embed is None else embed[context_tokens(tokens, num_heads)]  # [T, K, H]
                for _, tokens in sequences]
    opt = torch.optim.Adam(heads.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = sum(head_losses(heads(hidden, lm_head, context=ctx), tgt).sum()
                   for (hidden, _), tgt, ctx in zip(sequences, targets, contexts))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return heads


def write_fitted_heads(model_dir: Path, out_dir: Path, num_heads: int = 4, steps: int = 300,
                       shared_lm_head: bool = False, conditioning: str = "none") -> Path:
    """Fit heads to the model's greedy continuations of SEED_PROMPTS and save them.

    Fewer `steps` give half-trained heads (top-1 right about 2/3 of the time at
    20 steps), which is where trees beat chains.
    """
    sequences, lm_head, embed = greedy_hidden_states(Path(model_dir), SEED_PROMPTS)
    heads = fit_heads(sequences, lm_head, num_heads, steps=steps, shared_lm_head=shared_lm_head,
                      embed=embed if conditioning == "tokens" else None)
    if conditioning == "tokens":  # draft from the tokens the heads were fitted on, as training does
        heads.set_draft_vocab(torch.unique(torch.cat([tokens for _, tokens in sequences])))
    heads.config.base_model = "vllm-nfoxhead tiny llama (seed 0)"
    return save_heads(out_dir, heads.config, heads.state_dict_for_format())


def shifted_targets(tokens: torch.Tensor, num_heads: int) -> torch.Tensor:
    """tokens [T] -> targets [T, K]: token t+k+2 for head k, IGNORE past the end."""
    t = len(tokens)
    out = torch.full((t, num_heads), IGNORE, dtype=torch.long)
    for k in range(num_heads):
        out[: max(t - k - 2, 0), k] = tokens[k + 2 :]
    return out


def build_tiny_assets(root: str | os.PathLike[str], num_heads: int = 4,
                      shared_lm_head: bool = False) -> tuple[Path, Path]:
    """Write `root/model` (checkpoint + tokenizer) and `root/heads`; return both paths.

    Reuses an existing complete build (marker file), writes atomically otherwise.
    """
    root = Path(root)
    marker = root / "tiny.json"
    spec = {"version": 3, "num_heads": num_heads, "shared_lm_head": shared_lm_head}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root / "model", root / "heads"
    with staged_directory(root) as tmp:
        build_tokenizer(tmp / "model")
        build_model(tmp / "model")
        write_fitted_heads(tmp / "model", tmp / "heads", num_heads, shared_lm_head=shared_lm_head)
        (tmp / "tiny.json").write_text(json.dumps(spec))
    return root / "model", root / "heads"


def write_fitted_layer(model_dir: Path, out_dir: Path, depth: int = 4, steps: int = 150,
                       window: int = 16, new_tokens: int = 48, feature_layers: tuple[int, ...] = ()) -> Path:
    """Fit a draft layer (core/draft_layer.py) to the model's greedy continuations and save it.

    The window is short on purpose: continuations are longer than it, so the
    engine tests run requests whose windows roll over. With `feature_layers` the
    layer also reads the states after those layers of the model (EAGLE-3).
    """
    from vllm_nfoxhead.core.draft_layer import DraftLayer, DraftLayerSpec, layer_tensors
    from vllm_nfoxhead.core.format import DRAFT_VOCAB_KEY, LAYER_FORMAT_VERSION
    from vllm_nfoxhead.training.draft_layer_train import Crops, LayerTrainConfig, layer_loss
    from vllm_nfoxhead.training.trainer import Sequences

    sequences, lm_head, embed = greedy_hidden_states(Path(model_dir), SEED_PROMPTS, new_tokens, feature_layers)
    seqs = Sequences([s[1].tolist() for s in sequences], [len(s[1]) - new_tokens for s in sequences])
    crops = Crops.build(seqs, torch.cat([s[0] for s in sequences]).detach())
    vocab = torch.unique(crops.tokens)
    remap = torch.full((lm_head.shape[0],), IGNORE, dtype=torch.long)
    remap[vocab] = torch.arange(len(vocab))
    hidden_size = lm_head.shape[1]
    spec = DraftLayerSpec(num_attention_heads=4, intermediate_size=2 * hidden_size, window=window,
                          feature_layers=feature_layers)
    torch.manual_seed(0)
    layer, cfg = DraftLayer(hidden_size, spec), LayerTrainConfig(depth=depth)
    opt = torch.optim.AdamW(layer.parameters(), lr=3e-3)
    feats, tokens, lens = crops.batch(list(range(len(crops))), torch.device("cpu"))
    for _ in range(steps):
        loss, _ = layer_loss(layer, feats, tokens, lens, embed, lm_head[vocab], remap, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    config = HeadsConfig(num_heads=depth, num_layers=1, hidden_size=hidden_size, vocab_size=lm_head.shape[0],
                         shared_lm_head=True, base_model="vllm-nfoxhead tiny llama (seed 0)", conditioning="tokens",
                         draft_vocab_size=len(vocab), format_version=LAYER_FORMAT_VERSION,
                         architecture="draft_layer", draft_layer=spec.to_dict())
    return save_heads(out_dir, config, {**layer_tensors(layer), DRAFT_VOCAB_KEY: vocab})
