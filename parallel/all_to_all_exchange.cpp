// The expert exchange over an expert-parallel group (parallel/all_to_all_exchange.h).
#include "parallel/all_to_all_exchange.h"

#include "core/timer.h"
#include "parallel/token_exchange.h"

namespace moe {

namespace {

class AllToAllExchange final : public ExpertExchange {
 public:
  AllToAllExchange(const ProcessGroups& groups, const Stream& stream) : groups_(groups), stream_(stream) {}

  int64_t num_experts() const override { return groups_.layout.num_experts; }
  int64_t first_expert() const override { return groups_.layout.first_expert; }
  int64_t local_experts() const override { return groups_.layout.experts_per_rank; }
  int rank() const override { return groups_.layout.world_rank; }

  const std::vector<int64_t>& plan(const DispatchPlan& plan, MoEPhaseTimes& time) override {
    if (!moves_rows()) {
      offset_ = plan.offset;
      return offset_;
    }
    LapTimer timer;
    plan_ = make_exchange_plan(plan, groups_.layout, *groups_.expert_parallel.control);
    timer.lap(&time.counts_exchange);
    return plan_.local_offset;
  }

  // Rows land straight in expert order (each (source, expert) block at its place), so the local
  // experts run as one grouped pass with no regrouping copy.
  const Tensor& to_experts(const Tensor& rows, Tensor& expert_rows, MoEPhaseTimes& time) override {
    if (!moves_rows()) return rows;
    LapTimer timer;
    resize_on(expert_rows, {plan_.received_rows(), rows.dim(1)}, rows.device(), rows.dtype());
    all_to_all_blocks(*groups_.expert_parallel.data, rows, plan_.dispatch_blocks, expert_rows, plan_.expert_blocks,
                      stream_);
    timer.lap(&time.token_exchange);
    return expert_rows;
  }

  Tensor& expert_output(Tensor& rows, Tensor& expert_rows) override {
    if (!moves_rows()) return rows;
    resize_on(expert_rows, {plan_.received_rows(), rows.dim(1)}, rows.device(), rows.dtype());
    return expert_rows;
  }

  // Rows go from expert order straight back into each source's dispatch order.
  void from_experts(const Tensor& expert_rows, Tensor& rows, MoEPhaseTimes& time) override {
    if (!moves_rows()) return;
    LapTimer timer;
    all_to_all_blocks(*groups_.expert_parallel.data, expert_rows, plan_.expert_blocks, rows, plan_.dispatch_blocks,
                      stream_);
    timer.lap(&time.return_exchange);
  }

  void all_reduce_balance_terms(LoadBalanceTerms& terms) override {
    all_reduce_packed<double>(*groups_.world.control,
                              {terms.choice_count, terms.prob_sum, {&terms.num_choices, 1}, {&terms.num_tokens, 1}});
    terms.ranks = groups_.layout.world_size;
  }

 private:
  bool moves_rows() const { return groups_.layout.ep > 1; }

  const ProcessGroups& groups_;
  const Stream stream_;
  ExchangePlan plan_;            // of the last forward, reused by its backward
  std::vector<int64_t> offset_;  // ep = 1: the dispatch plan's own segments
};

}  // namespace

std::unique_ptr<ExpertExchange> make_all_to_all_exchange(const ProcessGroups& groups, const Stream& stream) {
  return std::make_unique<AllToAllExchange>(groups, stream);
}

}  // namespace moe
