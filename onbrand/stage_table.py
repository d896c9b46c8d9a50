"""The one list of onbrand's stages, in pipeline order: what configures each, what runs it, its command.

Everything else derives from :data:`STAGE_TABLE`:

- ``onbrand.config.CONFIG_KINDS``: ``configs/<stage>/*.yaml`` is validated by the stage's
  ``config_kind`` (plus a few kinds that are not stages: brand cards, run configs, gates);
- ``onbrand.pipeline_stages.STAGES``: ``onbrand run`` runs the stages that have a ``runner``, in
  this order, each with its ``title``, ``config_kind`` and ``depends_on``;
- ``onbrand.cli.STAGE_MODULES``: each distinct ``cli`` module adds its ``onbrand`` subcommand.

This module is core: it holds names only (``"module:attr"`` strings, resolved by whoever needs the
object), so the config loader can read it without importing a stage, and the pipeline resolves the
runners without the core importing the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    name: str  # stage name: `onbrand run` stage, RunConfig field, configs/<name>/ folder
    title: str
    config_kind: str | None  # "module:Class" validating the stage's YAML (configs/<name>/*.yaml)
    runner: str | None  # "module:attr" of the pipeline's Runner; None = not part of `onbrand run`
    cli: str | None  # module with register(subparsers): the stage's own `onbrand` subcommand
    depends_on: tuple[str, ...] = ()  # stages whose output fingerprints feed this stage's input hash


_TRAIN_CLI = "onbrand.training.cli"

STAGE_TABLE: tuple[StageSpec, ...] = (
    StageSpec(
        "model",
        "resolve the base model (GGUF -> safetensors once)",
        None,
        "onbrand.pipeline_stages:MODEL",
        None,  # `onbrand models` lives in onbrand.cli itself
    ),
    StageSpec(
        "data",
        "import, validate and snapshot the brand's preference pairs; quality report",
        "onbrand.data.config:DataConfig",
        "onbrand.pipeline_stages:DATA",
        "onbrand.data.cli",
        ("model",),
    ),
    StageSpec(
        "sft",
        "supervised fine-tuning of a LoRA on the chosen answers",
        "onbrand.training.sft:SFTConfig",
        "onbrand.pipeline_stages:SFT",
        _TRAIN_CLI,
        ("model", "data"),
    ),
    StageSpec(
        "dpo",
        "preference optimisation (DPO family) from the SFT model",
        "onbrand.training.dpo:DPOConfig",
        "onbrand.pipeline_stages:DPO",
        _TRAIN_CLI,
        ("model", "data", "sft"),
    ),
    StageSpec(
        "reward",
        "Bradley-Terry reward model (for eval win rates and RL)",
        "onbrand.training.reward_model:RewardConfig",
        "onbrand.pipeline_stages:REWARD",
        _TRAIN_CLI,
        ("model", "data"),
    ),
    StageSpec(
        "rl",
        "online RL (GRPO/RLOO) against the reward model and brand rules",
        "onbrand.training.rl:RLConfig",
        None,  # `onbrand train rl`; not part of `onbrand run`
        _TRAIN_CLI,
    ),
    StageSpec(
        "eval",
        "base vs aligned: win rates, compliance, voice, drift, perplexity, gate",
        "onbrand.eval.config:EvalConfig",
        "onbrand.pipeline_stages:EVAL",
        "onbrand.eval.cli",
        ("model", "data", "dpo", "reward"),
    ),
    StageSpec(
        "export",
        "merged checkpoint + manifest, verified (checksums, parity, vLLM)",
        None,
        "onbrand.pipeline_stages:EXPORT",
        "onbrand.export.cli",
        ("model", "dpo", "eval"),
    ),
    StageSpec(
        "annotate",
        "human preference labelling (web app): new pairs and human eval rounds",
        None,
        None,  # a service, not part of `onbrand run`
        "onbrand.annotate.cli",
    ),
    StageSpec(
        "guard",
        "brand guard in front of the served model: check, log/flag/regenerate/block, conversation log",
        "onbrand.serve.policy:GuardConfig",
        None,  # a service, not part of `onbrand run`
        "onbrand.serve.guard_cli",
    ),
    StageSpec(
        "monitor",
        "drift of the served model against its release eval; flagged answers back to annotators",
        "onbrand.serve.monitor:MonitorConfig",
        None,  # run on a schedule over the conversation logs, not part of `onbrand run`
        "onbrand.serve.monitor_cli",
    ),
)

STAGES_BY_NAME: dict[str, StageSpec] = {s.name: s for s in STAGE_TABLE}
