"""Data-parallel training: the counter-based generator, the sampler built on it, and two real
gloo processes (launched by torchrun) against one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy import stats

from rbm_core.distributed import (
    CounterGibbs,
    CounterKey,
    DataParallelConfig,
    DataParallelTrainer,
    shard,
)
from rbm_core.io import load_model
from rbm_core.models import RBM, RBMConfig
from rbm_core.partition import exact_log_likelihood, visible_distribution

ALPHA = 1e-3  # false-alarm rate of every statistical test here


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add overhead, and a lot of it on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_uniforms_of_an_id_do_not_depend_on_its_neighbours():
    key = CounterKey.from_seed(7).fold(3)
    ids = torch.arange(50)
    whole = key.uniform(ids, 9, torch.float64)
    for part in torch.tensor_split(ids, 3):
        assert torch.equal(key.uniform(part, 9, torch.float64), whole[part])
    assert not torch.equal(key.fold(1).uniform(ids, 9), key.uniform(ids, 9))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniforms_are_uniform_and_pairwise_independent(dtype):
    u = CounterKey.from_seed(0).uniform(torch.arange(20_000), 10, dtype).double()
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    bins = 20
    counts = torch.bincount((u * bins).long().reshape(-1), minlength=bins)
    assert stats.chisquare(counts.numpy()).pvalue > ALPHA
    # neighbouring ids and neighbouring columns: joint cells of a 5x5 grid
    for a, b in [(u[:-1, 0], u[1:, 0]), (u[:, 0], u[:, 1])]:
        cells = torch.bincount(((a * 5).long() * 5 + (b * 5).long()), minlength=25)
        assert stats.chisquare(cells.numpy()).pvalue > ALPHA


@pytest.mark.parametrize("visible,num_values", [("bernoulli", 2), ("softmax", 3)])
def test_counter_gibbs_samples_the_model(visible, num_values):
    """Chains run with counter-based noise reach the exact visible distribution (chi-squared)."""
    gen = torch.Generator().manual_seed(1)
    model = RBM(RBMConfig(3, 2, visible, num_values, init_std=1.0), dtype=torch.float64, generator=gen)
    with torch.no_grad():
        model.visible_bias.normal_(0, 0.5, generator=gen)
        model.hidden_bias.normal_(0, 0.5, generator=gen)
    states, log_p = visible_distribution(model)
    num_chains = 20_000
    sampler, key, ids = CounterGibbs(), CounterKey.from_seed(5), torch.arange(num_chains)
    start = states[torch.zeros(num_chains, dtype=torch.long)]  # all chains in one state
    chain = sampler.run(model, sampler.init(model, start, key.fold(0), ids), 30, key.fold(1), ids)
    flat = model.visible.flatten(chain.visible)
    index = (flat.unsqueeze(1) == model.visible.flatten(states).unsqueeze(0)).all(-1).double().argmax(1)
    observed = torch.bincount(index, minlength=len(states)).numpy()
    expected = (log_p.detach().exp() * num_chains).numpy()
    assert stats.chisquare(observed, expected).pvalue > ALPHA


def test_shards_partition_the_batch():
    for count, world_size in [(10, 2), (11, 2), (7, 3), (2, 3)]:
        parts = [shard(count, r, world_size) for r in range(world_size)]
        assert torch.equal(torch.cat(parts), torch.arange(count))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _planted(num_rows: int, num_visible: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.bernoulli(torch.full((2, num_visible), 0.5), generator=gen)
    rows = prototypes[torch.randint(0, 2, (num_rows,), generator=gen)]
    return torch.where(torch.rand(rows.shape, generator=gen) < 0.05, 1 - rows, rows)


@pytest.mark.parametrize("persistent", [True, False])
def test_one_process_training_raises_the_exact_likelihood(persistent):
    data = _planted(400, 8, seed=2)
    model = RBM(RBMConfig(8, 4), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = float(exact_log_likelihood(model, data.double()).mean())
    config = DataParallelConfig(batch_size=40, epochs=40, learning_rate=0.1, k=1, persistent=persistent, seed=3)
    DataParallelTrainer(model, config).fit(data)
    with torch.no_grad():
        after = float(exact_log_likelihood(model, data.double()).mean())
    # Two planted prototypes with 5% noise: the data's entropy is about 8 * 0.199 + log 2 = 2.3 nats,
    # so -2.3 is the best a model can do; the untrained model sits near 8 log 2 = -5.5.
    assert after > -3.0, (before, after)


def _run(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("persistent", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["pcd", "cd"])
def test_two_gloo_processes_match_one_process(tmp_path, persistent):
    """torchrun, 2 processes with gloo vs a plain single process: the same parameters, to float64
    round-off. The global batch (25) and chain count (13) are odd, so the shards are uneven."""
    data = _planted(300, 12, seed=4).to(torch.int64)
    torch.save({"train": data[:250], "valid": data[250:]}, tmp_path / "snapshot.pt")
    common = [
        "--data",
        "snapshot.pt",
        "--hidden",
        "5",
        "--epochs",
        "3",
        "--batch-size",
        "25",
        "--num-chains",
        "13",
        "--learning-rate",
        "0.05",
        "--k",
        "2",
        "--seed",
        "11",
        "--dtype",
        "float64",
        "--num-values",
        "1",
    ]
    if not persistent:
        common.append("--cd")
    _run([sys.executable, "-m", "rbm_core.distributed", *common, "--out", "one.pt"], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    _run([*torchrun, "-m", "rbm_core.distributed", *common, "--out", "two.pt", "--gloo"], tmp_path)
    one, two = load_model(tmp_path / "one.pt"), load_model(tmp_path / "two.pt")
    initial = RBM(one.config, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    for name, param in one.state_dict().items():
        assert torch.allclose(two.state_dict()[name], param, rtol=0, atol=1e-10), name
    # and training did move them
    assert (one.weight - initial.weight).abs().max() > 1e-2
