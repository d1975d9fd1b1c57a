"""The one checkpoint loader every tool uses: a lazy, uniform view of any accepted checkpoint.

Accepted: `.pt`/`.bin` ({step, state_dict}, {model_state_dict}, {model} or a bare state dict), `.safetensors`,
an HF save_pretrained directory (single file or sharded with `*.index.json`), a PEFT LoRA adapter directory.
Nothing is unpickled beyond plain tensors (torch.load weights_only=True), and tensors are read one at a time:
safetensors through safe_open and zip-format torch files through mmap, so an untouched tensor costs no memory.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

import torch
from isal import isal_zlib
from safetensors import SafetensorError, safe_open

from session.checkpoint_keys import ALWAYS_TIED, INPUT_EMBEDDINGS, OUTPUT_EMBEDDINGS, normalise_key
from session.checkpoint_lora import (
    AdapterConfig,
    LoraPair,
    module_name,
    read_adapter_config,
    split_adapter_keys,
    target_key,
)
from toolserver.contract import ToolError, first_line, missing

Kind = Literal["full", "lora"]
StepSource = Literal["file", "trainer_state"]
_NESTED_STATE_DICTS = ("state_dict", "model_state_dict", "model", "module")
_STEP_KEYS = ("step", "global_step")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
SMALL_RECORD = 64 << 20  # zip records other than tensor data (the pickle, version) are CRC-checked whole up to this
_CONV1D_MODEL_TYPES = ("gpt2", "openai-gpt")  # HF models built from transformers' Conv1D (weight stored in×out)


class _Source(Protocol):
    """One weights file: raw tensor names, their shapes, one tensor at a time."""

    def keys(self) -> list[str]: ...

    def shape(self, raw_key: str) -> tuple[int, ...]: ...

    def tensor(self, raw_key: str) -> torch.Tensor: ...

    def mapped(self, raw_key: str) -> torch.Tensor:
        """The tensor over the file's mapping, its bytes neither read nor checked (for prefetching)."""
        ...


class _SafetensorsFile:
    """safe_open keeps the file mapped; get_tensor returns a tensor backed by that mapping."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._f = safe_open(str(path), framework="pt", device="cpu")
            self._keys = list(self._f.keys())
            self.metadata: dict[str, str] = self._f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise ToolError(
                f"{path} is not a readable safetensors file: {first_line(e)}",
                "the file may be truncated or still being written",
            ) from None

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, raw_key: str) -> tuple[int, ...]:
        return tuple(self._f.get_slice(raw_key).get_shape())

    def tensor(self, raw_key: str) -> torch.Tensor:
        try:
            return self._f.get_tensor(raw_key)
        except SafetensorError as e:
            raise ToolError(f"{self.path}[{raw_key}] is unreadable: {first_line(e)}") from None

    def mapped(self, raw_key: str) -> torch.Tensor:
        return self.tensor(raw_key)  # safetensors has no checksum: reading is mapping


class _TorchFile:
    """torch.load(weights_only=True, mmap=True): tensors stay in the file's mapping until touched.

    A zip-format file's records carry CRC-32s that torch never checks; a storage is checked against its record the
    first time one of its tensors is read, so a flipped byte is refused rather than read as a wrong number.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        obj = _torch_load(path)
        self.tensors, self.step = _state_dict(obj, path)
        self._records = _storage_records(path, dict(_all_tensors(obj, "")))
        self._checked: set[int] = set()

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, raw_key: str) -> tuple[int, ...]:
        return tuple(self.tensors[raw_key].shape)

    def tensor(self, raw_key: str) -> torch.Tensor:
        t = self.tensors[raw_key]
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self._records and ptr not in self._checked:
            record = self._records[ptr]
            if isal_zlib.crc32((ctypes.c_char * storage.nbytes()).from_address(ptr)) != record.CRC:
                raise ToolError(
                    f"{self.path}: tensor {raw_key} fails its CRC-32 check (record {record.filename})",
                    "the file is damaged; re-save or re-download it",
                )
            self._checked.add(ptr)
        return t

    def mapped(self, raw_key: str) -> torch.Tensor:
        return self.tensors[raw_key]


def _torch_load(path: Path) -> Any:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            # legacy (pre-zip) torch.save format cannot be mapped; still weights_only
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files (UnpicklingError, RuntimeError, KeyError, EOFError)
        if "Weights only load failed" in str(e):
            raise ToolError(
                f"refusing to load {path}: it pickles objects other than tensors ({_blocked_global(e)})",
                "weights_only=True; re-save the checkpoint as a plain state dict or safetensors",
            ) from None
        raise ToolError(
            f"{path} is not a readable torch checkpoint: {first_line(e)}",
            "the file may be truncated or not a torch.save file",
        ) from None


def _all_tensors(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor anywhere in a loaded checkpoint (a state dict beside optimizer state, say), by dotted path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _all_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _all_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def _storage_records(path: Path, tensors: dict[str, torch.Tensor]) -> dict[int, zipfile.ZipInfo]:
    """Each storage of a zip-format checkpoint (by address) → its data record, after checking that every storage
    is exactly its record's size. torch.load with mmap maps storages straight from the file and does not compare
    the two (without mmap it does): a truncated record would be read on into the next one's bytes, as silently
    wrong numbers. Storages are mapped in file order, so the k-th distinct storage by address is the k-th data
    record by offset."""
    if not zipfile.is_zipfile(path):
        return {}  # the legacy format is never mapped: torch.load checks it
    with zipfile.ZipFile(path) as z:
        records = sorted(
            (i for i in z.infolist() if "/data/" in i.filename and i.file_size), key=lambda i: i.header_offset
        )
        for info in z.infolist():  # the pickle names every tensor's shape, dtype and offset: it must be intact too
            if "/data/" not in info.filename and info.file_size <= SMALL_RECORD:
                try:
                    z.read(info)
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise ToolError(f"{path}: record {info.filename} is damaged ({first_line(e)})") from None
    storages: dict[int, tuple[int, list[str]]] = {}
    for key, t in tensors.items():
        st = t.untyped_storage()
        if st.nbytes():
            storages.setdefault(st.data_ptr(), (st.nbytes(), []))[1].append(key)
    if len(storages) != len(records):
        raise ToolError(
            f"{path}: {len(storages)} tensor storages but {len(records)} data records",
            "the file is damaged; re-save it",
        )
    out: dict[int, zipfile.ZipInfo] = {}
    for ptr, record in zip(sorted(storages), records, strict=True):
        nbytes, keys = storages[ptr]
        if nbytes != record.file_size:
            raise ToolError(
                f"{path}: tensor {keys[0]} needs {nbytes} bytes but its record {record.filename} holds "
                f"{record.file_size}",
                "the file is truncated or damaged; re-save it",
            )
        out[ptr] = record
    return out


def _blocked_global(e: Exception) -> str:
    m = re.search(r"(unsupported GLOBAL [^\s]+|Unsupported global: [^\s]+|Unsupported operand [^\s]+)", str(e))
    return m.group(1) if m else "unsupported pickle content"


def _state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], int | None]:
    if not isinstance(obj, dict):
        raise ToolError(f"{path} holds a {type(obj).__name__}, not a state dict")
    step = next((int(obj[k]) for k in _STEP_KEYS if isinstance(obj.get(k), int | float)), None)
    inner = next((obj[k] for k in _NESTED_STATE_DICTS if isinstance(obj.get(k), dict)), obj)
    tensors = {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ToolError(
            f"{path} holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:6]))})",
            "expected {step, state_dict} or a bare state dict",
        )
    return tensors, step


def _open_file(path: Path) -> _SafetensorsFile | _TorchFile:
    if path.suffix == ".safetensors":
        return _SafetensorsFile(path)
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return _TorchFile(path)
    raise ToolError(
        f"{path}: unknown checkpoint format {path.suffix or '(no suffix)'!r}",
        "expected .pt/.bin, .safetensors, a save_pretrained directory or a PEFT adapter directory",
    )


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_MADV_WILLNEED = 3
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def will_need(tensor: torch.Tensor) -> None:
    """Ask the kernel to read ahead the pages behind a (file-mapped, contiguous) tensor; harmless otherwise.

    Lets the disk fetch the next tensor while the current one is being computed on.
    """
    if _LIBC is None or not tensor.is_contiguous() or tensor.numel() == 0:
        return
    start = tensor.data_ptr()
    aligned = start - start % _PAGE
    _LIBC.madvise(
        ctypes.c_void_p(aligned),
        ctypes.c_size_t(start + tensor.numel() * tensor.element_size() - aligned),
        _MADV_WILLNEED,
    )


@dataclass
class CheckpointReader:
    """A checkpoint as normalised tensor names, read lazily one tensor at a time.

    kind "full": every weight is in keys(). kind "lora": keys() holds only the adapter's plain tensors
    (modules_to_save, trained biases); the low-rank updates come from lora_pairs().
    """

    path: Path
    kind: Kind
    step: int | None = None
    step_source: StepSource | None = None  # where `step` was read: the weights file, or trainer_state.json beside it
    config: dict[str, Any] | None = None  # config.json of a save_pretrained directory
    adapter: AdapterConfig | None = None
    tied: list[str] = field(default_factory=list)  # output embeddings dropped as aliases of the input one
    _index: dict[str, tuple[_Source, str]] = field(default_factory=dict, repr=False)
    _pairs: dict[str, LoraPair] = field(default_factory=dict, repr=False)

    def keys(self) -> list[str]:
        return list(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def shape(self, key: str) -> tuple[int, ...]:
        source, raw = self._entry(key)
        return source.shape(raw)

    def get(self, key: str) -> torch.Tensor:
        source, raw = self._entry(key)
        return source.tensor(raw)

    def mapped(self, key: str) -> torch.Tensor:
        """The tensor over its file's mapping, its bytes neither read nor checked: for reading ahead only."""
        source, raw = self._entry(key)
        return source.mapped(raw)

    def prefetch(self, key: str) -> None:
        """Start reading a tensor's pages in the background (madvise WILLNEED on its file mapping)."""
        if key in self._index:
            will_need(self.mapped(key))

    def lora_pairs(self) -> dict[str, LoraPair]:
        """Normalised base-weight key -> its LoRA pair (factors read when asked for)."""
        return dict(self._pairs)

    def tie(self, output_key: str, input_key: str) -> None:
        """Treat output_key as an alias of input_key (tied embeddings), so it is never counted twice."""
        if output_key not in self._index:
            return
        if input_key in self._index:
            del self._index[output_key]
            self.tied.append(output_key)
        else:
            self._index[input_key] = self._index.pop(output_key)

    def _entry(self, key: str) -> tuple[_Source, str]:
        try:
            return self._index[key]
        except KeyError:
            raise ToolError(f"{self.path} has no tensor {key!r}") from None

    def close(self) -> None:
        self._index.clear()
        self._pairs.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _index_sources(
    path: Path, sources: list[tuple[_Source, list[str]]], rename: Callable[[str], str] | None = None
) -> dict[str, tuple[_Source, str]]:
    index: dict[str, tuple[_Source, str]] = {}
    for source, raw_keys in sources:
        for raw in raw_keys:
            key = normalise_key(rename(raw) if rename else raw)
            if key in index:
                raise ToolError(
                    f"{path}: tensors {index[key][1]!r} and {raw!r} both normalise to {key!r}",
                    "the checkpoint mixes two wrappings of the same model",
                )
            index[key] = (source, raw)
    return index


class _LazyShards:
    """A sharded save_pretrained directory: each shard is opened the first time one of its tensors is asked for."""

    def __init__(self, directory: Path, index_file: Path) -> None:
        try:
            self.weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ToolError(f"{index_file} is not a readable shard index: {first_line(e)}") from None
        self.directory = directory
        self._open: dict[str, _SafetensorsFile | _TorchFile] = {}

    def _shard(self, raw_key: str) -> _SafetensorsFile | _TorchFile:
        name = self.weight_map[raw_key]
        if name not in self._open:
            shard = self.directory / name
            if not shard.is_file():
                raise ToolError(f"{shard} is listed in the shard index but missing")
            self._open[name] = _open_file(shard)
        return self._open[name]

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, raw_key: str) -> tuple[int, ...]:
        return self._shard(raw_key).shape(raw_key)

    def tensor(self, raw_key: str) -> torch.Tensor:
        return self._shard(raw_key).tensor(raw_key)

    def mapped(self, raw_key: str) -> torch.Tensor:
        return self._shard(raw_key).mapped(raw_key)


def _trainer_step(directory: Path) -> int | None:
    state = directory / "trainer_state.json"
    try:
        step = json.loads(state.read_text()).get("global_step") if state.is_file() else None
    except (OSError, ValueError):
        return None
    return int(step) if isinstance(step, int | float) else None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ToolError(f"{path} is not valid JSON: {first_line(e)}") from None
    return data if isinstance(data, dict) else None


def _open_adapter(directory: Path) -> CheckpointReader:
    cfg = read_adapter_config(directory / "adapter_config.json")
    weights = next((directory / n for n in _ADAPTER_FILES if (directory / n).is_file()), None)
    if weights is None:
        raise ToolError(f"{directory} has adapter_config.json but no {' or '.join(_ADAPTER_FILES)}")
    source = _open_file(weights)
    modules, rest = split_adapter_keys(source.keys())
    pairs: dict[str, LoraPair] = {}
    for raw_module, parts in modules.items():
        if "A" not in parts or "B" not in parts:
            raise ToolError(f"{weights}: {raw_module} has lora_{'A' if 'A' not in parts else 'B'} missing")
        pair = _lora_pair(weights, source, cfg, raw_module, parts)
        pairs[pair.target] = pair
    plain = [k for k in rest if ".original_module." not in k]
    index = _index_sources(weights, [(source, plain)], rename=_strip_modules_to_save)
    step = _trainer_step(directory)
    reader = CheckpointReader(
        path=directory,
        kind="lora",
        step=step,
        step_source="trainer_state" if step is not None else None,
        adapter=cfg,
        _index=index,
    )
    reader._pairs = pairs
    return reader


def _strip_modules_to_save(raw: str) -> str:
    return raw.replace(".modules_to_save.default.", ".").replace(".modules_to_save.", ".")


def _lora_pair(weights: Path, source: _Source, cfg: AdapterConfig, raw_module: str, parts: dict[str, str]) -> LoraPair:
    a_key, b_key = parts["A"], parts["B"]
    embedding = "embedding" in parts
    a_shape, b_shape = source.shape(a_key), source.shape(b_key)
    # stored shapes: Linear A (r, in), B (out, r); Embedding lora_embedding_A (r, num), lora_embedding_B (dim, r)
    if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
        raise ToolError(f"{weights}: {a_key} {list(a_shape)} and {b_key} {list(b_shape)} are not a LoRA pair")
    name = module_name(raw_module)
    r, alpha = cfg.rank_alpha(name)
    if a_shape[0] != r:
        raise ToolError(
            f"{weights}: {a_key} has rank {a_shape[0]} but adapter_config.json gives r={r} for {name}",
            "the adapter config does not belong to these weights",
        )
    return LoraPair(
        target=target_key(raw_module),
        module=name,
        rank=r,
        alpha=alpha,
        scale=cfg.scale(r, alpha),
        embedding=embedding,
        transposed=embedding or cfg.fan_in_fan_out,
        _read_a=lambda: source.tensor(a_key),
        _read_b=lambda: source.tensor(b_key),
        a_shape=a_shape,
        b_shape=b_shape,
    )


def _open_dir(directory: Path) -> CheckpointReader:
    if (directory / "adapter_config.json").is_file():
        return _open_adapter(directory)
    config = _read_json(directory / "config.json")
    step = _trainer_step(directory)
    for name in _INDEXES:
        if (directory / name).is_file():
            shards = _LazyShards(directory, directory / name)
            return CheckpointReader(
                path=directory,
                kind="full",
                step=step,
                step_source="trainer_state" if step is not None else None,
                config=config,
                _index=_index_sources(directory, [(shards, shards.keys())]),
            )
    for name in _SINGLE_FILES:
        if (directory / name).is_file():
            reader = _open_single(directory / name)  # a step stored in the weights file wins over the trainer's
            reader.path, reader.config = directory, config
            if reader.step is None and step is not None:
                reader.step, reader.step_source = step, "trainer_state"
            return reader
    raise ToolError(
        f"{directory} holds no model weights", f"expected {', '.join(_SINGLE_FILES + _INDEXES)} or adapter_config.json"
    )


def _open_single(path: Path) -> CheckpointReader:
    source = _open_file(path)
    step = source.step if isinstance(source, _TorchFile) else _metadata_step(source.metadata)
    return CheckpointReader(
        path=path,
        kind="full",
        step=step,
        step_source="file" if step is not None else None,
        _index=_index_sources(path, [(source, source.keys())]),
    )


def _metadata_step(metadata: dict[str, str]) -> int | None:
    value = metadata.get("step") or metadata.get("global_step")
    return int(value) if value and value.isdigit() else None


def open_checkpoint(path: str | Path) -> CheckpointReader:
    """Open any accepted checkpoint lazily; bad input raises a one-line ToolError naming the file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ToolError(
            f"checkpoint {p} {missing(p)}",
            "pass a .pt/.bin/.safetensors file or a save_pretrained / adapter directory",
        )
    return _open_dir(p) if p.is_dir() else _open_single(p)


@dataclass(frozen=True)
class Alignment:
    """How a checkpoint's tensors line up with the base's (after tied embeddings are resolved)."""

    common: list[str]
    only_in_base: list[str]
    only_in_checkpoint: list[str]
    tied: list[str]
    mismatched: tuple[str, ...] = ()  # lenient only: "key [ckpt shape] vs base [base shape]", left out of common
    missing_targets: tuple[str, ...] = ()  # lenient only: LoRA targets the base lacks, left out of lora_pairs()


def apply_ties(base: CheckpointReader, *others: CheckpointReader) -> None:
    """With tie_word_embeddings (HF's default), the output embedding is the input one: keep one name."""
    for reader in (base, *others):
        for output_key, kept in ALWAYS_TIED.items():
            reader.tie(output_key, kept)
    if base.config is not None and not base.config.get("tie_word_embeddings", True):
        return
    input_key = next((k for k in INPUT_EMBEDDINGS if k in base), None)
    if input_key is None:
        return
    for reader in (base, *others):
        for output_key in OUTPUT_EMBEDDINGS:
            reader.tie(output_key, input_key)


def align(base: CheckpointReader, ckpt: CheckpointReader, *, lenient: bool = False) -> Alignment:
    """Match checkpoint tensors to base tensors; another architecture is a ToolError naming keys and shapes.

    lenient (the merge gate, which reports them as failed checks): tensors whose shapes do not fit and LoRA
    targets the base lacks are listed in the alignment and left out, instead of refusing the checkpoint."""
    if base.kind != "full":
        raise ToolError(f"the base {base.path} is a LoRA adapter", "start the session on the full base model")
    apply_ties(base, ckpt)
    base_keys = set(base.keys())
    common = [k for k in ckpt.keys() if k in base_keys]
    pairs = ckpt.lora_pairs()
    missing_targets = [k for k in pairs if k not in base_keys]
    foreign = [k for k in ckpt.keys() if k not in base_keys]
    refuse = (not common and len(missing_targets) == len(pairs)) or len(foreign) > len(common)
    if refuse and not (lenient and pairs):  # an adapter whose targets are all missing is the gate's no-op
        mine = [k for k in pairs if k in missing_targets] + foreign
        raise ToolError(
            f"{ckpt.path} shares {'no' if not common else 'few'} weight names with the base {base.path}: "
            f"checkpoint has {_sample(mine)}; base has {_sample(base.keys())}",
            "is the checkpoint from another architecture?",
        )
    if missing_targets and not lenient:
        raise ToolError(
            f"{ckpt.path}: LoRA targets not in the base {base.path}: {_sample(missing_targets)}",
            "is the adapter for another model?",
        )
    misfit = {k for k in common if ckpt.shape(k) != base.shape(k)}
    mismatched = [f"{k} {list(ckpt.shape(k))} vs base {list(base.shape(k))}" for k in common if k in misfit]
    conv1d = (base.config or {}).get("model_type") in _CONV1D_MODEL_TYPES
    for k, pair in pairs.items():
        oriented = None if k in missing_targets else _orient(pair, base.shape(k), conv1d)
        if oriented is None:
            if k not in missing_targets:
                mismatched.append(f"{k} LoRA {list(pair.shape)} vs base {list(base.shape(k))}")
            del ckpt._pairs[k]
        else:
            ckpt._pairs[k] = oriented
    if lenient:
        common = [k for k in common if k not in misfit]
    elif mismatched:
        raise ToolError(
            f"{ckpt.path} does not fit the base {base.path}: {len(mismatched)} shape mismatches, e.g. "
            + "; ".join(mismatched[:3]),
            "is the checkpoint from another architecture or size?",
        )
    ckpt_keys = set(ckpt.keys()) | set(pairs)
    return Alignment(
        common=common,
        only_in_base=[k for k in base.keys() if k not in ckpt_keys] if ckpt.kind == "full" else [],
        only_in_checkpoint=foreign,
        tied=sorted(set(base.tied) | set(ckpt.tied)),
        mismatched=tuple(mismatched),
        missing_targets=tuple(missing_targets),
    )


def _orient(pair: LoraPair, base_shape: tuple[int, ...], conv1d: bool) -> LoraPair | None:
    """Which way round ΔW is stored follows the base module, as in peft (Conv1D and embeddings: transposed).

    A non-square weight settles it by shape; a square one by the module type (the norms and the stable
    rank are the same either way, but merged weights are not).
    """
    plain = (pair.b_shape[0], pair.a_shape[1])
    fits_plain, fits_flipped = base_shape == plain, base_shape == plain[::-1]
    if not (fits_plain or fits_flipped):
        return None
    transposed = pair.embedding or conv1d if fits_plain and fits_flipped else fits_flipped
    return replace(pair, transposed=transposed)


def _sample(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
