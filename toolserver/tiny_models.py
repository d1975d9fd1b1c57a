"""Tiny real models built offline in seconds: a trained BPE tokenizer, GPT-2 / Llama / BERT bases,
real fine-tunes in every checkpoint format the loader accepts, and real LoRA adapters (peft).

Used by tests, `make demo` and benchmarks: the hub is unreachable, so every model the project exercises
is built here from a seed. Everything is deterministic for a given seed.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

import torch
from safetensors.torch import save_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

Arch = Literal["gpt2", "llama", "bert"]
Format = Literal["safetensors", "pt", "pt_step", "hf_dir", "hf_sharded"]

EOS = "<|endoftext|>"
PAD = "<pad>"
MASK = "<mask>"
VOCAB_SIZE = 640
SEQ_LEN = 32

# Written for this project: plain sentences about training, enough for a few hundred BPE merges.
CORPUS = """\
The model reads a sentence and predicts the next word. Each training step nudges the weights a little.
A small learning rate keeps the update gentle, while a large one can make the loss jump around.
When the loss stops falling, the run has reached a plateau, and more steps change very little.
Attention layers decide which earlier words matter; the feed-forward layers store what was learned.
The embedding table turns every token into a vector, and the final layer turns vectors back into words.
A fine-tune starts from a base model and trains it further on new text for a new task.
Low-rank adapters add two thin matrices beside a frozen weight, so only a few numbers are trained.
After training, the adapter can be merged into the weight, or kept apart and loaded when needed.
Engineers compare the weights before and after, layer by layer, to see where the change landed.
If one layer moved far more than the others, that layer is where the new behaviour probably lives.
The gradient tells each weight which way to move; its norm says how hard the step was.
Dead layers receive almost no gradient, and their weights stay where they started.
The tokenizer splits text into pieces that appear often, so common words become single tokens.
Rare words are spelled out from smaller pieces, down to single bytes when nothing else fits.
Every checkpoint stores the weights as named tensors, together with the step it was saved at.
Reading a checkpoint should never run code; a file of plain tensors is all that is needed.
The encoder reads the whole sentence at once and builds one vector that captures its meaning.
Two sentences with the same meaning should land close together, and unrelated ones far apart.
A masked word is hidden from the encoder, which must guess it from the words around it.
Careful notes about each run make it easy to tell later what changed, when, and by how much.
"""

_CAUSAL_ARCHS = ("gpt2", "llama")
_LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "bert": ["query", "key", "value", "output.dense", "intermediate.dense"],
}


def build_tokenizer(out_dir: Path | str) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the built-in corpus and save it (loadable with AutoTokenizer)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=[EOS, PAD, MASK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD, mask_token=MASK,
        model_max_length=128,
    )
    fast.save_pretrained(str(out_dir))
    return fast


def _config(arch: Arch, tok: PreTrainedTokenizerFast) -> GPT2Config | LlamaConfig | BertConfig:
    vocab, eos, pad = len(tok), tok.eos_token_id, tok.pad_token_id
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                          bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           tie_word_embeddings=False, bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)
    if arch == "bert":
        return BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, max_position_embeddings=128, pad_token_id=pad)
    raise ValueError(f"unknown tiny architecture {arch!r}; expected gpt2, llama or bert")


def build_base(arch: Arch, out_dir: Path | str, seed: int = 0) -> Path:
    """A randomly initialised 2-layer, d_model 64 model saved with save_pretrained (safetensors) + tokenizer.

    GPT-2 keeps its fused c_attn Conv1D and tied lm_head; Llama uses grouped-query attention (4 heads,
    2 kv heads) and an untied lm_head; BERT is a bare encoder (BertModel), like sentence-embedding models.
    """
    out = Path(out_dir)
    tok = build_tokenizer(out)
    torch.manual_seed(seed)
    cfg = _config(arch, tok)
    model_cls = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "bert": BertModel}[arch]
    with _quiet():
        model_cls(cfg).save_pretrained(str(out))
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' load reports and progress bars: these builds run inside tests and the demo."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _arch(base_dir: Path) -> Arch:
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(str(base_dir)).model_type
    if model_type not in ("gpt2", "llama", "bert"):
        raise ValueError(f"{base_dir} is a {model_type!r} model; tiny_models trains gpt2, llama or bert")
    return model_type  # type: ignore[return-value]


def _load_trainable(base_dir: Path, arch: Arch, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)  # the BERT MLM head is freshly initialised: keep it deterministic
    auto = AutoModelForCausalLM if arch in _CAUSAL_ARCHS else AutoModelForMaskedLM
    with _quiet():  # the BERT MLM head is expected to be missing from an encoder base
        return auto.from_pretrained(str(base_dir), dtype=torch.float32)


def _batch(base_dir: Path, arch: Arch, seed: int) -> dict[str, torch.Tensor]:
    """The corpus as fixed-length rows; causal-LM labels, or 15% masked positions for BERT's MLM loss."""
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    ids = torch.tensor([i for line in tok(CORPUS.splitlines())["input_ids"] for i in line])
    rows = ids[: (len(ids) // SEQ_LEN) * SEQ_LEN].view(-1, SEQ_LEN)[:8]
    if arch in _CAUSAL_ARCHS:
        return {"input_ids": rows, "labels": rows.clone()}
    gen = torch.Generator().manual_seed(seed)
    masked = torch.rand(rows.shape, generator=gen) < 0.15
    masked[:, 0] = True  # at least one target per row
    return {
        "input_ids": rows.masked_fill(masked, tok.mask_token_id),
        "labels": rows.masked_fill(~masked, -100),
        "attention_mask": torch.ones_like(rows),
    }


def _train(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int, lr: float) -> None:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss = model(**batch).loss
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"tiny fine-tune diverged (loss {loss.item()})")
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def finetune(base_dir: Path | str, out: Path | str, steps: int = 5, lr: float = 1e-3,
             fmt: Format = "safetensors", seed: int = 0) -> Path:
    """A real fine-tune (AdamW steps on the causal-LM or MLM loss) saved in the requested format.

    fmt: "safetensors" (one file), "pt" (bare state dict; .pt or .bin), "pt_step" ({step, state_dict}),
    "hf_dir" (save_pretrained + tokenizer), "hf_sharded" (save_pretrained in several shards with an index).
    """
    base, out = Path(base_dir), Path(out)
    arch = _arch(base)
    model = _load_trainable(base, arch, seed)
    _train(model, _batch(base, arch, seed), steps, lr)
    if fmt in ("safetensors", "pt", "pt_step"):
        out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        save_model(model, str(out), metadata={"step": str(steps)})  # drops the tied duplicate of shared tensors
    elif fmt == "pt":
        torch.save(model.state_dict(), out)
    elif fmt == "pt_step":
        torch.save({"step": steps, "state_dict": model.state_dict()}, out)
    elif fmt in ("hf_dir", "hf_sharded"):
        with _quiet():
            model.save_pretrained(str(out), max_shard_size="100KB" if fmt == "hf_sharded" else "5GB")
            AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    else:
        raise ValueError(f"unknown checkpoint format {fmt!r}")
    return out


def lora_finetune(base_dir: Path | str, out_dir: Path | str, steps: int = 5, r: int = 4, alpha: float = 8,
                  use_rslora: bool = False, target_modules: list[str] | None = None, lr: float = 1e-2,
                  seed: int = 0) -> Path:
    """Real LoRA training with peft; saved as a PEFT adapter dir (adapter_config.json + safetensors).

    peft starts B at zero; after the first optimiser step both A and B move, so B @ A is non-zero.
    """
    from peft import LoraConfig, get_peft_model

    base, out = Path(base_dir), Path(out_dir)
    arch = _arch(base)
    model = _load_trainable(base, arch, seed)
    cfg = LoraConfig(
        r=r, lora_alpha=alpha, use_rslora=use_rslora, lora_dropout=0.0,
        target_modules=target_modules or _LORA_TARGETS[arch],
        fan_in_fan_out=arch == "gpt2",  # GPT-2's Conv1D stores weights as (in, out)
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, cfg)
    _train(peft_model, _batch(base, arch, seed), steps, lr)
    peft_model.save_pretrained(str(out))
    return out
