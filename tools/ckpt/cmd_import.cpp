// moe-ckpt import: a Hugging Face Mixtral directory (config.json + safetensors) as a checkpoint that
// moe-train starts from (checkpoint.init_from) at any ep.
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/command_line.h"
#include "core/crc32c.h"
#include "data/tokenizer.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/command_line.h"
#include "tools/ckpt/commands.h"
#include "tools/ckpt/hf_mixtral.h"
#include "tools/ckpt/safetensors.h"
#include "tools/ckpt/written_report.h"

namespace moe::ckpt {

const char* const kImportHelp =
    R"(usage: moe-ckpt import DIR [--ep N] [--world-size W] [--seq-len S] OUT

Reads the Hugging Face Mixtral directory DIR (what MixtralForCausalLM.save_pretrained writes:
config.json and model.safetensors, or model.safetensors.index.json and its shards; float32, bfloat16
or float16 tensors, converted to float32) and writes the model as the new checkpoint directory OUT
at step 0, with a fresh optimizer state (zeros), saved as by W ranks (default N) with expert-parallel
size N (default 1). The checkpoint's config has the model: and moe: sections the weights need
(RMSNorm, rotary with the file's rope_theta, SwiGLU experts, softmax top-k renormalised, dropless:
moe.capacity_factor 0, moe.aux_loss_coeff = router_aux_loss_coef); the other sections are defaults.
moe-train fine-tunes it with checkpoint.init_from=OUT on any number of ranks whose ep divides the
experts. Refused, each with the file and key or tensor: another model_type or architecture, config
values our model cannot express (hidden_act, rope_scaling, sliding_window, ...), a missing, extra or
misshapen tensor, another dtype. docs/hf-mixtral.md has the mapping.
  --ep N, --world-size W   layout of the result (as for reshard)
  --seq-len S   the result's model.seq_len (default: max_position_embeddings); moe-train may also
                override it (model.seq_len=S): no weight depends on it
)";

namespace {

// Rotary's inverse frequencies, which older transformers saved as buffers: derived from rope_theta,
// not weights.
bool is_derived_buffer(const std::string& name) {
  const std::string suffix = "rotary_emb.inv_freq";
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The tensors of `dir` checked against what a Mixtral of cfg holds: every one present, with its shape
// and a float dtype, and nothing else. CheckpointError naming the file and the tensor.
void check_tensors(const std::string& dir, const TrainConfig& cfg,
                   const std::map<std::string, SafetensorsEntry>& entries) {
  std::map<std::string, Shape> expected;
  for (const MixtralTensorSpec& s : mixtral_tensor_specs(cfg)) expected[s.name] = s.shape;
  const std::string described = "the Mixtral that '" + dir + "/config.json' describes";
  for (const auto& [name, shape] : expected) {
    const auto it = entries.find(name);
    if (it == entries.end())
      throw CheckpointError("'" + dir + "' has no tensor '" + name + "', which " + described + " needs" +
                            (name == "lm_head.weight" ? " (tie_word_embeddings is false)" : ""));
    const SafetensorsEntry& e = it->second;
    if (e.shape != shape)
      throw CheckpointError("'" + e.file + "': tensor '" + name + "' has shape " + to_string(e.shape) + "; " +
                            described + " needs " + to_string(shape));
    if (!is_float_dtype(e.dtype))
      throw CheckpointError("'" + e.file + "': tensor '" + name + "' has dtype " + e.dtype +
                            "; accepted: F32, BF16, F16");
  }
  for (const auto& [name, e] : entries)
    if (!expected.count(name) && !is_derived_buffer(name))
      throw CheckpointError("'" + e.file + "': tensor '" + name + "' is not part of " + described +
                            (name == "lm_head.weight" ? " (tie_word_embeddings is true: the head is the embedding)"
                                                      : ""));
}

}  // namespace

int cmd_import(const Args& args) {
  const std::string dir = args.positional[0], out = args.positional[1];
  require_new_output(out);
  const int ep = args.has("--ep") ? static_cast<int>(parse_integer_argument("--ep", args.get("--ep"), 1, INT_MAX)) : 1;
  const int world = args.has("--world-size")
                        ? static_cast<int>(parse_integer_argument("--world-size", args.get("--world-size"), 1, INT_MAX))
                        : ep;
  MOE_REQUIRE(world % ep == 0, "--ep ", ep, " must divide the world size ", world,
              args.has("--world-size") ? " (--world-size)" : "");
  const std::string config_path = dir + "/config.json";
  if (!std::filesystem::is_regular_file(config_path))
    throw CheckpointError("'" + dir + "' has no config.json; is it a Hugging Face model directory?");
  const std::string config_text = read_text_file(config_path, "config");
  TrainConfig cfg = train_config_from_mixtral(config_text, config_path);
  if (args.has("--seq-len"))
    cfg.model.seq_len = parse_integer_argument("--seq-len", args.get("--seq-len"), 2, INT32_MAX);

  const std::map<std::string, SafetensorsEntry> entries = read_safetensors_directory(dir);
  check_tensors(dir, cfg, entries);
  std::map<std::string, int64_t> dtypes;
  CheckpointData data;
  data.dir = dir;
  data.config = cfg;
  data.tensors = from_mixtral(cfg, [&](const std::string& name) {
    const SafetensorsEntry& e = entries.at(name);
    ++dtypes[e.dtype];
    return read_safetensors_f32(e, name);
  });
  std::vector<NamedTensor> state;
  for (const NamedTensor& t : data.tensors)
    if (is_parameter(t.name))
      for (const std::string& name : optimizer_state_names(cfg.optim.name, t.name))
        state.push_back({name, Tensor::zeros(t.data.shape()), t.expert});
  for (NamedTensor& t : state) data.tensors.push_back(std::move(t));
  data.sort();

  // Step 0 of a run whose id is derived from the source, so importing the same files twice gives the
  // same checkpoint.
  char run_id[24];
  std::snprintf(run_id, sizeof run_id, "hf%08x", crc32c(config_text.data(), config_text.size()));
  data.header.set_run_id(run_id);
  data.header.set_step(0);
  checkpoint::TrainingState* s = data.header.mutable_state();
  for (int64_t i = 0; i < cfg.model.n_layers; ++i) {
    s->add_moe_layer_calls(0);
    checkpoint::ExpertUsage* u = data.header.add_expert_usage();
    u->set_layer(i);
    for (int64_t e = 0; e < cfg.moe.num_experts; ++e) u->add_tokens(0);
  }

  std::vector<std::string> notes;
  std::string read;
  for (const auto& [dtype, n] : dtypes) read += (read.empty() ? "" : ", ") + std::to_string(n) + " " + dtype;
  notes.push_back("read " + std::to_string(entries.size()) + " tensors of '" + dir + "' (" + read +
                  "), stored as float32");
  notes.push_back("routing is dropless (moe.capacity_factor 0), as Mixtral's; model.seq_len " +
                  std::to_string(cfg.model.seq_len) + (args.has("--seq-len") ? "" : " (max_position_embeddings)"));
  for (const auto& [file, option] : {std::pair{"tokenizer.json", "--hf-tokenizer"}, {"tokenizer.model", "--sentencepiece"}})
    if (std::filesystem::exists(dir + "/" + file))
      notes.push_back("the model's tokenizer: moe-tokenize " + std::string(option) + " " + dir + "/" + file +
                      " makes token files for it (data.tokenizer=" + dir + "/" + file + ")");
  write_checkpoint_data(data, world, ep, out);
  report_written(out, data, world, ep, notes);
  return 0;
}

}  // namespace moe::ckpt
