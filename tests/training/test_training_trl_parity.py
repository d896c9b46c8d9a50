"""onbrand's packed DPO loss == TRL DPOTrainer's loss on the same batch and the same model."""

from __future__ import annotations

import pytest
import torch

SYSTEM = "You are the assistant of Toy Lamps."


def peft_policy(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False
    )
    model = get_peft_model(base, cfg)  # random A and B: policy != reference, so the loss is not log 2
    model.eval()
    return model


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "sigmoid_norm"])
def test_first_step_loss_equals_trl(tiny_model_dir, tokenizer, make_records, tmp_path, loss_type):
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    from onbrand.training import dpo
    from onbrand.training.batching import tokenize_pair
    from onbrand.training.common import PackedModel

    recs = make_records(4)
    model = peft_policy(tiny_model_dir)
    ds = Dataset.from_list(
        [{"prompt": [{"role": "system", "content": SYSTEM}, *r["prompt"]], "chosen": r["chosen"], "rejected": r["rejected"]} for r in recs]
    )  # fmt: skip
    args = TRLConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_length=96, beta=0.5, loss_type=[loss_type],
        bf16=False, gradient_checkpointing=False, report_to=[], use_cpu=True, dataset_num_proc=None,
    )  # fmt: skip
    # TRL would copy an existing adapter as the reference; give it the base explicitly, which is
    # what onbrand's reference (adapters disabled) is.
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()

    cfg = dpo.DPOConfig()
    cfg.dpo.beta, cfg.dpo.loss_type, cfg.train.max_length = 0.5, loss_type, 96
    pairs = [tokenize_pair(tokenizer, r, SYSTEM, 96) for r in recs]
    step = dpo.make_step_fn(PackedModel(model), tokenizer, cfg, torch.device("cpu"))
    with torch.no_grad():
        ours, metrics = step(PackedModel(model), pairs)
    assert abs(trl_loss - 0.6931) > 1e-3 or loss_type != "sigmoid"  # non-trivial batch
    assert abs(ours.item() - trl_loss) < 1e-4, (ours.item(), trl_loss)
    assert metrics["rewards/accuracies"] in (0.0, 0.25, 0.5, 0.75, 1.0)
