// moe-ckpt export: a checkpoint's tensors as safetensors, experts reassembled into whole tensors, or
// the model as a Hugging Face Mixtral directory.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/available_memory.h"
#include "core/check.h"
#include "core/checkpoint/checkpoint.h"
#include "data/tokenizer.h"
#include "launch/generate/text_tokenizer.h"
#include "core/checkpoint/checkpoint_paths.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/command_line.h"
#include "tools/ckpt/commands.h"
#include "tools/ckpt/hf_mixtral.h"
#include "tools/ckpt/safetensors.h"

namespace moe::ckpt {

const char* const kExportHelp =
    R"(usage: moe-ckpt export CKPT [--format safetensors|hf-mixtral] [--with-optimizer] [--max-shard-bytes N] OUT

Writes the checkpoint's tensors as safetensors into the new directory OUT: OUT/model.safetensors,
or, when the tensors total more than --max-shard-bytes, Hugging Face's sharded form
(OUT/model.safetensors.index.json with a weight_map, OUT/model-00001-of-0000N.safetensors, ...).
Expert slices are reassembled into whole (E, ...) tensors under the parameter's name, so the export
does not depend on the layout the checkpoint was saved with. __metadata__ holds step, run_id,
format_version and config_yaml. dtypes F32 and I32, little-endian.

With --format hf-mixtral, OUT is a directory transformers loads as MixtralForCausalLM
(AutoModelForCausalLM.from_pretrained(OUT)): config.json, the parameters under Hugging Face's names
in the same safetensors form (float32), and the run's tokenizer (data.tokenizer) as tokenizer.json or
tokenizer.model when the config names one. A model Mixtral cannot express (LayerNorm, learned
positions, dense layers, shared experts, another activation or routing, ...) is refused with the
setting and the value Mixtral needs. docs/hf-mixtral.md has the mapping.
  --format F             safetensors (the default) or hf-mixtral
  --with-optimizer       include the optimizer state ("adamw.m.<param>", ...); left out by default
                         (safetensors only)
  --max-shard-bytes N    shard above N bytes (default 4G; suffixes K, M, G are binary)
)";

namespace {

// Prints what export wrote.
void report_export(const std::string& out, const std::vector<TensorInfo>& tensors,
                   const std::vector<std::string>& files) {
  uint64_t bytes = 0;
  for (const TensorInfo& t : tensors) bytes += static_cast<uint64_t>(t.numel()) * 4;
  std::printf("wrote %s: %zu tensors, %s in %zu file%s (%s", out.c_str(), tensors.size(),
              memory_size_text(bytes).c_str(), files.size(), files.size() == 1 ? "" : "s", files[0].c_str());
  std::printf("%s)\n", files.size() > 1 ? (", ..., " + files.back()).c_str() : "");
}

void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
  f.flush();
  if (!f) throw CheckpointError("cannot write '" + path + "': " + std::strerror(errno));
}

// The run's tokenizer file copied into dir as Hugging Face names it; the end-of-document token as eos
// (data.document_end_token, else the tokenizer's own: a tokenizer.json's, or a SentencePiece model's as
// the moe-tokenize beside this program reads it). Notes what it could not do.
SpecialTokens copy_tokenizer(const TrainConfig& cfg, const std::string& dir) {
  SpecialTokens tokens;
  if (cfg.data.document_end_token != DataConfig::kAutoEndToken) tokens.eos = cfg.data.document_end_token;
  const std::string& path = cfg.data.tokenizer;
  if (path.empty()) return tokens;
  const bool json = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  std::string text;
  try {
    text = read_text_file(path, "tokenizer (data.tokenizer)");
  } catch (const InvalidArgument& e) {
    std::fprintf(stderr, "note: no tokenizer files written: %s\n", e.what());
    return tokens;
  }
  write_text_file(dir + (json ? "/tokenizer.json" : "/tokenizer.model"), text);
  if (tokens.eos >= 0) return tokens;
  try {
    tokens.eos = open_text_tokenizer(path, moe_tokenize_beside_this_program())->record().end_of_document;
  } catch (const InvalidArgument& e) {
    std::fprintf(stderr, "note: eos_token_id left null: %s\n", e.what());
  }
  return tokens;
}

// --format hf-mixtral: the model of the checkpoint in `dir` as a Mixtral directory `out`.
void export_hf_mixtral(const std::string& dir, uint64_t max_shard, const std::string& out) {
  std::unique_ptr<CheckpointReader> reader = open_checkpoint(dir);
  const TrainConfig cfg = parse_manifest_config(reader->manifest(), dir);
  require_mixtral_expressible(cfg);
  std::map<std::string, TensorInfo> ours;
  for (const TensorInfo& t : list_tensors(*reader)) ours[t.name] = t;
  const std::vector<NamedTensor> theirs = to_mixtral(cfg, [&](const std::string& name) {
    const auto it = ours.find(name);
    if (it == ours.end()) throw CheckpointError("checkpoint '" + dir + "' has no tensor '" + name + "'");
    Tensor t;
    check(read_tensor(*reader, it->second, &t));
    return t;
  });
  std::vector<TensorInfo> infos;
  std::map<std::string, const Tensor*> data;
  for (const NamedTensor& t : theirs) {
    infos.push_back({t.name, false, t.data.shape(), DType::F32, {}});
    data[t.name] = &t.data;
  }
  // transformers refuses a safetensors file whose metadata has no "format" of a framework it knows.
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  PendingOutput pending(out);
  const std::vector<std::string> files =
      write_safetensors([&](const TensorInfo& info) { return *data.at(info.name); }, infos, metadata, max_shard,
                        pending.tmp());
  write_text_file(pending.tmp() + "/config.json", mixtral_config_json(cfg, copy_tokenizer(cfg, pending.tmp())));
  pending.commit();
  if (cfg.moe.capacity_factor > 0)
    std::printf("note: the run has moe.capacity_factor = %g, so it dropped tokens over an expert's capacity; "
                "Mixtral is dropless, so its outputs differ from this model's where those drops happened\n",
                cfg.moe.capacity_factor);
  report_export(out, infos, files);
}

}  // namespace

int cmd_export(const Args& args) {
  const std::string format = args.has("--format") ? args.get("--format") : "safetensors";
  MOE_REQUIRE(format == "safetensors" || format == "hf-mixtral", "--format '", format,
              "' is not supported; accepted: safetensors, hf-mixtral");
  MOE_REQUIRE(format == "safetensors" || !args.has("--with-optimizer"),
              "--with-optimizer is for --format safetensors; a Hugging Face directory holds the model only");
  const uint64_t max_shard = args.has("--max-shard-bytes")
                                 ? parse_bytes("--max-shard-bytes", args.get("--max-shard-bytes"))
                                 : uint64_t{4} << 30;
  const std::string out = args.positional[1];
  require_new_output(out);
  const std::string dir = resolve_checkpoint(args.positional[0]);
  if (format == "hf-mixtral") {
    export_hf_mixtral(dir, max_shard, out);
    return 0;
  }
  std::unique_ptr<CheckpointReader> reader = open_checkpoint(dir);
  std::vector<TensorInfo> chosen;
  for (const TensorInfo& t : list_tensors(*reader))
    if (args.has("--with-optimizer") || !is_optimizer_state(t.name)) chosen.push_back(t);
  const checkpoint::Manifest& m = reader->manifest();
  const std::map<std::string, std::string> metadata = {{"step", std::to_string(m.step())},
                                                       {"run_id", m.run_id()},
                                                       {"format_version", std::to_string(m.format_version())},
                                                       {"config_yaml", m.config_yaml()}};
  PendingOutput pending(out);
  const std::vector<std::string> files =
      write_safetensors(checkpoint_tensor_reader(*reader), chosen, metadata, max_shard, pending.tmp());
  pending.commit();
  report_export(out, chosen, files);
  return 0;
}

}  // namespace moe::ckpt
