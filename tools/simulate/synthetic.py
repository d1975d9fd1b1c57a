"""Pass 3's synthetic checkpoint: the base weights plus the written delta, saved the way a real fine-tune saves
(save_pretrained with the tokenizer, or a {step, state_dict} .pt), then loaded back through the session's one
checkpoint loader and compared with what was written, tensor by tensor, bit for bit in the model's dtype."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from session.context import ToolContext
from session.models import load_checkpoint
from toolserver.contract import ToolError

HF_DIR, PT_FILE = "checkpoint", "checkpoint.pt"


def merged_state(model: nn.Module, delta: dict[str, Tensor]) -> dict[str, Tensor]:
    """model.state_dict() with each parameter's delta added in float32 and cast to its dtype; a tied key (GPT-2's
    lm_head.weight and wte) gets the very tensor its parameter gets, so the tie survives the save."""
    new: dict[int, Tensor] = {}
    for name, p in model.named_parameters():
        d = delta.get(name)
        new[p.data_ptr()] = (p.detach().float() + d.to(p.device)).to(p.dtype) if d is not None else p.detach().clone()
    return {k: new.get(t.data_ptr(), t.detach().clone()) for k, t in model.state_dict().items()}


def save(
    model: nn.Module, tokenizer: Any, state: dict[str, Tensor], out: Path, fmt: Literal["hf", "pt"], step: int
) -> Path:
    """Written into a temporary directory beside its final name, to be reloaded there and then `publish`ed, so
    a previous simulation's checkpoint is replaced only by one that wrote and reloaded whole. Returns the path
    written."""
    final = out / (HF_DIR if fmt == "hf" else PT_FILE)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{final.name}."))
    path = tmp / final.name
    try:
        if fmt == "hf":
            model.save_pretrained(str(path), state_dict=state)
            tokenizer.save_pretrained(str(path))
        else:
            torch.save({"step": step, "state_dict": {k: v.cpu() for k, v in state.items()}}, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ToolError(f"cannot write the synthetic checkpoint under {out}: {e}", "pick a writable --out") from None
    return path


def publish(written: Path, out: Path) -> Path:
    """Move a checked checkpoint from its temporary directory to its final name, replacing the previous one."""
    final = out / written.name
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(written, final)
    shutil.rmtree(written.parent, ignore_errors=True)
    return final


def reload_and_check(ctx: ToolContext, path: Path, state: dict[str, Tensor]) -> int:
    """Load `path` as any tool would and count the parameters equal to `state`; any difference is an error."""
    session = ctx.require_session()
    loaded = load_checkpoint(session, path, ctx.models, backend="transformers")
    matched = 0
    for name, p in loaded.model.named_parameters():
        want = state.get(name)
        if want is None or want.shape != p.shape or want.dtype != p.dtype or not torch.equal(want.to(p.device), p):
            raise ToolError(
                f"the synthetic checkpoint {path} reloads with {name} different from what was written",
                "a loader or save bug: report it with the checkpoint",
            )
        matched += 1
    return matched
