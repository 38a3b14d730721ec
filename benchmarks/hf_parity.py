"""Hugging Face parity figures: max abs logit difference (fp32) between arlm and transformers, both ways.

Export: an arlm model with every weight moved off its init, written by ``arlm.export.hf.export_hf``
and loaded with ``AutoModelForCausalLM.from_pretrained``. Import: a random transformers model
saved with ``save_pretrained`` and read by ``arlm.export.hf_import.import_hf``. Models are small
(dim 256, depth 4, 8 heads, 256 tokens) and random: nothing is downloaded.

  .venv/bin/python benchmarks/hf_parity.py          # ~1 minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

from arlm.config import ModelConfig
from arlm.export.hf import export_hf
from arlm.export.hf_import import import_hf
from arlm.model import Transformer
from arlm.tokenizers import ByteTokenizer

T, V = 256, 256
BASE = dict(vocab_size=V, max_seq_len=T, dim=256, depth=4, heads=8)
LLAMA = dict(BASE, pos_emb="rotary", rotary_dim=32, norm="rmsnorm", ff_glu=True, ff_activation="swish",
             ff_bias=False, ff_glu_bias=False)
EXPORTS = {
    "GPT-2 (arlm defaults: absolute positions, LayerNorm, GELU MLP)": dict(BASE),
    "GPT-NeoX (the tiny/default presets: partial rotary, LayerNorm)": dict(BASE, pos_emb="rotary"),
    "Llama (rotary, RMSNorm, SwiGLU, GQA 8/2)": dict(LLAMA, kv_heads=2),
    "Mistral (Llama + a 64-token sliding window)": dict(LLAMA, kv_heads=2, max_attend_past=63),
}
SMALL = dict(vocab_size=V, hidden_size=256, num_hidden_layers=4, num_attention_heads=8, max_position_embeddings=T,
             intermediate_size=688)
IMPORTS = {
    "GPT-2": transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=256, n_layer=4, n_head=8),
    "GPT-NeoX (partial rotary 0.25)": transformers.GPTNeoXConfig(
        use_parallel_residual=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "partial_rotary_factor": 0.25}, **SMALL),
    "Llama (GQA 8/2)": transformers.LlamaConfig(num_key_value_heads=2, **SMALL),
    "Mistral (sliding window 64)": transformers.MistralConfig(num_key_value_heads=2, sliding_window=64, **SMALL),
    "Qwen2 (qkv biases)": transformers.Qwen2Config(num_key_value_heads=2, **SMALL),
}


def perturb(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    x = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(2))
    print(f"max abs logit difference, fp32, batch 2 x {T} tokens (logit scale: max |logit| beside it)")
    for name, kwargs in EXPORTS.items():
        model = perturb(Transformer(ModelConfig(**kwargs)), 0.02)
        with tempfile.TemporaryDirectory() as d:
            export_hf(model, ByteTokenizer(), d)
            hf = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
            with torch.no_grad():
                ours, theirs = model(x), hf(x).logits
        print(f"export  {type(hf).__name__:<20} {(ours - theirs).abs().max().item():.2e}  "
              f"(max |logit| {ours.abs().max().item():.2f})  {name}")
    for name, cfg in IMPORTS.items():
        hf = perturb(transformers.AutoModelForCausalLM.from_config(cfg), 0.02)
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            model, _ = import_hf(d)
        with torch.no_grad():
            ours, theirs = model(x), hf(x).logits
        print(f"import  {type(hf).__name__:<20} {(ours - theirs).abs().max().item():.2e}  "
              f"(max |logit| {theirs.abs().max().item():.2f})  {name}")


if __name__ == "__main__":
    main()
