"""``onbrand export --run RUN --out DIR`` and ``onbrand export verify DIR``."""

from __future__ import annotations

import argparse

from onbrand.artifacts import atomic_write_json, read_json
from onbrand.export.checkpoint import export_run
from onbrand.export.common import FORMATS, MANIFEST, reject_dotdot
from onbrand.export.verify import verify_export


def _cmd_export(args: argparse.Namespace) -> int:
    if not args.run or not args.out:
        raise ValueError("onbrand export needs --run RUN_DIR and --out DIR (or: onbrand export verify DIR)")
    out = export_run(
        args.run,
        args.out,
        args.format,
        max_shard_size=args.max_shard_size,
        eval_report=args.eval_report,
        overwrite=args.overwrite,
    )
    manifest = read_json(out / MANIFEST)
    diff = manifest["parity"].get("merged_vs_base_plus_adapter_at_export")
    print(f"exported {manifest['run_id']} ({args.format}) -> {out}")
    if diff is not None:
        print(f"  merged vs base+adapter logits, max abs diff (fp32): {diff:.3e}")
    print(f"  {len(manifest['files'])} files; next: onbrand export verify {out}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    report = verify_export(args.dir, vllm=args.vllm, base=args.base, tol=args.tol)
    print(report.text())
    if args.json:
        atomic_write_json(reject_dotdot(args.json, "--json"), report.to_dict())
    return 0 if report.ok else 1


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a training run (merged weights and/or one LoRA adapter) and verify exports",
        description="onbrand export --run RUN --out DIR [--format merged|adapter|both]  |  onbrand export verify DIR",
    )
    p.add_argument("--run", help="training run directory (has run.json and adapter/)")
    p.add_argument("--out", help="export directory to create (written atomically)")
    p.add_argument("--format", choices=FORMATS, default="merged")
    p.add_argument("--max-shard-size", default="2GB", help="safetensors shard size for merged weights")
    p.add_argument("--eval-report", help="eval report.json for the model card (default: <run>/../eval/)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export directory")
    p.set_defaults(func=_cmd_export)
    esub = p.add_subparsers(dest="export_cmd", metavar="verify")
    v = esub.add_parser("verify", help="check checksums, loading and logits parity of an export")
    v.add_argument("dir", help="export directory")
    v.add_argument("--vllm", choices=("auto", "on", "off"), default="auto", help="load+generate with vLLM")
    v.add_argument("--base", help="local base model dir for adapter checks (default: the manifest's name)")
    v.add_argument("--tol", type=float, default=1e-4, help="max abs logits diff allowed (fp32)")
    v.add_argument("--json", help="also write the report as JSON here")
    v.set_defaults(func=_cmd_verify)
