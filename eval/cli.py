"""``onbrand eval``: compare aligned vs base and write the report (see ``onbrand.eval.runner``)."""

from __future__ import annotations


def _handle(args) -> int:
    from onbrand.eval.runner import handle

    return handle(args)


def register(sub) -> None:
    from onbrand.eval.runner import add_arguments

    p = sub.add_parser(
        "eval",
        help="compare the aligned model with its base: win rates, brand compliance, drift, capability",
        description="Generate with base and aligned (vLLM LoRA requests or transformers), score, write "
        "report.json / report.md / PNGs, and optionally gate a release (--gate: exit 1 on failure).",
    )
    add_arguments(p)
    p.set_defaults(func=_handle)
