"""``onbrand train sft|dpo|reward --config <yaml> [key=value ...]`` (single process).

For several processes use ``accelerate launch -m onbrand.training.<recipe>`` (see docs/training.md).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# recipe -> (module under onbrand.training, help, default config)
RECIPES = {
    "sft": ("sft", "supervised fine-tuning of a LoRA adapter on the chosen answers", "configs/sft/demo.yaml"),
    # The loss list is onbrand.kernels.losses.LOSSES (not imported here: it pulls in torch).
    "dpo": ("dpo", "DPO-family preference optimisation (dpo.loss_type: sigmoid, ipo, simpo, orpo, ...)", "configs/dpo/demo.yaml"),
    "reward": ("reward_model", "Bradley-Terry reward model (LoRA + score head)", "configs/reward/demo.yaml"),
    "rl": ("rl", "online RL (GRPO/RLOO) against the reward model and brand rules, KL control, Goodhart monitor", "configs/rl/demo.yaml"),
}  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    from onbrand.training.loop import TrainingDiverged

    module = importlib.import_module(f"onbrand.training.{RECIPES[args.recipe][0]}")
    try:
        return module.main(["--config", args.config, *args.overrides])
    except TrainingDiverged as e:
        print(f"onbrand: training stopped: {e}", file=sys.stderr)
        return 3
    except MemoryError as e:
        print(f"onbrand: {e}", file=sys.stderr)
        return 4


def register(sub) -> None:
    p = sub.add_parser("train", help="train SFT / DPO / reward-model LoRA adapters")
    tsub = p.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    for name, (_module, help_text, default) in RECIPES.items():
        r = tsub.add_parser(name, help=help_text, description=help_text)
        r.add_argument("--config", default=default, help=f"YAML config (default {default})")
        r.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
        r.set_defaults(func=_run)
