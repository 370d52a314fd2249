// Generator: text generation from a moe-train checkpoint on every rank of a world, in lockstep. The
// model is built as the checkpoint's run config describes it, with its experts spread over all ranks
// (ep = world size; the MoE layers exchange tokens as in training) and dropless routing; the weights
// are loaded whatever layout they were saved with. Each step runs the new tokens through the model with
// a KV cache (TransformerLM::forward_cached); rank 0 chooses the next token and broadcasts it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/model/transformer.h"
#include "launch/config/train_config.h"
#include "launch/generate/sampling.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"

namespace moe {

struct GenerateOptions {
  SamplingOptions sampling;
  int64_t max_new_tokens = 64;
  int32_t end_of_document = -1;  // generation stops after this token (which is not returned); -1: never
  int64_t choosable = 0;         // > 0: only tokens [0, choosable) are chosen (the tokenizer's, when the
                                 // model's vocabulary is padded beyond it); 0: every token of the model
};

struct GenerateResult {
  std::vector<int32_t> tokens;   // the new tokens, without the end-of-document token
  bool ended = false;            // stopped at the end-of-document token
  int64_t prompt_tokens = 0;
  int64_t decode_steps = 0;      // forward_cached calls after the prefill (one token each)
  double prefill_seconds = 0;    // the prompt's forward and the first choice
  double decode_seconds = 0;     // the steps after it, each a forward of one token and a choice
};

class Generator {
 public:
  // How many tokens (prompt + new) a sequence may reach with learned positions: the table's seq_len
  // rows; with rotary positions, kRotaryLengthFactor x seq_len (positions beyond seq_len were never
  // trained on: the model extrapolates, usually worse the further it goes).
  static constexpr int64_t kRotaryLengthFactor = 8;

  // Collective over world. `path` is a checkpoint directory, or a run directory or checkpoint root
  // whose newest complete checkpoint is taken (core/checkpoint/checkpoint_paths.h). Reads the
  // checkpoint's manifest and run config, checks that the world's ranks can share its experts (ep =
  // world size must divide moe.num_experts), builds the model and loads its weights; sets this
  // process's threads to run.threads_per_rank. Expert-choice routing is refused (each expert picks
  // among a batch's tokens: not causal, so there is nothing to decode token by token). Throws
  // InvalidArgument on every rank alike, naming the checkpoint and what is wrong (missing, damaged,
  // another model), before any collective that a failing rank would leave others waiting in.
  Generator(const std::string& path, Communicator& world);

  const TrainConfig& config() const { return cfg_; }
  const std::string& checkpoint_dir() const { return dir_; }  // the checkpoint `path` named
  int64_t max_length() const;

  // InvalidArgument naming the problem unless the prompt has >= 1 token, each in [0, vocab_size), and
  // prompt + options.max_new_tokens <= max_length(). Local: every rank decides alike.
  void check(const std::vector<int32_t>& prompt, const GenerateOptions& options) const;

  // Collective over world: every rank calls it with the same prompt and options, which check() accepts
  // (it throws as check does, before any collective). Calls on_token(token) for each new token as it is chosen (not for the end-of-document token).
  GenerateResult generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                          const std::function<void(int32_t)>& on_token = {});

 private:
  Communicator& world_;
  std::string dir_;
  TrainConfig cfg_;
  ProcessGroups groups_;
  std::unique_ptr<TransformerLM> model_;
};

}  // namespace moe
