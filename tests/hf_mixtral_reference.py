# The reference test of the model's math against transformers' MixtralForCausalLM (tests/hf_mixtral_reference.sh
# runs it in a venv with Debian's torch and transformers 4.44): a small random Mixtral made by
# transformers itself is imported with moe-ckpt import (at ep 1 and ep 2; float32, and bfloat16 and
# float16 files), our forward's logits and loss on the same tokens are compared with transformers';
# exporting the import gives back the very same tensors; moe-train trains a few steps from the ep 2
# import on 2 ranks; the result is exported with --format hf-mixtral, and transformers reads it back
# with the same logits as our model's, and the run's tokenizer.json with it.
#   hf_mixtral_reference.py MOE_CKPT MOE_TRAIN MODEL_LOGITS MPIRUN WORK_DIR
import json
import os
import subprocess
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, MixtralConfig, MixtralForCausalLM

moe_ckpt, moe_train, model_logits, mpirun, work = sys.argv[1:6]
os.chdir(work)
torch.manual_seed(0)
V, S, B = 96, 16, 2

# Every feature the mapping has to get right: grouped-query attention (4 query heads, 2 key/value heads),
# rope_theta 1e6, an untied head, top-2 of 4 experts; weights at initializer_range 0.1 so the logits and
# the routing are far from uniform, and norm gains away from 1 so a misplaced gain shows.
config = MixtralConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                       max_position_embeddings=32, rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       initializer_range=0.1, router_aux_loss_coef=0.02)
hf = MixtralForCausalLM(config).eval()
with torch.no_grad():
    for name, p in hf.named_parameters():
        if "norm" in name:
            p.uniform_(0.5, 1.5)
# Small shards: the import reads the sharded form (model.safetensors.index.json).
hf.save_pretrained("hf", safe_serialization=True, max_shard_size="200KB")
assert os.path.exists("hf/model.safetensors.index.json"), os.listdir("hf")
tokens = torch.randint(0, V, (B, S))
with open("tokens.txt", "w") as f:
    for row in tokens.tolist():
        f.write(" ".join(map(str, row)) + "\n")


def run(*cmd):
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def ours(ckpt):
    """Our forward from checkpoint ckpt: (B, S, V) logits and the mean next-token loss."""
    out = run(model_logits, ckpt, "tokens.txt", ckpt + ".logits")
    loss = float(out.split()[1])
    return np.fromfile(ckpt + ".logits", dtype="<f4").reshape(B, S, V), loss


def theirs(model):
    with torch.no_grad():
        out = model(tokens, labels=tokens)
    return out.logits.numpy(), out.loss.item()


# Both sides compute in float32 from the same weights; they differ only in the order of summation (GEMM
# blocking, softmax and norm reductions), a few float32 roundings per value, each relative 6e-8, grown
# through 2 layers to ~1e-6 of the logits' scale. 1e-4 of that scale is far above it and far below any
# mapping error (a wrong permutation, transpose or half moves logits by their own size). A router near a
# tie could flip an expert on such a difference; the seed is fixed, and such a flip would fail loudly.
def same(a, b, what):
    scale = float(np.abs(b[0]).max())
    err = float(np.abs(a[0] - b[0]).max())
    assert err <= 1e-4 * scale, f"{what}: logits differ by {err} (scale {scale})"
    assert abs(a[1] - b[1]) <= 1e-5 * abs(b[1]), f"{what}: loss {a[1]} vs {b[1]}"
    print(f"{what}: max |logit difference| {err:.2e} of scale {scale:.2f}; loss {a[1]:.6f} vs {b[1]:.6f}")


reference = theirs(hf)
for ep in (1, 2):
    run(moe_ckpt, "import", "hf", "--ep", str(ep), f"imported_ep{ep}")
    same(ours(f"imported_ep{ep}"), reference, f"import at ep {ep}")

# bfloat16 and float16 files: converted exactly, so they match transformers' model read from the same
# files into float32 (not a model cast back and forth: that would round its rotary frequencies too).
for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
    rounded = MixtralForCausalLM(config).eval()
    rounded.load_state_dict(hf.state_dict())
    rounded.to(dtype).save_pretrained(f"hf_{name}", safe_serialization=True)
    run(moe_ckpt, "import", f"hf_{name}", f"imported_{name}")
    widened = MixtralForCausalLM.from_pretrained(f"hf_{name}", torch_dtype=torch.float32).eval()
    same(ours(f"imported_{name}"), theirs(widened), f"import of {name} tensors")

# The mapping is a bijection: the export of the import holds exactly transformers' tensors.
run(moe_ckpt, "export", "imported_ep2", "--format", "hf-mixtral", "roundtrip")
original = {}
for f in sorted(os.listdir("hf")):
    if f.endswith(".safetensors"):
        original.update(load_file(f"hf/{f}"))
back = load_file("roundtrip/model.safetensors")
assert sorted(back) == sorted(original), set(back) ^ set(original)
for name, t in original.items():
    assert np.array_equal(back[name], t), f"export of the import: {name} differs"
exported_config = json.load(open("roundtrip/config.json"))
for key, value in config.to_dict().items():
    if key in exported_config and key not in ("architectures", "torch_dtype", "bos_token_id", "eos_token_id"):
        assert exported_config[key] == value, f"config.json {key}: {exported_config[key]} != {value}"
print(f"export of the import: the same {len(original)} tensors and config values")

# A few training steps from the ep 2 import on 2 ranks (dropless, as imported), then export. The run names
# a tokenizer.json (data.tokenizer; the synthetic corpus does not read it), which the export copies.
from tokenizers import Tokenizer, models, pre_tokenizers
os.mkdir("tok")
pieces = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab"] + [f"<0x{i:02X}>" for i in range(V - 8)]
tokenizer = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, [("\u2581", "a"), ("a", "b")], unk_token="<unk>"))
tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
tokenizer.save("tok/tokenizer.json")
cfg = run(moe_ckpt, "info", "imported_ep2", "--config")
open("train.yaml", "w").write(cfg)
run(mpirun, "--oversubscribe", "--timeout", "300", "-np", "2", moe_train, "train.yaml",
    "checkpoint.init_from=imported_ep2", "run.dir=trained", "run.steps=3", "run.log_every=1", "run.eval_every=0",
    "checkpoint.every=3", f"model.seq_len={S}", "data.batch_size=2", "optim.warmup_steps=0", "optim.lr=0.01",
    "data.tokenizer=tok/tokenizer.json")
trained = "trained/checkpoints/step_00000003"
trained_logits = ours(trained)
assert float(np.abs(trained_logits[0] - reference[0]).max()) > 1e-3 * float(np.abs(reference[0]).max()), \
    "training did not change the model"
run(moe_ckpt, "export", trained, "--format", "hf-mixtral", "exported")
reloaded = AutoModelForCausalLM.from_pretrained("exported").eval()
assert isinstance(reloaded, MixtralForCausalLM) and reloaded.config.num_key_value_heads == 2
same(trained_logits, theirs(reloaded), "trained and exported")
assert open("exported/tokenizer.json").read() == open("tok/tokenizer.json").read()
assert reloaded.config.eos_token_id == 2 and reloaded.config.bos_token_id is None, reloaded.config
from transformers import AutoTokenizer
assert AutoTokenizer.from_pretrained("exported", legacy=False).encode("a a", add_special_tokens=False) == [6, 6]
print("hf_mixtral_reference: OK")
