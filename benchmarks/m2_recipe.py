"""Where M2's accuracy with few labels comes from: the conventions of Pyro's ss-vae example one at a time.

One training of M2 (hidden 500, z 50, batch 200, Adam, α 46 per labelled row) on ``--data`` with ``--labels`` of the
training labels kept (``ppgen.data.keep_labels``, seed ``--set``), the validation and test accuracy of argmax q(y|x)
printed after every epoch (and written to ``--log`` as JSON lines). The switches:

  --engine ppgen     a plain loop of Adam steps on ppgen's M2 objective (``M2.objective``: y enumerated exactly,
                     α · −log q(y|x) on labelled rows), the sum over the batch, as ``ppgen.fit`` steps it
  --engine pyro      the same networks in a model/guide pair written after Pyro's ss-vae example
                     (examples/vae/ss_vae_M2.py, not copied): ``SVI`` with ``TraceEnum_ELBO`` (y enumerated by
                     ``config_enumerate``) and a second ``SVI`` for the auxiliary loss, both ``pyro.optim.Adam``,
                     the auxiliary step run after every batch as the example runs it (on an unlabelled batch it has
                     no loss but still steps every parameter by Adam's momentum alone, as ``pyro.optim`` does)
  --targets binary   dynamic binarization of the training digits (a fresh Bernoulli draw each epoch; validation and
                     test as ``ppgen.data`` binarizes them, once, seeded): the Bernoulli likelihood normalized
  --targets grey     grey levels in [0, 1] in the networks and as the Bernoulli targets (Pyro's example): the
                     cross-entropy Σ x log p + (1 − x) log(1 − p) is not a normalized density of grey levels
  --schedule share   ppgen's labelled share: every batch holds ⌈share · batch⌉ labelled rows (``M2.epoch_order``)
  --schedule pyro    Pyro's: the labelled examples in batches of their own, each seen once an epoch, one every
                     ⌊N / N_l⌋ steps from the second on, the unlabelled in the others
  --schedule shuffle plain shuffles of all the rows
  --init pyro        Pyro's example's initialization: the hidden layers' weights and biases N(0, 0.001²)
  --ghost-steps      (engine ppgen) Pyro's extra momentum-only Adam step after every step

    nice -n 10 python benchmarks/m2_recipe.py --engine pyro --targets grey --schedule pyro --init pyro --log a.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import pyro
import pyro.distributions as pdist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam as PyroAdam

from ppgen import data as datasets
from ppgen.models.m2 import M2


def pyro_init(pair: M2) -> None:
    """Pyro's example's MLPs: every hidden layer N(0, 0.001²) (weights and biases), the output layers torch's."""
    with torch.no_grad():
        for net in (pair.classifier, pair.encoder.net, pair.decoder.net):
            hidden = list(net.layers) if not hasattr(net, "first") else [net.first, *net.layers]
            for layer in hidden:
                layer.weight.normal_(0, 0.001)
                layer.bias.normal_(0, 0.001)
            if hasattr(net, "label_rows"):
                net.label_rows.normal_(0, 0.001)


def epoch_batches(schedule: str, pair: M2, y: torch.Tensor, batch: int, g: torch.Generator) -> list[torch.Tensor]:
    """The rows of each step of one epoch."""
    n = len(y)
    if schedule == "share":
        steps = n // batch
        return list(pair.epoch_order(n, (y,), batch, steps, g).view(steps, batch))
    if schedule == "shuffle":
        return list(torch.randperm(n, generator=g)[: n // batch * batch].view(-1, batch))
    labelled, unlabelled = (y >= 0).nonzero().squeeze(-1), (y < 0).nonzero().squeeze(-1)
    sup = list(labelled[torch.randperm(len(labelled), generator=g)].split(batch))
    unsup = list(unlabelled[torch.randperm(len(unlabelled), generator=g)].split(batch))
    period = int(n / len(labelled))
    out, k = [], 0
    for i in range(len(sup) + len(unsup)):
        if (i % period == 1 or not unsup) and k < len(sup):
            out.append(sup[k])
            k += 1
        else:
            out.append(unsup.pop(0))
    return out


class PyroPair:
    """M2 as Pyro's example writes it, on a ppgen pair's networks; ``grey`` turns off the Bernoulli's support check."""

    def __init__(self, nets: M2, alpha: float, grey: bool):
        self.nets, self.alpha, self.grey = nets, alpha, grey

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self.nets)
        with pyro.plate("data", xs.shape[0]):
            z = pyro.sample("z", pdist.Normal(0.0, 1.0).expand([self.nets.config.z_dim]).to_event(1))
            ys = pyro.sample("y", pdist.Categorical(logits=torch.zeros(xs.shape[0], 10)), obs=ys)
            pyro.sample("x", pdist.Bernoulli(logits=self.nets.decoder(z, ys), validate_args=not self.grey)
                        .to_event(3), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", pdist.Categorical(logits=self.nets.classifier(xs)))
            loc, scale = self.nets.encoder(xs, ys)
            pyro.sample("z", pdist.Normal(loc, scale).to_event(1))

    def model_classify(self, xs, ys=None):
        pyro.module("ss_vae", self.nets)
        if ys is not None:
            with pyro.plate("data", xs.shape[0]), poutine.scale(scale=self.alpha):
                pyro.sample("y_aux", pdist.Categorical(logits=self.nets.classifier(xs)), obs=ys)

    def guide_classify(self, xs, ys=None):
        pass


def accuracy(pair: M2, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.cat([pair.classify(x[r:r + 2000]) for r in range(0, len(x), 2000)]).eq(y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=["ppgen", "pyro"], default="ppgen")
    p.add_argument("--targets", choices=["binary", "grey"], default="binary")
    p.add_argument("--schedule", choices=["share", "pyro", "shuffle"], default="pyro")
    p.add_argument("--init", choices=["torch", "pyro"], default="torch")
    p.add_argument("--ghost-steps", action="store_true")
    p.add_argument("--data", default="mnist-full")
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--set", type=int, default=0)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--lr", type=float, default=4.2e-4)
    p.add_argument("--alpha", type=float, default=46.0)
    p.add_argument("--share", type=float, default=0.1)
    p.add_argument("--precision", default="float32")
    p.add_argument("--log", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
    grey = args.targets == "grey"
    full = datasets.load(args.data, binarize=None if grey else "default")
    data = datasets.keep_labels(full, args.labels, seed=args.set)
    x_all, y_all = data.train, data.train_inputs["y"]
    val, test = (data.val, data.val_inputs["y"]), (data.test, data.test_inputs["y"])
    torch.manual_seed(args.set)
    pair = M2(x_shape=data.x_shape, alpha=args.alpha, labelled_share=args.share, precision=args.precision)
    if args.init == "pyro":
        pyro_init(pair)
    if args.engine == "pyro":
        pyro.clear_param_store()
        pp = PyroPair(pair, args.alpha, grey)
        opt = PyroAdam({"lr": args.lr, "betas": (0.9, 0.999)})
        svi = SVI(pp.model, config_enumerate(pp.guide, "parallel"), opt, loss=TraceEnum_ELBO(max_plate_nesting=1))
        aux = SVI(pp.model_classify, pp.guide_classify, opt, loss=Trace_ELBO())
    else:
        adam = torch.optim.Adam(pair.parameters(), lr=args.lr, betas=(0.9, 0.999))
    log = open(args.log, "a") if args.log else None
    start = time.perf_counter()
    for epoch in range(args.epochs):
        g = torch.Generator().manual_seed(1000 * args.set + epoch)
        x = x_all if grey else torch.bernoulli(x_all, generator=g)
        for rows in epoch_batches(args.schedule, pair, y_all, 200, g):
            xb, yb = x[rows], y_all[rows]
            if args.engine == "pyro":
                known = yb >= 0
                if known.all():
                    svi.step(xb, yb)
                    aux.step(xb, yb)
                else:  # Pyro's example's unlabelled batches (the schedules pyro/shuffle may mix: split them)
                    if known.any():
                        svi.step(xb[known], yb[known])
                        aux.step(xb[known], yb[known])
                    svi.step(xb[~known])
                    aux.step(xb[~known])
            else:
                adam.zero_grad()
                pair.objective(xb, yb).sum().backward()
                adam.step()
                if args.ghost_steps:
                    for q in pair.parameters():
                        q.grad.zero_()
                    adam.step()
        row = {"epoch": epoch + 1, "val": accuracy(pair, *val), "test": accuracy(pair, *test),
               "seconds": round(time.perf_counter() - start, 1), "load": os.getloadavg()[0], **vars(args)}
        print(f"epoch {epoch + 1}: val {row['val']:.4f} test {row['test']:.4f} ({row['seconds']:.0f} s, "
              f"load {row['load']:.1f})", flush=True)
        if log:
            log.write(json.dumps(row) + "\n")
            log.flush()


if __name__ == "__main__":
    main()
