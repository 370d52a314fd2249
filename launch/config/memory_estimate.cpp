// How much memory a run needs on each rank (launch/config/memory_estimate.h). Each term names the
// buffers it counts (core/model, core/moe, optim); float32 and int32 are 4 bytes, counters 8.
#include "launch/config/memory_estimate.h"

#include <algorithm>

#include "core/check.h"
#include "optim/optimizer.h"
#include "parallel/local_rank.h"

namespace moe {

namespace {

// Weights of an FFN of width d and hidden h (SwiGLU: two input matrices).
double ffn_params(double d, double h, Activation activation) {
  return d * h * (activation == Activation::SwiGLU ? 3 : 2);
}

// Floats an FFN keeps per row in a step: pre-activation and activation, and their backward scratch.
double ffn_row_floats(double h, Activation activation) {
  return 2 * (h * (activation == Activation::SwiGLU ? 2 : 1) + h);
}

}  // namespace

MemoryEstimate estimate_memory_per_rank(const TrainConfig& cfg, int world_size) {
  const ModelConfig& m = cfg.model;
  const MoEConfig& moe = cfg.moe;
  const double d = static_cast<double>(m.d_model), V = static_cast<double>(m.vocab_size);
  const double S = static_cast<double>(m.seq_len), H = static_cast<double>(m.n_heads);
  const double T = static_cast<double>(cfg.data.batch_size) * S;  // tokens of a micro-batch
  const double E = static_cast<double>(moe.num_experts), k = static_cast<double>(moe.top_k);
  const double ep = static_cast<double>(cfg.parallel.ep == 0 ? world_size : cfg.parallel.ep);
  const double E_local = E / ep;
  const double expert_h = static_cast<double>(moe.expert_hidden);
  const double shared_h = static_cast<double>(moe.shared_hidden());
  const double norm_params = m.norm == NormKind::LayerNorm ? 2 * d : d;
  const double norm_row_floats = m.norm == NormKind::LayerNorm ? 2 : 1;  // mean (LayerNorm), rstd
  const double domains = cfg.data.source == DataSource::Synthetic ? static_cast<double>(cfg.data.synthetic_domains) : 0;

  // Parameters (embedding, positions, head, and per layer: norms, attention, FFN or router + experts).
  double params =
      V * d + (m.positions == PositionKind::Learned ? S * d : 0) + norm_params + (m.tie_embeddings ? 0 : d * V);
  // Activations, in floats: embedding output, final norm, logits and probabilities, their gradients;
  // token ids, targets and positions (int32).
  double act = T * d * (m.positions == PositionKind::Learned ? 5 : 4) + 2 * T * V + 3 * T + norm_row_floats * T;
  double per_expert_state = 0;  // bytes per expert per MoE layer: selection bias, routing counters
  for (int64_t i = 0; i < m.n_layers; ++i) {
    const bool is_moe = m.is_moe_layer(i);
    params += 2 * norm_params + d * static_cast<double>(m.qkv_width()) + d * d;
    // Block: two norm outputs, residual, output; attention: qkv, q, k, v, the output before its
    // projection and the gradients of each (rotary: one more), the log-sum-exp per query and head
    // (the probabilities are recomputed in the backward, never stored), indices.
    act += 4 * T * d + 2 * norm_row_floats * T;
    act += T * d * (7 + 8 + (m.positions == PositionKind::Rotary ? 1 : 0)) + T * H + 3 * T;
    if (!is_moe) {
      params += ffn_params(d, static_cast<double>(m.dense_hidden), m.dense_activation);
      act += T * ffn_row_floats(static_cast<double>(m.dense_hidden), m.dense_activation);
      continue;
    }
    params += d * E + E_local * ffn_params(d, expert_h, moe.activation) + ffn_params(d, shared_h, moe.activation);
    per_expert_state += 4 + 8 * (4 + domains);
    // Router: logits, probabilities and their gradients (T, E); its jittered input and noise; top-k
    // choices, weights and their gradient. Experts: the T k routed rows in expert order, their
    // outputs and gradients (moved rows twice more when the experts are spread over ranks), and the
    // expert FFN on them. A shared expert runs on every token.
    const double rows = T * k;
    act += 4 * T * E + (moe.jitter_eps > 0 ? 3 * T * d : 0) + 3 * T * k;
    act += rows * d * (ep > 1 ? 8 : 4) + rows * ffn_row_floats(expert_h, moe.activation);
    if (shared_h > 0) act += T * d + T * ffn_row_floats(shared_h, moe.activation);
  }
  const double optimizer_slots = static_cast<double>(optimizer_state_names(cfg.optim.name, "").size());
  MemoryEstimate e;
  e.parameters = 4 * params * (2 + optimizer_slots) + per_expert_state * E;
  e.activations = 4 * act;
  return e;
}

AvailableMemory available_memory_per_rank(Communicator& world) {
  const AvailableMemory node = available_memory();
  const int ranks_on_node = local_placement(world).local_size;
  const double mine = static_cast<double>(node.bytes) / std::max(1, ranks_on_node);
  const double least = all_reduce_value(world, mine, ReduceOp::Min);
  return {static_cast<uint64_t>(least),
          world.size() == 1 ? node.source
                            : node.source + " divided among the ranks of each node, the least of any rank"};
}

void require_fits_in_memory(const TrainConfig& cfg, int world_size, const AvailableMemory& per_rank) {
  const MemoryEstimate e = estimate_memory_per_rank(cfg, world_size);
  MOE_REQUIRE(e.total() <= static_cast<double>(per_rank.bytes),
              "config: the model does not fit in memory: each rank needs about ", memory_size_text(e.total()),
              " (parameters with gradients and optimizer state ", memory_size_text(e.parameters),
              ", activations of a step ", memory_size_text(e.activations), "), and ",
              memory_size_text(static_cast<double>(per_rank.bytes)), " is available per rank (", per_rank.source,
              "); make the model smaller (moe.num_experts, moe.expert_hidden, model.d_model, model.vocab_size, "
              "model.n_layers) or a step (data.batch_size, model.seq_len), or spread the experts over more ranks "
              "(parallel.ep)");
}

}  // namespace moe
