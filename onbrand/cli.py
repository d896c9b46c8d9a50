"""The ``onbrand`` command: one entry point, one subcommand group per pipeline stage.

Each stage module exposes ``register(subparsers)``; handlers import heavy libraries (torch,
transformers) lazily so ``onbrand --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from onbrand import __version__, isolate_child_interpreters
from onbrand.console import user_error_message
from onbrand.stage_table import STAGE_TABLE

# The `onbrand` subcommands of the stages, in pipeline order (each distinct `cli` of the stage
# table), then `onbrand run`. A stage appears here only once it exists (no stubs).
STAGE_MODULES = (*dict.fromkeys(s.cli for s in STAGE_TABLE if s.cli), "onbrand.pipeline")


def _stage_modules():
    for name in STAGE_MODULES:
        try:
            yield importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # that stage is not part of this checkout
            raise


def _models_list(args: argparse.Namespace) -> int:
    from onbrand.models import list_models

    for row in list_models():
        mark = "cached" if row["cached"] else "not converted yet"
        print(f"{row['name']:<34} {mark:<18} {row['description']}")
    return 0


def _models_info(args: argparse.Namespace) -> int:
    from onbrand.models import model_facts

    facts = model_facts(args.name)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        for key, value in facts.items():
            print(f"{key:>24}: {value}")
    return 0


def _register_models(sub) -> None:
    p = sub.add_parser("models", help="list and inspect models (embedded default, local paths)")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", help="list embedded models and whether they are converted").set_defaults(
        func=_models_list
    )
    info = msub.add_parser("info", help="convert (once) and describe a model")
    info.add_argument("name", nargs="?", default="embedded:smollm2-135m-instruct")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_models_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onbrand",
        description="Align an open LLM to a brand from human preference data.",
    )
    parser.add_argument("--version", action="version", version=f"onbrand {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_models(sub)
    for module in _stage_modules():
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    isolate_child_interpreters()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("WANDB_MODE", "offline" if not os.environ.get("WANDB_API_KEY") else "online")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # a ConfigError is a ValueError
        print(user_error_message(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
