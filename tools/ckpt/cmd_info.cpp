// moe-ckpt info: a checkpoint's step, layout, config summary, parameter counts and expert usage.
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/available_memory.h"
#include "core/checkpoint/checkpoint.h"
#include "core/model/transformer.h"
#include "launch/trainer/trainer.h"
#include "core/checkpoint/checkpoint_paths.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/commands.h"

namespace moe::ckpt {

const char* const kInfoHelp = R"(usage: moe-ckpt info CKPT [--config]

Prints the checkpoint's step, run id, format version, layout (world size, expert-parallel size,
experts per rank, placement), a summary of its config (model shape, MoE settings, optimizer), the
training state, parameter counts (total, and active per token: each MoE layer's expert tensors
count top_k / E of their size) and, when recorded, each MoE layer's expert usage (share of the
kept tokens per expert over the run).
  --config   print only the full config YAML recorded in the manifest (for moe-train)
)";

namespace {

std::string yaml_value(const YAML::Node& root, const char* section, const char* key) {
  try {
    const YAML::Node n = root[section][key];
    return n && n.IsScalar() ? n.as<std::string>() : "?";
  } catch (const std::exception&) {
    return "?";
  }
}

}  // namespace

int cmd_info(const Args& args) {
  const std::string dir = resolve_checkpoint(args.positional[0]);
  std::unique_ptr<CheckpointReader> reader = open_checkpoint(dir);
  const checkpoint::Manifest& m = reader->manifest();
  if (args.has("--config")) {
    std::fputs(m.config_yaml().c_str(), stdout);
    return 0;
  }
  const std::vector<TensorInfo> tensors = list_tensors(*reader);
  // The summary shows the config's values as written; the MoE layers and the parameter counts are
  // those of the model moe-train builds from it.
  YAML::Node c;
  std::optional<TransformerConfig> model;
  std::string config_problem;
  try {
    c = YAML::Load(m.config_yaml());
    model = transformer_config(parse_manifest_config(m, dir));
  } catch (const std::exception& e) {
    config_problem = e.what();
  }
  auto v = [&](const char* s, const char* k) { return yaml_value(c, s, k); };
  const checkpoint::Layout& l = m.layout();

  std::printf("checkpoint   %s\n", dir.c_str());
  std::printf("step         %lld\n", static_cast<long long>(m.step()));
  std::printf("run id       %s\n", m.run_id().c_str());
  std::printf("format       version %u (this build reads 1 to %u)\n", m.format_version(), kCheckpointFormatVersion);
  std::printf("layout       %s\n", layout_text(l).c_str());
  std::printf("placement    %s; experts are stored by the first %d ranks\n", l.placement().c_str(), l.ep());

  std::vector<int64_t> moe_layers;
  if (model)
    for (int64_t i = 0; i < model->n_layers; ++i)
      if (model->is_moe_layer(i)) moe_layers.push_back(i);
  std::string moe_list;
  for (int64_t i : moe_layers) {
    if (!moe_list.empty()) moe_list += ' ';
    moe_list += std::to_string(i);
  }
  if (!config_problem.empty()) {
    std::printf("config       unreadable: %s\n", config_problem.c_str());
  } else {
    std::printf(
        "model        %s layers (MoE: %s), d_model %s, %s heads, vocab %s, seq_len %s, %s, %s positions, "
        "tied embeddings %s\n",
        v("model", "n_layers").c_str(), moe_list.empty() ? "none" : moe_list.c_str(), v("model", "d_model").c_str(),
        v("model", "n_heads").c_str(), v("model", "vocab_size").c_str(), v("model", "seq_len").c_str(),
        v("model", "norm").c_str(), v("model", "positions").c_str(), v("model", "tie_embeddings").c_str());
    std::printf("dense FFN    hidden %s, %s (moe_every %s)\n", v("model", "dense_hidden").c_str(),
                v("model", "dense_activation").c_str(), v("model", "moe_every").c_str());
    std::printf(
        "MoE          %s experts, top_k %s, expert_hidden %s, %s, capacity_factor %s, balancing %s, "
        "shared_experts %s\n",
        v("moe", "num_experts").c_str(), v("moe", "top_k").c_str(), v("moe", "expert_hidden").c_str(),
        v("moe", "activation").c_str(), v("moe", "capacity_factor").c_str(), v("moe", "balancing").c_str(),
        v("moe", "shared_experts").c_str());
    std::printf("optimizer    %s, lr %s (min %s, %s, warmup %s), weight_decay %s, grad_clip %s\n",
                v("optim", "name").c_str(), v("optim", "lr").c_str(), v("optim", "min_lr").c_str(),
                v("optim", "schedule").c_str(), v("optim", "warmup_steps").c_str(), v("optim", "weight_decay").c_str(),
                v("optim", "grad_clip").c_str());
  }
  const checkpoint::TrainingState& s = m.state();
  std::printf("training     optimizer steps %lld, data epoch %llu after %llu sequences, skipped steps %lld\n",
              static_cast<long long>(s.optimizer_steps()), static_cast<unsigned long long>(s.loader_epoch()),
              static_cast<unsigned long long>(s.loader_sequences_done()), static_cast<long long>(s.skipped_steps()));
  if (model)
    std::printf("parameters   %lld total, %lld active per token (top_k %lld of %lld experts in %zu MoE layers)\n",
                static_cast<long long>(model->total_params()), static_cast<long long>(model->active_params_per_token()),
                static_cast<long long>(model->moe.top_k), static_cast<long long>(model->moe.num_experts),
                moe_layers.size());
  uint64_t bytes = 0;
  for (const auto& e : m.tensors()) bytes += e.length();
  std::printf("stored       %d entries in %zu logical tensors, %s of tensor data in %d shard files\n", m.tensors_size(),
              tensors.size(), memory_size_text(bytes).c_str(), m.shards_size());
  if (m.expert_usage_size() == 0) {
    std::printf("expert usage not recorded\n");
    return 0;
  }
  std::printf("expert usage (share of each MoE layer's kept tokens, whole run)\n");
  for (const checkpoint::ExpertUsage& u : m.expert_usage()) {
    double sum = 0;  // a double: counts near 2^63 (a crafted checkpoint) must not overflow a sum
    for (int64_t t : u.tokens()) sum += static_cast<double>(t);
    std::printf("  layer %lld:", static_cast<long long>(u.layer()));
    for (int e = 0; e < u.tokens_size(); ++e)
      std::printf("  %d: %.3f", e, sum > 0 ? static_cast<double>(u.tokens(e)) / sum : 0.0);
    std::printf("   (%.0f tokens)\n", sum);
  }
  return 0;
}

}  // namespace moe::ckpt
