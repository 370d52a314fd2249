// The expert exchange over an expert-parallel group (parallel/all_to_all_exchange.h).
#include "parallel/all_to_all_exchange.h"

#include "core/ops.h"
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
    plan_.to_expert_major = plan_.to_expert_major.to(stream_.device);  // made on the host, like the plan
    plan_.to_source_major = plan_.to_source_major.to(stream_.device);
    timer.lap(&time.counts_exchange);
    return plan_.local_offset;
  }

  // Rows arrive source-major (grouped by sending rank) and are regrouped expert-major, so the
  // local experts run as one grouped pass.
  const Tensor& to_experts(const Tensor& rows, Tensor& expert_rows, MoEPhaseTimes& time) override {
    if (!moves_rows()) return rows;
    LapTimer timer;
    const int64_t R = plan_.received_rows(), C = rows.dim(1);
    resize_on(source_major_, {R, C}, rows.device(), rows.dtype());
    all_to_all_v(*groups_.expert_parallel.data, rows, plan_.send_rows, source_major_, plan_.recv_rows, stream_);
    timer.lap(&time.token_exchange);
    resize_on(expert_rows, {R, C}, rows.device(), rows.dtype());
    gather_rows(expert_rows, source_major_, plan_.to_expert_major);
    timer.lap(&time.permute);
    return expert_rows;
  }

  Tensor& expert_output(Tensor& rows, Tensor& expert_rows) override {
    if (!moves_rows()) return rows;
    resize_on(expert_rows, {plan_.received_rows(), rows.dim(1)}, rows.device(), rows.dtype());
    return expert_rows;
  }

  void from_experts(const Tensor& expert_rows, Tensor& rows, MoEPhaseTimes& time) override {
    if (!moves_rows()) return;
    LapTimer timer;
    resize_on(source_major_, expert_rows.shape(), expert_rows.device(), expert_rows.dtype());
    gather_rows(source_major_, expert_rows, plan_.to_source_major);
    timer.lap(&time.permute);
    all_to_all_v(*groups_.expert_parallel.data, source_major_, plan_.recv_rows, rows, plan_.send_rows, stream_);
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
  ExchangePlan plan_;             // of the last forward, reused by its backward
  std::vector<int64_t> offset_;   // ep = 1: the dispatch plan's own segments
  Tensor source_major_;           // (R, C) rows as they cross the network, kept between calls
};

}  // namespace

std::unique_ptr<ExpertExchange> make_all_to_all_exchange(const ProcessGroups& groups, const Stream& stream) {
  return std::make_unique<AllToAllExchange>(groups, stream);
}

}  // namespace moe
