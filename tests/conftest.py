"""Shared fixtures. Nothing here touches the network: model hubs are unreachable and weights are built."""

import os

# Before anything imports huggingface_hub (it reads these once, at import).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def asymrnr_cache_dir(tmp_path_factory):
    """``ASYMRNR_CACHE`` points at a session temp folder, so tests never write to ~/.cache."""
    path = tmp_path_factory.mktemp("asymrnr-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("ASYMRNR_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def tiny_transformer_factory():
    """``factory(style="5b", seed=0, num_layers=2)`` -> a fresh tiny CogVideoXTransformer3DModel (float32, eval).

    Styles: "2b" (no RoPE; text length must be 226), "5b" (RoPE), "1.5" (RoPE, patch_size_t=2).
    """
    from asymrnr.models.tiny import build_tiny_transformer

    def factory(style: str = "5b", seed: int = 0, num_layers: int = 2):
        return build_tiny_transformer(style, seed=seed, num_layers=num_layers)

    return factory


@pytest.fixture(scope="session")
def tiny_pipeline(asymrnr_cache_dir):
    """The tiny 5B-style CogVideoXPipeline, loaded once per session through ``from_pretrained`` from the
    session cache. Shared: a test that changes it (processors, hooks, scheduler) must restore it."""
    from asymrnr.models.tiny import load_tiny_pipeline

    pipe = load_tiny_pipeline("5b")
    pipe.set_progress_bar_config(disable=True)
    return pipe
