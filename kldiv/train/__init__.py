"""The training loop every recipe shares.

A recipe keeps its paper's algorithm in view and leaves the plumbing here:

- a `@dataclass` config filled from the command line ([`parse_config`][kldiv.train.parse_config]);
- the device (CUDA when present, with TF32 tensor cores unless ``--no-tf32``),
  ``--amp bf16`` autocast, ``--amp fp16`` autocast with a loss scale per player,
  ``--compile`` and ``--channels-last`` (convolutional networks and image batches
  in NHWC memory);
- batches that are a deterministic function of (seed, step), so a resumed run
  sees exactly the batches an uninterrupted one would;
- self-describing checkpoints ``{networks, optimizers, schedulers, config,
  step, metrics, rng}`` written atomically and loaded with ``weights_only=True``;
- a non-finite loss or gradient stops the run before the update, naming the
  player and the step, with the last good checkpoint intact;
- metrics as JSON lines, images as PNG, a tqdm progress bar;
- several processes through ``torchrun``: each player's networks wrapped in
  ``DistributedDataParallel``, each rank seeded apart and fed its own slice of
  every global batch, only rank 0 writing.

The package's modules, one concept each (the linked names, and
`option`, are importable from ``kldiv.train`` itself):

- ``kldiv.train.config``: `option`, [`RunConfig`][kldiv.train.RunConfig],
  [`parse_config`][kldiv.train.parse_config] and
  [`build_networks`][kldiv.train.build_networks];
- ``kldiv.train.checkpoints``: [`save_checkpoint`][kldiv.train.save_checkpoint],
  [`load_checkpoint`][kldiv.train.load_checkpoint], the random generators'
  state, and ``Checkpoints``, a run's ``checkpoint.pt``, ``config.json``,
  ``--keep`` and ``--resume``;
- ``kldiv.train.batches``: [`StepBatchSampler`][kldiv.train.StepBatchSampler];
- ``kldiv.train.compile``: [`compile_network`][kldiv.train.compile_network] and
  [`no_donated_buffers`][kldiv.train.no_donated_buffers];
- ``kldiv.train.log``: ``RunLog``, the metrics (JSON lines, TensorBoard), the
  progress bar or lines, the image grids;
- ``kldiv.train.run``: [`Run`][kldiv.train.Run], which a recipe's loop drives
  and which hands its checkpoints to ``Checkpoints`` and its logs to ``RunLog``.

A recipe's loop (Algorithm 1 of Han et al. 2020):

```python
run = Run(cfg, name="latent_ebm")
...
run.attach(step, networks, optimizers, schedulers)
for x in run.batches(dataset):
    r = step.round(x)
    for player in ("ebm", "encoder", "generator"):
        run.update(r, player)
    run.end_step()
```
"""

from kldiv.train.config import RunConfig, option, parse_config, build_networks
from kldiv.train.checkpoints import save_checkpoint, load_checkpoint
from kldiv.train.batches import StepBatchSampler
from kldiv.train.compile import compile_network, no_donated_buffers
from kldiv.train.run import Run

__all__ = [
    "Run",
    "RunConfig",
    "StepBatchSampler",
    "build_networks",
    "compile_network",
    "load_checkpoint",
    "no_donated_buffers",
    "option",
    "parse_config",
    "save_checkpoint",
]
