"""Why do bottleneck adapters collapse at lr x3 on wnut16? Trace the first steps of one run.

Runs the benchmark's wnut16 cell for one method and lr scale (the grid's recipe, stopped
after STEPS training steps) and prints, every 25 steps: the spread of the classifier's
input over tokens (0 = every token gets the same vector, i.e. a constant predictor), the
share of the adapters' ReLU units that no token activates, and the norms of the adapters'
up-projection bias and of their branch output relative to their input.
  python adapter_collapse.py adapter 3 [steps] [KEY=VALUE ...]
"""

import sys

import torch
from hydra import compose, initialize_config_dir

import peftbench.runner.experiment as ex
from peftbench.config.paths import CONF_DIR
from peftbench.methods.adapters import BottleneckAdapter, ParallelAdapter

stats = {"step": 0, "limit": 300}


class Stop(Exception):
    pass


def instrument(model, head_modules):
    adapters = [m for m in model.modules() if isinstance(m, (BottleneckAdapter, ParallelAdapter))]
    seen = {"dead": [], "ratio": []}

    def on_act(module, inputs, output):
        if module.training:
            active = (output.reshape(-1, output.shape[-1]) > 0).any(0).float()
            seen["dead"].append(1 - active.mean().item())

    def on_adapter(module, inputs, output):
        if module.training:
            x = inputs[0]
            branch = output - x if isinstance(module, BottleneckAdapter) else output
            seen["ratio"].append((branch.norm() / x.norm()).item())

    for a in adapters:
        a.act.register_forward_hook(on_act)
        a.register_forward_hook(on_adapter)
    head = dict(model.named_modules())[head_modules[0]]

    def on_head(module, inputs):
        if not module.training:
            return
        stats["step"] += 1
        h = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
        if stats["step"] % 25 == 0 or stats["step"] == 1:
            spread = (h.std(0).mean() / h.abs().mean()).item()
            bias = sum(a.up.bias.norm().item() for a in adapters) / max(1, len(adapters))
            norms = [
                p for n, p in model.named_parameters() if p.requires_grad and "norm" in n.lower()
            ]
            gamma = (
                torch.stack([p.abs().mean() for p in norms if p.dim() == 1]).mean().item()
                if norms
                else float("nan")
            )
            d = seen["dead"][-len(adapters) * 2 :] or [float("nan")]
            r = seen["ratio"][-len(adapters) * 2 :] or [float("nan")]
            print(
                f"step {stats['step']:4d}  token-spread {spread:.3f}"
                f"  dead-relu {sum(d) / len(d):.2f}  |up.bias| {bias:.2f}"
                f"  |branch|/|x| {sum(r) / len(r):.2f}  mean|LN param| {gamma:.3f}",
                flush=True,
            )
        if stats["step"] >= stats["limit"]:
            raise Stop

    head.register_forward_pre_hook(on_head)


def main(method, scale, steps=300, overrides=()):
    """Runs the cell with the tracing hooks, stopping after ``steps`` training steps."""
    stats.update(step=0, limit=steps)
    original = ex._set_up

    def set_up(cfg, task):
        setup = original(cfg, task)
        instrument(setup.model, setup.backbone.head_modules)
        return setup

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "task=wnut16", f"method={method}", f"method.lr_scale={scale}", "seed=0",
                "tracker=none", "results_dir=/work/diag/results", "force=true",
                "train.threads=2", *overrides,
            ],
        )  # fmt: skip
    print(method, "lr", cfg.method.lr, "x", scale)
    ex._set_up = set_up
    try:
        ex.run(cfg)
    except Stop:
        pass
    finally:
        ex._set_up = original


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 300, sys.argv[4:])
