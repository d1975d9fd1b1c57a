"""`make demo` (`python -m tools.demo`): the main job end to end on tiny models built on the spot.

Builds a tiny GPT-2-style base, a real full fine-tune and a real LoRA adapter, records a real training log,
starts the web mirror in the background (or reuses one already serving), then runs every tool through the
`trainspect` CLI exactly as a user types it, printing its readable tables — the same cards appear in the page.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

DEMO = Path(os.environ.get("TRAINSPECT_DEMO_DIR", ".demo")).resolve()
PORT = int(os.environ.get("TRAINSPECT_DEMO_PORT", "8002"))
URL = f"http://127.0.0.1:{PORT}"


def _mirror_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/sessions", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def start_mirror(home: Path) -> None:
    """Start `trainspect web` detached so the page outlives this command."""
    if _mirror_up(URL):
        print(f"web mirror already serving at {URL}")
        return
    log = open(DEMO / "web.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolserver.cli", "web", "--port", str(PORT)],
        env={**os.environ, "TRAINSPECT_HOME": str(home)},
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    (DEMO / "web.pid").write_text(str(proc.pid))
    for _ in range(100):
        if _mirror_up(URL):
            return
        if proc.poll() is not None:
            raise SystemExit(f"the web mirror exited at start; see {DEMO / 'web.log'}")
        time.sleep(0.1)
    raise SystemExit(f"the web mirror did not answer on {URL}; see {DEMO / 'web.log'}")


def build_models() -> tuple[Path, Path, Path]:
    from tools.fixtures.tiny_models import build_base, finetune, lora_finetune

    base = DEMO / "models" / "tiny-gpt2"
    full = DEMO / "checkpoints" / "step_40.pt"
    lora = DEMO / "checkpoints" / "lora-adapter"
    if not (base / "config.json").exists():
        build_base("gpt2", base)
    if not full.exists():
        finetune(base, full, steps=40, fmt="pt_step")
    if not (lora / "adapter_config.json").exists():
        lora_finetune(base, lora, steps=40)
    return base, full, lora


def demo_corpus() -> Path:
    """The fixtures' corpus as a text file, one sentence per line: what the demo trains its SAEs on."""
    from tools.fixtures.tiny_models import CORPUS

    path = DEMO / "corpus.txt"
    path.write_text("\n".join(s.strip() + "." for line in CORPUS.splitlines() for s in line.split(".") if s.strip()))
    return path


# every pass on the demo's SFT rows; the curvature (sharpness, LiSSA, pass 3's K) on its first 16 rows
SIMULATE = ["--batch-size", "4", "--hessian-rows", "16", "--sharpness-budget", "30", "--passes", "0,1,2,2b,3"]


def demo_dataset(clean: bool = False) -> Path:
    """The corpus as SFT rows (each sentence's first words the instruction, the rest the response), one with
    assistant-speak: what the demo simulates a fine-tune on; `clean` leaves that row out (for simulate compare)."""
    import json

    from tools.fixtures.tiny_models import CORPUS

    rows = []
    for line in CORPUS.splitlines():
        for s in line.split("."):
            words = s.split()
            if len(words) > 5:
                rows.append({"instruction": " ".join(words[:4]), "response": " " + " ".join(words[4:]) + "."})
    rows[3]["response"] = " Certainly! As an AI language model, I'd be happy to help with that."
    path = DEMO / ("sft-clean.jsonl" if clean else "sft.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if not (clean and i == 3)))
    return path


def record_training_log(base: Path, steps: int = 240, ramp_from: int = 100, ramp: float = 1.04) -> tuple[Path, Path]:
    """A real short training run logged with StepLogger, for the watch card: healthy at first, then
    the learning rate grows ×1.04 per step so the engine has something to say; with its analysis
    checkpoints (for the analysis card). Returns (the step log, the analysis folder)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tools.fixtures.tiny_models import CORPUS
    from tools.watch import StepLogger

    path = DEMO / "run" / "metrics.jsonl"
    analysis = DEMO / "run" / "analysis"
    if path.exists() and analysis.is_dir():
        return path, analysis
    shutil.rmtree(analysis, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager")  # eager returns attention weights
    batch = tok(CORPUS.splitlines()[:8], return_tensors="pt", padding=True, truncation=True, max_length=32)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    log = StepLogger(model, path=path, analysis_dir=analysis)
    for step in range(1, steps + 1):
        if step > ramp_from:
            for group in optimizer.param_groups:
                group["lr"] *= ramp
        out = model(**batch, labels=labels, output_attentions=True)
        optimizer.zero_grad()
        out.loss.backward()
        log.step(step, out.loss, optimizer, epoch=step // 40, attentions=out.attentions)
        optimizer.step()
    log.close()
    return path, analysis


def trainer_checkpoints(base: Path) -> Path:
    """A real transformers.Trainer run from the base, saving checkpoint-N/ every 4 of its 16 steps."""
    from tools.fixtures.tiny_models import trainer_run

    out = DEMO / "checkpoints" / "trainer-run"
    if not (out / "checkpoint-16").exists():
        shutil.rmtree(out, ignore_errors=True)
        trainer_run(base, out, steps=16, save_steps=4)
    return out


def main() -> None:
    DEMO.mkdir(parents=True, exist_ok=True)
    home = Path(os.environ.get("TRAINSPECT_HOME") or DEMO / "home")
    os.environ["TRAINSPECT_HOME"] = str(home)
    os.environ["TRAINSPECT_MIRROR_URL"] = URL
    print("building a tiny GPT-2-style model, a real fine-tune and a real LoRA adapter …")
    base, full, lora = build_models()
    metrics, analysis = record_training_log(base)
    start_mirror(home)

    corpus, saes = demo_corpus(), DEMO / "saes"
    sims = [str(DEMO / "simulations" / name) for name in ("corpus-sft", "sft-clean")]  # compared once both ran
    shutil.rmtree(saes, ignore_errors=True)  # sae train writes only into new directories
    steps = [
        ["session", "start", "--id", "demo", "--model", str(base)],
        ["weight-diff", "--checkpoint", str(full), "--name", "full-ft"],
        ["weight-diff", "--checkpoint", str(lora), "--name", "lora"],
        ["residual-drift", "--checkpoint", str(full), "--name", "full-ft"],
        ["residual-drift", "--checkpoint", str(lora), "--name", "lora"],
        ["sae", "train", "--layer", "1", "--dataset", str(corpus), "--d-sae", "128", "--out", str(saes / "L1")],
        ["load", "sae", str(saes / "L1")],
        ["simulate", "--dataset", str(demo_dataset()), "--name", "corpus-sft", "--out", sims[0], *SIMULATE],
        ["simulate", "--dataset", str(demo_dataset(clean=True)), "--out", sims[1], *SIMULATE[:-1], "0,1,2,2b"],
        ["simulate", "compare", *sims],
        ["sae", "diff", "--checkpoint", str(full), "--name", "full-ft"],
        ["sae", "diff", "--checkpoint", str(lora), "--name", "lora"],
        [
            "sae",
            "train",
            "--layer",
            "1",
            "--checkpoint",
            str(full),
            "--dataset",
            str(corpus),
            "--d-sae",
            "128",
            "--out",
            str(saes / "L1-full-ft"),
        ],
        ["sae", "align", str(saes / "L1"), str(saes / "L1-full-ft")],
        ["merge-analysis", "--checkpoint", str(lora), "--name", "lora"],
        ["trajectory-analysis", "--dir", str(trainer_checkpoints(base)), "--name", "trainer"],
        ["model-diff", "--checkpoint", str(full), "--name", "full-ft"],
        ["model-diff", "--checkpoint", str(lora), "--name", "lora"],
        ["regressions"],
        ["watch", "--metrics", str(metrics), "--run", "demo-run"],
        ["analysis", "--dir", str(analysis)],
        ["session", "status"],
    ]
    for argv in steps:
        print(f"\n$ trainspect {' '.join(argv)}", flush=True)
        code = subprocess.run([sys.executable, "-m", "toolserver.cli", *argv]).returncode
        if code == 2 and argv[0] == "merge-analysis":
            print("(merge-analysis exits 2 when its gate fails: a verdict, not an error; the demo goes on)")
        elif code != 0:
            raise SystemExit(code)
    print(f"\nweb mirror: {URL}  (session 'demo'; stop it with: kill $(cat {DEMO / 'web.pid'}))")


if __name__ == "__main__":
    main()
