"""verify_export and the CLI: tampering, path escapes, missing base, exit codes; atomic writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from onbrand.cli import main as cli
from onbrand.export.checkpoint import export_run
from onbrand.export.verify import verify_export


@pytest.fixture(scope="module")
def merged_export(runs, tmp_path_factory):
    return export_run(runs["dpo"], tmp_path_factory.mktemp("exports") / "merged", "merged")


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _rewrite_manifest(root, edit):
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_cli_export_then_verify(runs, tmp_path, capsys):
    out = tmp_path / "cli-exp"
    assert cli(["export", "--run", str(runs["dpo"]), "--out", str(out), "--format", "both"]) == 0
    assert "max abs diff" in capsys.readouterr().out
    assert cli(["export", "verify", str(out), "--vllm", "off", "--json", str(tmp_path / "v.json")]) == 0
    printed = capsys.readouterr().out
    assert "PASS" in printed and "parity merged_vs_base_plus_adapter" in printed
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["ok"] and report["parity_max_abs_diff"]["merged_vs_reference"] <= 1e-4


def test_tampered_weights_fail(merged_export, tmp_path, capsys):
    root = _copy(merged_export, tmp_path)
    weights = root / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    report = verify_export(root, vllm="off")
    assert not report.ok
    assert any("model.safetensors: sha256 differs" in f for f in report.failures)
    assert cli(["export", "verify", str(root), "--vllm", "off"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_tampered_weights_with_fixed_checksums_fail_parity(merged_export, tmp_path):
    """Re-hashing after a change passes the checksums, but not the logits parity."""
    import torch
    from safetensors.torch import load_file, save_file

    from onbrand.artifacts import hash_tree

    root = _copy(merged_export, tmp_path)
    tensors = load_file(root / "model.safetensors")
    key = next(k for k in tensors if "layers.0.self_attn.q_proj" in k)
    tensors[key] = tensors[key] + 0.05 * torch.randn_like(tensors[key])
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})
    _rewrite_manifest(root, lambda m: m.update(files=hash_tree(root, skip=("manifest.json",))))
    report = verify_export(root, vllm="off")
    assert not report.ok and report.parity["merged_vs_reference"] > 1e-4
    assert any("parity merged_vs_reference" in f for f in report.failures)


@pytest.mark.parametrize(
    "problem", ["missing", "unlisted", "dotdot", "absolute", "no-manifest", "not-export"]
)
def test_structural_problems_fail(merged_export, tmp_path, problem):
    root = _copy(merged_export, tmp_path)
    if problem == "missing":
        (root / "tokenizer.json").unlink()
        expect = "tokenizer.json: missing"
    elif problem == "unlisted":
        (root / "extra.bin").write_bytes(b"x")
        expect = "extra.bin: not listed"
    elif problem in ("dotdot", "absolute"):
        name = "../outside.txt" if problem == "dotdot" else "/etc/hostname"
        _rewrite_manifest(root, lambda m: m["files"].update({name: {"sha256": "0" * 64, "size": 1}}))
        expect = "path escapes"
    elif problem == "no-manifest":
        (root / "manifest.json").unlink()
        expect = "not a complete export"
    else:
        _rewrite_manifest(root, lambda m: m.update(kind="something-else"))
        expect = "kind"
    report = verify_export(root, vllm="off")
    assert not report.ok and any(expect in f for f in report.failures), report.failures


def test_adapter_export_needs_the_right_base(runs, tmp_path):
    out = export_run(runs["sft"], tmp_path / "ad", "adapter")
    _rewrite_manifest(out, lambda m: m["base_model"].update(hash="f" * 64))
    report = verify_export(out, vllm="off")
    assert any("base model hash" in f for f in report.failures)


def test_dotdot_rejected_by_cli(runs, capsys):
    assert cli(["export", "--run", str(runs["dpo"]), "--out", "exports/../../evil"]) == 2
    assert "'..' path components are rejected" in capsys.readouterr().err
    assert cli(["export", "verify", "exports/../x", "--vllm", "off"]) == 2


def test_injected_failure_leaves_nothing(runs, tmp_path, monkeypatch):
    import onbrand.export.checkpoint as ex

    def boom(*args, **kwargs):
        raise RuntimeError("disk full (injected)")

    monkeypatch.setattr(ex, "_write_manifest", boom)
    with pytest.raises(RuntimeError, match="injected"):
        export_run(runs["dpo"], tmp_path / "out", "both")
    assert list(tmp_path.iterdir()) == []  # neither the export nor its temp dir


def test_sigkill_mid_export_leaves_no_complete_output(runs, tmp_path):
    """Kill -9 while the weights are written but before the manifest: only a hidden temp dir stays."""
    out = tmp_path / "killed"
    child = (
        "import sys, time, onbrand.export.checkpoint as ex\n"
        "def slow(*a, **k):\n"
        "    print('WRITING', flush=True); time.sleep(600)\n"
        "ex._write_manifest = slow\n"
        f"ex.export_run({str(runs['dpo'])!r}, {str(out)!r}, 'merged')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert proc.stdout.readline().strip() == "WRITING"
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".killed.tmp-")]
        assert temps and (temps[0] / "model.safetensors").exists()  # killed genuinely mid-way
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    time.sleep(0.1)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    for leftover in tmp_path.iterdir():
        assert leftover.name.startswith(".") and not (leftover / "manifest.json").exists()
        assert not verify_export(leftover, vllm="off").ok


def test_cli_verify_from_repo_root_without_safe_path(merged_export, repo_root):
    """The installed ``onbrand`` command, started in the repository root with PYTHONSAFEPATH unset:
    the repo's bare ``kernels``/``data``/``eval`` folders must not shadow PyPI packages."""
    exe = shutil.which("onbrand", path=os.path.dirname(sys.executable)) or "onbrand"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    proc = subprocess.run([exe, "export", "verify", str(merged_export), "--vllm", "off"],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_greedy_agreement_counts_tokens_before_the_first_difference():
    from onbrand.export.verify import greedy_agreement

    # 2 of 3 tokens agree before a flip, 0 of 2 in the second; vLLM's lengths are the denominator.
    assert greedy_agreement([[1, 2, 3], [4]], [[1, 2, 9], [5, 6]]) == pytest.approx(2 / 5)
    assert greedy_agreement([[7, 8]], [[7, 8]]) == 1.0
