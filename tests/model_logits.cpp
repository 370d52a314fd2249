// model_logits: our model's forward on given tokens, from a checkpoint, for the reference test against
// transformers (tests/hf_mixtral_reference.py). One process, every expert local, evaluation mode
// (no router jitter; the config's eval capacity factor).
//   model_logits CKPT TOKENS LOGITS
// TOKENS: one sequence per line, token ids separated by spaces, every line the same length S (which
// becomes model.seq_len: no weight depends on it with rotary positions). Writes LOGITS: the (B*S, V)
// float32 logits, little-endian, row b*S + s for position s of sequence b; prints "loss X", the mean
// cross-entropy of predicting each next token of a line (what transformers' loss with labels = the
// tokens is).
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/parameter_names.h"
#include "launch/trainer/trainer.h"
#include "tools/ckpt/ckpt_data.h"

using namespace moe;

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: model_logits CKPT TOKENS LOGITS\n");
    return 2;
  }
  try {
    ckpt::CheckpointData data = ckpt::load_checkpoint_data(argv[1]);
    std::vector<int32_t> inputs, targets;
    int64_t S = 0;
    std::ifstream in(argv[2]);
    MOE_REQUIRE(in, "cannot read '", argv[2], "'");
    for (std::string line; std::getline(in, line);) {
      std::vector<int32_t> seq;
      std::istringstream ls(line);
      for (int32_t t; ls >> t;) seq.push_back(t);
      if (seq.empty()) continue;
      MOE_REQUIRE(S == 0 || static_cast<int64_t>(seq.size()) == S, "'", argv[2], "': lines of different lengths");
      S = static_cast<int64_t>(seq.size());
      for (size_t s = 0; s < seq.size(); ++s) {
        inputs.push_back(seq[s]);
        targets.push_back(s + 1 < seq.size() ? seq[s + 1] : -1);
      }
    }
    MOE_REQUIRE(S >= 2, "'", argv[2], "' holds no sequence of at least 2 tokens");
    data.config.model.seq_len = S;
    TransformerLM model(transformer_config(data.config), static_cast<uint64_t>(data.config.run.seed));
    ParameterRegistry registry;
    model.register_parameters(registry);
    auto copy_into = [&](const std::string& name, Tensor& into) {
      ckpt::NamedTensor* t = data.find(name);
      MOE_REQUIRE(t != nullptr && t->data.shape() == into.shape(), "checkpoint '", argv[1], "': no tensor '", name,
                  "' of shape ", to_string(into.shape()));
      std::copy(t->data.f32(), t->data.f32() + into.numel(), into.f32());
    };
    for (Parameter& p : registry.all()) copy_into(p.name, p.value);
    for (int64_t i = 0; i < data.config.model.n_layers; ++i)
      if (MoELayer* m = model.moe_layer(i)) copy_into(names::layer_tensor(i, names::kMoE, names::kSelectionBias), m->selection_bias);

    const int64_t N = static_cast<int64_t>(inputs.size());
    const Tensor x = Tensor::from_ints({N}, inputs), y = Tensor::from_ints({N}, targets);
    const float loss = model.forward(x, y, /*training=*/false);
    const Tensor& logits = model.logits();
    std::ofstream out(argv[3], std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(logits.f32()), static_cast<std::streamsize>(logits.numel() * 4));
    MOE_REQUIRE(out.good(), "cannot write '", argv[3], "'");
    std::printf("loss %.9g\n", static_cast<double>(loss));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "model_logits: %s\n", e.what());
    return 1;
  }
}
