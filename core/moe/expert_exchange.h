// How an MoE layer's kept rows reach the experts that compute them and come back. The layer talks
// only to this interface: LocalExpertExchange (below) serves a process holding every expert; the
// all-to-all over an expert-parallel group is parallel/all_to_all_exchange.h.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/moe/aux_losses.h"
#include "core/moe/dispatch_plan.h"
#include "core/tensor.h"

namespace moe {

// Seconds spent in each phase of an MoE layer's last call (forward) and its backward.
struct MoEPhaseTimes {
  double router = 0;           // gate GEMM, softmax, top-k (and jitter)
  double permute = 0;          // dispatch plan, gathering tokens into expert order (scatters in
                               // backward); received rows land in expert order, with no regrouping
  double counts_exchange = 0;  // all-to-all of per-expert counts (forward only)
  double token_exchange = 0;   // rows all-to-all towards the experts (tokens; output gradients in backward)
  double experts = 0;          // the grouped expert FFN
  double return_exchange = 0;  // rows all-to-all back to the source ranks
  double combine = 0;          // weighted sum of expert outputs back into token order
  double losses = 0;           // load-balancing and z-loss (and the global-scope all-reduce)
  double total() const {
    return router + permute + counts_exchange + token_exchange + experts + return_exchange + combine + losses;
  }
  double exchanges() const { return counts_exchange + token_exchange + return_exchange; }
};

// One MoE layer's exchange: it keeps the plan of the last forward for the backward, where the two
// directions swap roles (output gradients travel to the experts, input gradients back). Rows are
// float32 (R, C) tensors; "dispatch order" is the dispatch plan's permuted order (M rows, grouped by
// global expert id), "expert order" is this rank's experts' rows grouped by local expert. Calls that
// move rows are collective over the exchange's group; every rank makes them in the same order.
class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;

  virtual int64_t num_experts() const = 0;    // E, over all ranks
  virtual int64_t first_expert() const = 0;   // this rank's experts are global ids
  virtual int64_t local_experts() const = 0;  //   [first_expert, first_expert + local_experts)
  virtual int rank() const = 0;               // the world rank: router jitter noise differs per rank

  // Forward, once per call, before rows move: the exchange of `plan`'s kept rows (the counts
  // all-to-all when distributed, timed as counts_exchange). Returns the (local_experts + 1)
  // segment offsets of the expert-order rows this rank's experts will hold.
  virtual const std::vector<int64_t>& plan(const DispatchPlan& plan, MoEPhaseTimes& time) = 0;

  // rows in dispatch order -> expert order. Returns `rows` itself when nothing moves, else
  // `expert_rows`, resized and filled.
  virtual const Tensor& to_experts(const Tensor& rows, Tensor& expert_rows, MoEPhaseTimes& time) = 0;
  // The (R, C) tensor the experts write their output into so that from_experts brings it into
  // `rows` (already sized (M, C)): `rows` itself when nothing moves, else `expert_rows`, resized.
  virtual Tensor& expert_output(Tensor& rows, Tensor& expert_rows) = 0;
  // expert order -> dispatch order: fills `rows` from expert_output's tensor (nothing to do when
  // that tensor is `rows`).
  virtual void from_experts(const Tensor& expert_rows, Tensor& rows, MoEPhaseTimes& time) = 0;

  // The global load-balancing scope: sums the terms over every rank of the world (nothing to do
  // on one process).
  virtual void all_reduce_balance_terms(LoadBalanceTerms& terms) = 0;
};

// A new exchange per MoE layer (each keeps its own plan between forward and backward).
using ExpertExchangeFactory = std::function<std::unique_ptr<ExpertExchange>()>;

// One process holding all num_experts experts: no row ever moves.
class LocalExpertExchange final : public ExpertExchange {
 public:
  explicit LocalExpertExchange(int64_t num_experts) : num_experts_(num_experts) {}
  int64_t num_experts() const override { return num_experts_; }
  int64_t first_expert() const override { return 0; }
  int64_t local_experts() const override { return num_experts_; }
  int rank() const override { return 0; }
  const std::vector<int64_t>& plan(const DispatchPlan& plan, MoEPhaseTimes&) override {
    offset_ = plan.offset;
    return offset_;
  }
  const Tensor& to_experts(const Tensor& rows, Tensor&, MoEPhaseTimes&) override { return rows; }
  Tensor& expert_output(Tensor& rows, Tensor&) override { return rows; }
  void from_experts(const Tensor&, Tensor&, MoEPhaseTimes&) override {}
  void all_reduce_balance_terms(LoadBalanceTerms&) override {}

 private:
  int64_t num_experts_;
  std::vector<int64_t> offset_;
};

}  // namespace moe
