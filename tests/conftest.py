import pytest
import torch

# Same threading as the CLI: one intra-op thread (fast and deterministic on small batches).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def world_log(tmp_path_factory: pytest.TempPathFactory):
    """A tiny marketplace world's logs (5 Parquet shards of 300 requests) for the scale-out and
    resume tests."""
    from blendrank.worlds.generate import generate_world
    from blendrank.worlds.presets import world_config

    out = tmp_path_factory.mktemp("world")
    cfg = world_config("quick", overrides=["n_items=300", "n_users=200", "candidates=20", "page_size=5"])
    generate_world(cfg, 1500, out, shard_requests=300, eval_requests=0)
    return out


SMALL_WORLD = ["n_items=400", "n_users=300", "candidates=20", "page_size=5"]


@pytest.fixture
def small_world_logs(tmp_path):
    """`blendrank world generate` of a small quick-preset world: its logs/ directory (the world's
    objective.yaml is beside it)."""
    from typer.testing import CliRunner

    from blendrank.cli.main import app

    out = tmp_path / "world"
    sets = [a for s in SMALL_WORLD for a in ("--set", s)]
    r = CliRunner().invoke(app, ["world", "generate", "--world", "marketplace", "--preset", "quick", "--requests", "600",
                                 "--seed", "0", "--eval-requests", "0", "--out", str(out), *sets])
    assert r.exit_code == 0, r.output
    return out / "logs"
