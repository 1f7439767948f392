"""Make a tiny Llama-architecture model offline, for tests and the demo.

The model has random weights (it answers nonsense, quickly) but is a real
Hugging Face model directory that vLLM loads like any other: config.json,
model.safetensors, a byte-level BPE tokenizer trained here on generated text,
and a chat template. Everything is derived from a fixed seed, so two runs
write byte-identical files (model staging stays idempotent).

Shapes follow what vLLM's CPU attention kernels accept (head_dim 32).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HIDDEN = 128
INTERMEDIATE = 256
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
VOCAB = 1024
MAX_POSITIONS = 2048
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WORDS = (
    "the a an gpu card server fleet model token cache tensor data parallel vllm nginx upstream "
    "route request answer stream fast slow memory bandwidth link pcie nvlink plan host port "
    "user assistant system hello world one two three four five six seven eight nine ten"
).split()


def corpus(rng: random.Random, lines: int = 4000):
    for _i in range(lines):
        yield " ".join(rng.choice(WORDS) for _i in range(rng.randint(4, 16))) + "."


def build_tokenizer(seed: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(random.Random(seed)), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def build_weights(seed: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(vocab, HIDDEN), "model.norm.weight": np.ones(HIDDEN, np.float32)}
    for i in range(LAYERS):
        p = "model.layers.%d." % i
        tensors[p + "self_attn.q_proj.weight"] = w(HEADS * HEAD_DIM, HIDDEN)
        tensors[p + "self_attn.k_proj.weight"] = w(KV_HEADS * HEAD_DIM, HIDDEN)
        tensors[p + "self_attn.v_proj.weight"] = w(KV_HEADS * HEAD_DIM, HIDDEN)
        tensors[p + "self_attn.o_proj.weight"] = w(HIDDEN, HEADS * HEAD_DIM)
        tensors[p + "mlp.gate_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.up_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.down_proj.weight"] = w(HIDDEN, INTERMEDIATE)
        tensors[p + "input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    tensors["lm_head.weight"] = w(vocab, HIDDEN)
    return tensors


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def make_model(out: Path, seed: int = 1234) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(seed)
    vocab = tok.get_vocab_size()
    ids = {t: tok.token_to_id(t) for t in SPECIAL}
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "model_max_length": MAX_POSITIONS, "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    })
    write_json(out / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
    write_json(out / "config.json", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "vocab_size": vocab, "max_position_embeddings": MAX_POSITIONS, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"], "pad_token_id": ids["<pad>"],
        "torch_dtype": "float32", "initializer_range": 0.02,
    })
    write_json(out / "generation_config.json", {"bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"]})
    save_file(build_weights(seed, vocab), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="model directory to write (created when missing)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    if (args.out / "model.safetensors").exists():
        print("tiny model already at %s" % args.out)
        return
    print("tiny model written to %s" % make_model(args.out, args.seed))


if __name__ == "__main__":
    main()
