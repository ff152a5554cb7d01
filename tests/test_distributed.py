"""Data-parallel training on loopback (gloo): 2 processes on shards train as 1 process on the whole batch.

The two-process runs are subprocesses with torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free
port); the one-process reference runs here meanwhile. A VQ-VAE draws no noise (point-mass guide); a GAN draws
z ~ N(0, I) and a VAE on the digits its guide's noise, and each rank draws one process's noise for its rows
(GlobalDraws). So the only differences are float32
summation orders (the gradients summed over a shard then over the ranks, not over the batch at once): over 16-19
Adam steps of O(1e-3) each, 1e-5 absolute (about 100 float32 ulps of the weights) bounds them (measured: 3e-8
VAE, 5e-7 VQ-VAE, 4e-8 GAN); a wrong reduction (a rank on its own half, averaged plate terms, an EMA codebook of
half a batch) or each rank's own guide noise (6e-2 on the VAE) moves the weights or the reported loss by far more
(checked below on the gradients, whose sum over the plate is twice their mean).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import distributed_worker as worker
import pytest
import torch

from ppgen import runs
from ppgen.cli import main
from ppgen.errors import UserError
from ppgen.inference import distributed
from ppgen.inference.distributed import Group

ROOT = Path(__file__).resolve().parent.parent
ATOL = 1e-5


def _start(argv: list[str], world: int, port: int, **env) -> list[subprocess.Popen]:
    base = {**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "PPGEN_DIST_TIMEOUT": "30", **env}
    return [subprocess.Popen([sys.executable, *argv], env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            for r in range(world)]


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, err))
    return out


def _flat(weights: dict) -> dict[str, torch.Tensor]:
    if "critic" in weights:
        return {**{"pair." + k: v for k, v in weights["pair"].items()},
                **{"critic." + k: v for k, v in weights["critic"].items()}}
    return weights


def _figures(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("seconds", "wall", "images_per_s")} for row in history]


def test_two_processes_train_as_one_process_on_the_whole_batch(tmp_path):
    procs = _start([str(ROOT / "tests" / "distributed_worker.py"), str(tmp_path)], 2, distributed.free_port())
    reference = {"svi": worker.train_svi(), "adversarial": worker.train_adversarial(), "vae": worker.train_vae()}
    grads = worker.svi_gradients(0, 1)
    for code, err in _finish(procs):
        assert code == 0, err[-2000:]
    # the plate scaling: the shards' gradients add up to the whole batch's (an average would be half of it)
    for rank in (0, 1):
        shards = torch.load(tmp_path / f"gradients-rank{rank}.pt")
        assert shards.keys() == grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(shards[name], g, atol=ATOL, rtol=1e-4, msg=name)
    for kind, (weights, history) in reference.items():
        ranks = [torch.load(tmp_path / f"{kind}-rank{r}.pt", weights_only=False) for r in (0, 1)]
        one, (two0, two1) = _flat(weights), (_flat(r["weights"]) for r in ranks)
        assert one.keys() == two0.keys()
        for name in one:
            assert torch.equal(two0[name], two1[name]), f"{kind}: {name} differs between the ranks"
            torch.testing.assert_close(two0[name], one[name], atol=ATOL, rtol=0, msg=f"{kind}: {name}")
        moved = max((one[k].float() - w0.float()).abs().max().item() for k, w0 in _initial(kind).items())
        assert moved > 100 * ATOL  # training moved the weights far beyond the tolerance
        for row2, row1 in zip(_figures(ranks[0]["history"]), _figures(history), strict=True):
            assert row2.keys() == row1.keys()
            for key in row1:
                assert row2[key] == pytest.approx(row1[key], rel=1e-5), f"{kind}: {key}"


def _site_values(fn, *args) -> dict[str, torch.Tensor]:
    from pyro import poutine

    trace = poutine.trace(fn).get_trace(*args)
    return {name: site["value"] for name, site in trace.nodes.items() if site["type"] == "sample"}


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("particles", [1, 4])
@pytest.mark.parametrize("family, device", [("normal", "cpu"), ("lowrank", "cpu"), ("mvn", "cpu"),
                                            ("transformed", "cpu"), pytest.param("normal", "cuda", marks=GPU)])
def test_each_rank_draws_one_processs_noise_for_its_rows(family, device, particles):
    """Three ranks, each on its third of a batch of 24 with its own torch seed, under GlobalDraws draw exactly what
    one process seeded with the epoch's seed draws for the whole batch (bit for bit: the same noise, the same
    elementwise maps), for a global site, location-scale guides, a transformed one and the vectorized particle
    plate, on the CPU (and a GPU's generator where there is one); without it, each rank's own stream gives other
    values."""
    from ppgen.inference.distributed import GlobalDraws
    from ppgen.ppl import dist, pyro

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(24, 7, generator=g).to(device), (torch.randn(7, 5, generator=g) * 0.3).to(device)
    tril = (torch.eye(5) + torch.tril(torch.full((5, 5), 0.1), -1)).to(device)

    def guide(x):
        loc = x @ w
        scale = loc.exp() * 0.1 + 0.5
        pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            q = {"normal": lambda: dist.Normal(loc, scale).to_event(1),
                 "lowrank": lambda: dist.LowRankMultivariateNormal(loc, scale[..., None] * 0.3, scale),
                 "mvn": lambda: dist.MultivariateNormal(loc, scale_tril=tril * scale[..., None]),
                 "transformed": lambda: dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1),
                                                                     [dist.transforms.SigmoidTransform()])}[family]()
            pyro.sample("z", q)
            pyro.sample("w", dist.Normal(loc[..., 0], 1.0))

    run = guide if particles == 1 else pyro.plate("num_particles_vectorized", particles, dim=-2)(guide)
    torch.manual_seed(7)
    one = _site_values(run, x)
    shards, alone = [], []
    for rank in range(3):
        torch.manual_seed(100 + rank)
        alone.append(_site_values(run, x[8 * rank : 8 * rank + 8]))
        torch.manual_seed(100 + rank)
        with GlobalDraws(Group(rank, 3), "data", seed=7, device=device):
            shards.append(_site_values(run, x[8 * rank : 8 * rank + 8]))
    data_dim = 0 if particles == 1 else 1
    for name in ("z", "w"):
        assert one[name].shape[data_dim] == 24
        # the same noise; the sigmoid's vectorized kernel and its scalar tail may round an input 1 ulp apart
        torch.testing.assert_close(torch.cat([s[name] for s in shards], data_dim), one[name], msg=name,
                                   **({"rtol": 2.4e-7, "atol": 0} if family == "transformed" else {"rtol": 0, "atol": 0}))
        assert not torch.allclose(torch.cat([s[name] for s in alone], data_dim), one[name], atol=1e-3)
    assert all(torch.equal(s["g"], one["g"]) for s in shards)


def test_a_family_objectives_draws_are_one_processs_too():
    """DDPM's own estimator draws t and the noise per example (ppgen.ppl.randint / normal): three ranks under
    GlobalDraws, each with its own seed, get per-example objectives equal to one process's on the whole batch (the
    same t and noise; the denoiser's float sums over 8 rows or 24 may differ in the last bits, hence rtol 1e-5),
    and other values without it."""
    from ppgen import models
    from ppgen.inference.distributed import GlobalDraws

    torch.manual_seed(0)
    pair = models.get("ddpm")(x_shape=(1, 8, 8), timesteps=10, hidden=(16,), time_dim=8)
    x = (torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    with torch.no_grad():
        torch.manual_seed(7)
        one = pair.objective(x)
        shards, alone = [], []
        for rank in range(3):
            torch.manual_seed(100 + rank)
            alone.append(pair.objective(x[8 * rank : 8 * rank + 8]))
            torch.manual_seed(100 + rank)
            with GlobalDraws(Group(rank, 3), "data", seed=7):
                shards.append(pair.objective(x[8 * rank : 8 * rank + 8]))
    torch.testing.assert_close(torch.cat(shards), one, rtol=1e-5, atol=0)
    assert not torch.allclose(torch.cat(alone), one, rtol=1e-2)


def test_a_site_drawn_per_process_is_said_once(capsys):
    """A Dirichlet's sampler (per-element rejection) cannot be split draw for draw: it is drawn from the process's own
    stream, and rank 0 says so once in one line."""
    from ppgen.inference import distributed as d
    from ppgen.ppl import dist, pyro

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("theta_dp_test", dist.Dirichlet(torch.ones(x.shape[0], 3)))

    for rank in (0, 1):
        for _ in range(2):
            torch.manual_seed(3)
            with d.GlobalDraws(Group(rank, 2), "data", seed=7):
                drawn = _site_values(guide, torch.zeros(4, 2))["theta_dp_test"]
            torch.manual_seed(3)
            assert torch.equal(drawn, _site_values(guide, torch.zeros(4, 2))["theta_dp_test"])  # the own stream's
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["ppgen: site 'theta_dp_test' (Dirichlet) is drawn by each of the 2 processes from its own "
                     "stream: they train as one process in distribution, not draw for draw"]


def _initial(kind: str) -> dict[str, torch.Tensor]:
    """The weights before training (the generator's, for the adversarial run)."""
    torch.manual_seed(0)
    if kind == "svi":
        return worker.VQVAE((1, 8, 8), **worker.VQ).state_dict()
    if kind == "vae":
        return worker.VAE(**worker.VAE_OPTIONS).state_dict()
    return {"pair." + k: v for k, v in worker.GAN(x_shape=(2,), z_dim=2, hidden=(16, 16)).state_dict().items()}


def _child_with_rank(parent: int, rank: int) -> int:
    """The pid of the process ``parent`` launched as ``RANK=rank`` (Linux /proc)."""
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ:
                return int(pid)
    raise AssertionError(f"no child of {parent} with RANK={rank}")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the launched ranks through Linux /proc")
def test_a_killed_rank_stops_the_other_and_the_last_checkpoint_resumes(tmp_path):
    """`ppgen train --nproc 2` (the one-machine launcher); rank 1 killed after the first checkpoint."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "ppgen", "train", "vae", "--data", "digits", "--hidden", "16", "--z-dim", "2",
            "--batch-size", "64", "--epochs", "1000", "--no-progress", "--out", str(run), "--nproc", "2"]
    launcher = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(ROOT), "PPGEN_DIST_TIMEOUT": "30"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 180
    while not (run / runs.CHECKPOINT).exists():
        assert time.monotonic() < deadline and launcher.poll() is None, launcher.communicate()[1][-2000:]
        time.sleep(0.2)
    os.kill(_child_with_rank(launcher.pid, 1), signal.SIGKILL)
    ((code, err),) = _finish([launcher], timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("ppgen: error: process 0 of 2 lost a peer") and f"--resume {run}" in lines[0]
    done = runs.load_checkpoint(run)["state"]["epoch"]
    assert 1 <= done < 1000 and f"checkpoint of epoch {done} is intact" in lines[0]
    assert main(["train", "vae", "--resume", str(run), "--epochs", str(done + 1), "--no-progress"]) == 0  # one process
    assert runs.load_checkpoint(run)["state"]["epoch"] == done + 1


def test_each_rank_takes_its_slice_of_every_steps_batch():
    x = torch.arange(40.0)[:, None]
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    for step in range(5):
        whole = Group().shard(x, order, step, 8)
        parts = [Group(rank, 4).shard(x, order, step, 8) for rank in range(4)]
        assert torch.equal(torch.cat(parts), whole) and all(len(p) == 2 for p in parts)
    with pytest.raises(UserError, match="multiple of 3"):
        distributed.check_batch(64, Group(0, 3))


def test_nproc_is_dropped_from_the_launched_command_line():
    from ppgen.commands.train import without_nproc as _without_nproc

    argv = ["train", "vae", "--nproc", "2", "--epochs", "3", "--nproc=4"]
    assert _without_nproc(argv) == ["train", "vae", "--epochs", "3"]


# -- NUTS across JAX devices ---------------------------------------------------------------------------------
NUTS_ACROSS = dict(points=[0, 1, 2], chains=2, warmup=150, samples=300, seed=0)
NUTS_SCRIPT = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # before jax is imported
sys.path.insert(0, {tests!r})
import jax, torch, ppgen
from support import known_ppca
import test_distributed as t
fit = ppgen.fit(known_ppca(), t.nuts_points(), backend="nuts", chain_method="parallel", **t.NUTS_ACROSS)
print(json.dumps({{"devices": jax.local_device_count(), **t.nuts_summary(fit)}}))
"""


def nuts_points():
    import ppgen

    g = torch.Generator().manual_seed(5)
    return ppgen.data.from_tensor(torch.randn(3, 5, generator=g) * 2)


def nuts_summary(fit) -> dict:
    """Posterior mean and sd of every point's z, with their Monte Carlo standard errors (ArviZ)."""
    import arviz as az
    import numpy as np

    ds = az.convert_to_dataset({"z": np.asarray(fit.samples["z"])})  # (chain, draw, point, dim)
    z = ds["z"]
    return {"mean": z.mean(("chain", "draw")).values.tolist(), "sd": z.std(("chain", "draw")).values.tolist(),
            "se_mean": az.mcse(ds, method="mean")["z"].values.tolist(),
            "se_sd": az.mcse(ds, method="sd")["z"].values.tolist()}


def test_nuts_over_two_host_devices_samples_the_posterior_one_device_does():
    """Points × chains split over 2 XLA host devices (pmap) against one device (vmap), both against the PPCA's
    exact posterior; the draws differ (float order moves NUTS trajectories) so statistics are compared, 4 SE."""
    import json

    import numpy as np
    from support import known_ppca

    import ppgen

    proc = subprocess.Popen([sys.executable, "-c", NUTS_SCRIPT.format(tests=str(ROOT / "tests"))],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    pair = known_ppca()
    one = nuts_summary(ppgen.fit(pair, nuts_points(), backend="nuts", chain_method="vectorized", **NUTS_ACROSS))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    two = json.loads(out.strip().splitlines()[-1])
    assert two["devices"] == 2
    with torch.no_grad():
        exact = pair.posterior(nuts_points().train)
    exact_mean, exact_sd = exact.mean.numpy(), exact.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt().numpy()
    for fit in (one, two):
        assert np.all(np.abs(np.array(fit["mean"]) - exact_mean) < 4 * np.array(fit["se_mean"]))
        assert np.all(np.abs(np.array(fit["sd"]) - exact_sd) < 4 * np.array(fit["se_sd"]))
    se = np.hypot(np.array(one["se_mean"]), np.array(two["se_mean"]))
    assert np.all(np.abs(np.array(one["mean"]) - np.array(two["mean"])) < 4 * se)


# -- the GPU path, checked without a GPU ----------------------------------------------------------------------
@pytest.mark.parametrize("backend, options", [("svi", {"engine": "torch"}), ("svi", {"engine": "auto"}),
                                              ("adversarial", {})])
def test_every_engine_takes_device_cuda_to_the_device_check(backend, options):
    """No GPU here: --device cuda reaches check_torch_device on every engine (auto falls back from JAX) and is
    refused there in one line, not run on the CPU or crashed inside torch."""
    from support import tiny_vae

    import ppgen

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: gpu.sh runs these for real")
    pair = tiny_vae(likelihood="gaussian")
    data = ppgen.data.from_tensor(torch.rand(16, 12))
    with pytest.raises(UserError, match="no CUDA GPU is visible; use --device cpu"):
        ppgen.fit(pair, data, backend=backend, device="cuda", epochs=1, batch_size=8, progress=False, **options)


def test_under_a_launcher_cuda_means_this_processs_gpu(monkeypatch):
    from ppgen.inference import loop

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert loop.check_torch_device("cuda") == torch.device("cuda:1")
    assert loop.check_torch_device("cuda:0") == torch.device("cuda:0")  # an explicit index is kept
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UserError, match="only 2 GPU"):
        loop.check_torch_device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert loop.check_torch_device("cuda") == torch.device("cuda")


def test_shard_scale_counts_global_and_subsampled_terms_once_over_the_processes():
    """On 2 processes a global site and a subsampled plate's sites get half their one-process scale; the terms of
    a data plate that is the shard itself keep scale 1 (they are this process's own)."""
    from pyro import poutine

    from ppgen.inference.distributed import ShardScale
    from ppgen.ppl import dist, pyro

    def subsampled():
        pyro.sample("w", dist.Normal(0.0, 1.0))  # global
        with pyro.plate("data", 100, subsample_size=10):
            pyro.sample("x_sub", dist.Normal(0.0, 1.0))

    def whole():
        with pyro.plate("data", 10):
            pyro.sample("x", dist.Normal(0.0, 1.0))

    scales = {name: site["scale"] for model in (subsampled, whole)
              for name, site in poutine.trace(ShardScale(2, "data")(model)).get_trace().nodes.items()
              if site["type"] == "sample" and name != "data"}
    assert scales["w"] == 0.5 and scales["x_sub"] == pytest.approx(100 / 10 / 2) and scales["x"] == 1.0


def test_under_a_launcher_the_svi_engine_is_torch_and_says_why(monkeypatch):
    from support import tiny_vae

    from ppgen.inference.options import SVIOptions
    from ppgen.inference.svi import choose_engine

    pair = tiny_vae()
    assert choose_engine(pair, SVIOptions())[0] == "jax"  # alone: the pair lowers
    monkeypatch.setenv("WORLD_SIZE", "2")
    for engine in ("auto", "jax"):
        name, why = choose_engine(pair, SVIOptions(engine=engine))
        assert name == "torch" and "data-parallel over 2 processes runs on the torch engine" in why


def test_free_bits_is_refused_over_processes_before_joining(monkeypatch):
    from support import binary, tiny_vae

    import ppgen
    from ppgen.inference.options import OptionError

    monkeypatch.setenv("WORLD_SIZE", "2")  # no MASTER_ADDR: joining would fail; the refusal comes first
    with pytest.raises(OptionError, match="does not split over processes"):
        ppgen.fit(tiny_vae(), ppgen.data.from_tensor(binary(16)), engine="torch", free_bits=0.1, progress=False)
