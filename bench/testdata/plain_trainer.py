"""The baseline of BenchmarkTrainer: plain transformers Trainer + peft LoRA on the same tiny model,
rows, batch, sequence length, steps and precision as kaitoflow's trainer gets, written the way the
libraries' own examples write it (the chat template's text, a causal-LM collator). It prints the
steps and the seconds train() took, as JSON.

    python plain_trainer.py MODEL_DIR DATA_DIR OUT_DIR STEPS BATCH MAX_LEN
"""

import glob
import json
import sys
import time

import pyarrow.parquet as pq
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments


class Rows(torch.utils.data.Dataset):
    def __init__(self, encoded):
        self.encoded = encoded

    def __len__(self):
        return len(self.encoded)

    def __getitem__(self, i):
        return self.encoded[i]


def main(model_dir, data_dir, out_dir, steps, batch, max_len):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    table = pq.read_table(glob.glob(data_dir + "/*.parquet")[0]).to_pylist()
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in table]
    encoded = [tok(t, truncation=True, max_length=max_len, add_special_tokens=False) for t in texts]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]))
    args = TrainingArguments(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=batch, learning_rate=0.01,
                             logging_steps=steps, save_strategy="no", report_to="none", use_cpu=True,
                             dataloader_pin_memory=False, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Rows(encoded),
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    start = time.monotonic()
    result = trainer.train()
    print(json.dumps({"steps": result.global_step, "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
