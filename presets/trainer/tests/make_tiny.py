"""A tiny base model, its tokenizer and a dataset, made on the spot: what a real training run needs,
with nothing downloaded. tests/test_ml.py trains on them; a test in another language that runs the
tuning Job's command with the real trainer calls this to put them on disk:

    python -m tests.make_tiny --out DIR [--shape messages|dolly]     (in presets/trainer)
    python presets/trainer/tests/make_tiny.py --out DIR ...          (anywhere: it imports no trainer module)

writes DIR/model (a randomly initialised Phi-3-shaped model, saved as transformers saves one, with
a word-level tokenizer and Phi-3's chat template) and DIR/data/train-00000-of-00001.parquet, and
prints {"model": ..., "data": ..., "shape": ...} as JSON. Needs torch, transformers, tokenizers
and pyarrow; the standard-library tests import this module without them (the builders import
what they use when called).
"""

import argparse
import json
import os
import sys

SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# Phi-3's turn markers; like many templates it writes BOS itself, so the trainer must not add another.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
# What a data set in each shape needs in DatasetConfig for the trainer to find its columns.
DATASET_CONFIG = {
    "dolly": {"context_column": "instruction", "response_column": "response"},
    "messages": {},
}


def dolly_rows():
    """Rows shaped like databricks-dolly-15k: instruction, context, response, category. Sums, so
    the answers follow a pattern a model this small can start to learn in a few steps."""
    rows = [
        {
            "instruction": f"What is {NUMBERS[a]} plus {NUMBERS[b]} ?",
            "context": "",
            "response": f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]} .",
            "category": "open_qa",
        }
        for a in range(1, 7)
        for b in range(1, 5)
    ]
    rows.append(
        {
            "instruction": "What colour is the sky ?",
            "context": "The sky is blue on a clear day .",
            "response": "The sky is blue .",
            "category": "closed_qa",
        }
    )
    return rows


def messages_rows():
    """The same rows in the OpenAI chat shape (a messages column), as dolly-15k-oai-style has them."""
    return [
        {"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["response"]}]}
        for r in dolly_rows()
    ]


def corpus():
    """Every word the rows use, so the tokenizer knows them all (no <unk> in training text)."""
    return [r["instruction"] + " " + r["context"] + " " + r["response"] for r in dolly_rows()]


def build_tokenizer(texts, out_dir):
    """A word-level tokenizer trained on texts, saved as transformers saves a fast tokenizer, with
    BOS added to plain text as Llama's and Phi-3's tokenizers do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL))
    backend.add_special_tokens(SPECIAL)
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = TEMPLATE
    tok.save_pretrained(out_dir)
    return tok


def build_model(tok, out_dir, seed=0):
    """A randomly initialised Phi-3-shaped model small enough to train in seconds on a CPU: the
    architecture (fused qkv_proj and gate_up_proj, which LoRA's target_modules name) is what matters.
    Its attention heads are 32 wide, the narrowest vLLM's CPU attention serves, so a test can serve
    the model and its adapter too."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.Phi3Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        original_max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=None,
    )
    transformers.Phi3ForCausalLM(config).save_pretrained(out_dir)


def write_parquet(rows, path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def make(out, shape="messages"):
    """Writes the model and a data set of shape under out; returns where they are."""
    if shape not in DATASET_CONFIG:
        raise ValueError("shape {!r}: want one of {}".format(shape, ", ".join(DATASET_CONFIG)))
    model_dir = os.path.join(out, "model")
    data_dir = os.path.join(out, "data")
    os.makedirs(data_dir, exist_ok=True)
    rows = dolly_rows() if shape == "dolly" else messages_rows()
    write_parquet(rows, os.path.join(data_dir, "train-00000-of-00001.parquet"))
    tok = build_tokenizer(corpus(), model_dir)
    build_model(tok, model_dir)
    # Readable by a trainer that runs as another user (the image's is 1000): safetensors files are
    # written private to their owner.
    for d in (model_dir, data_dir):
        for name in os.listdir(d):
            os.chmod(os.path.join(d, name), 0o644)
    return {
        "model": model_dir,
        "data": data_dir,
        "shape": shape,
        "rows": len(rows),
        "dataset_config": DATASET_CONFIG[shape],
    }


def main(argv=None):
    p = argparse.ArgumentParser(prog="make_tiny", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the directory to write model/ and data/ under")
    p.add_argument(
        "--shape",
        default="messages",
        choices=sorted(DATASET_CONFIG),
        help="the data set's shape: messages (the default dataset's) or dolly (instruction/response columns)",
    )
    args = p.parse_args(argv)
    json.dump(make(args.out, args.shape), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
