"""The accelerate configs that are never run here (fsdp.yaml, deepspeed_zero2/3.yaml: they need GPUs,
and DeepSpeed its package) are at least read by accelerate's own config classes and translated by
its own launcher code into the environment a launch would get, and that is checked field by field.
The DeepSpeed plugin is built from that environment (accelerate builds it without the deepspeed
package); the FSDP plugin needs an accelerator device to be built, so that part runs on GPUs only."""

from __future__ import annotations

import os

import pytest
import torch

CONFIGS = "configs/accelerate"


@pytest.fixture
def clean_environ():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def launch_args(repo_root, name: str):
    """``accelerate launch --config_file <name>.yaml`` parsed and validated as the launcher does."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    argv = [
        "--config_file",
        str(repo_root / CONFIGS / f"{name}.yaml"),
        "--main_process_port",
        "29541",
        "x.py",
    ]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    return args, defaults


def load(repo_root, name: str):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    cfg = load_config_from_file(str(repo_root / CONFIGS / f"{name}.yaml"))
    assert isinstance(cfg, ClusterConfig)
    return cfg


@pytest.mark.parametrize(("name", "stage"), [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_deepspeed_configs(repo_root, clean_environ, name, stage):
    from accelerate.utils import DeepSpeedPlugin, DistributedType
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    cfg = load(repo_root, name)
    assert cfg.distributed_type == DistributedType.DEEPSPEED and not cfg.use_cpu
    assert cfg.mixed_precision == "no"  # onbrand autocasts itself (train.precision)
    assert cfg.num_processes == 8 and cfg.num_machines == 1
    ds = cfg.deepspeed_config
    assert ds["zero_stage"] == stage and ds["gradient_clipping"] == 1.0
    assert ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"
    assert ds["zero3_init_flag"] is (stage == 3) and ds.get("zero3_save_16bit_model", False) is (stage == 3)

    args, defaults = launch_args(repo_root, name)
    assert args.use_deepspeed and not args.use_fsdp and args.num_processes == 8
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "no"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
    os.environ.update({k: v for k, v in env.items() if k.startswith("ACCELERATE_")})
    plugin = DeepSpeedPlugin()  # what Accelerator() builds from that environment
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.zero_stage == stage and zero["stage"] == stage
    assert plugin.deepspeed_config["gradient_clipping"] == 1.0
    assert zero["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)
    assert plugin.zero3_init_flag is (stage == 3)


@pytest.mark.parametrize(
    ("name", "version", "n", "cpu"), [("fsdp", "1", 8, False), ("fsdp_cpu_2proc", "2", 2, True)]
)
def test_fsdp_configs(repo_root, clean_environ, name, version, n, cpu):
    from accelerate.utils import DistributedType
    from accelerate.utils.launch import prepare_multi_gpu_env

    cfg = load(repo_root, name)
    assert cfg.distributed_type == DistributedType.FSDP and cfg.use_cpu is cpu
    assert cfg.mixed_precision == "no" and cfg.num_processes == n
    fsdp = cfg.fsdp_config
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert not fsdp["fsdp_offload_params"]

    args, _ = launch_args(repo_root, name)
    assert args.use_fsdp and not args.use_deepspeed and args.num_processes == n
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == version
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "LlamaDecoderLayer"  # read by onbrand.training.fsdp_cpu
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true"  # full shard
    if version == "1":
        # frozen base + trainable LoRA in one wrapped layer needs the original parameters
        assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD" and env["FSDP_USE_ORIG_PARAMS"] == "true"
    if not torch.cuda.is_available():
        return  # accelerate builds its FSDP plugin only with an accelerator device
    from accelerate.utils import FullyShardedDataParallelPlugin

    os.environ.update({k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_"))})
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == int(version)
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
