// Training telemetry on rank 0: the progress line, metrics.jsonl and TensorBoard scalars, all fed
// from one StepMetrics record per logged step; and the peak FLOP/s that MFU is measured against.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/model/model_options.h"
#include "launch/trainer/tensorboard_writer.h"
#include "parallel/communicator.h"

namespace moe {

// Seconds per optimizer step spent in each phase, averaged over the steps since the last log line
// and over the ranks. The phases do not overlap: forward and backward exclude the MoE layers'
// all-to-alls, which are token_exchange. A checkpoint's time is spread over the steps of its interval.
struct PhaseTimes {
  double data = 0;            // the loader
  double forward = 0;         // model forward, less token_exchange
  double backward = 0;        // model backward, less token_exchange
  double token_exchange = 0;  // the MoE layers' all-to-alls (counts, tokens there and back), both passes
  double grad_sync = 0;       // gradient all-reduces and the step's loss all-reduce
  double optimizer = 0;       // gradient norm, clipping, the update, aux-free biases
  double checkpoint = 0;      // saving checkpoints

  static constexpr int kCount = 7;
  double* begin() { return &data; }  // the fields in order, for summing and all-reduces
  const double* begin() const { return &data; }
};

// One MoE layer's routing over the steps since the last log line, all ranks.
struct MoELayerMetrics {
  int64_t layer = 0;               // the model's layer index (0-based), as in parameter names
  std::vector<int64_t> routed;     // (E) (token, choice) pairs that picked each expert, before dropping
  std::vector<int64_t> kept;       // (E) of those, the ones within the expert's capacity
  double router_entropy = 0;       // mean over tokens of the entropy of the router's probabilities, nats;
                                   // 0 with static routing (hash, table), which has no router
  double dropped_frac() const;     // 1 - sum(kept) / sum(routed); 0 when nothing was routed
  double load_max_over_mean() const;  // max over experts of routed / mean routed; 0 when nothing was routed
};

struct StepMetrics {
  int64_t step = 0;             // 1-based count of optimizer steps done
  int64_t total_steps = 0;
  double loss = 0;              // cross-entropy, mean over ranks and micro-batches
  double aux_loss = 0;          // sum over MoE layers, mean over ranks and micro-batches
  double z_loss = 0;            // sum over MoE layers, mean over ranks and micro-batches
  double lr = 0;
  double grad_norm = 0;         // before clipping
  double tokens_per_s = 0;      // all ranks together
  double model_gflops_per_rank = 0;  // model FLOPs per token x tokens/s / ranks
  double mfu = 0;               // model FLOP/s over the peak of all ranks
  double dropped_frac = 0;      // dropped (token, choice) pairs over all pairs, all MoE layers and ranks
  double load_max_over_mean = 0;  // worst layer's max expert load over mean, by routed (not kept) pairs
  int64_t skipped_steps = 0;    // non-finite steps skipped so far
  double eta_s = 0;
  PhaseTimes time;
  std::vector<MoELayerMetrics> moe_layers;
};

// One line, e.g. "step 40/300 | loss 2.1345 | aux 0.0102 | z 0.00131 | lr 2.9e-03 | gnorm 0.82 |
// 5.1k tok/s | 31.2 GFLOP/s/rank | MFU 41.2% | dropped 1.3% | load max/mean 1.21 | ETA 1m12s".
std::string progress_line(const StepMetrics& m);

// The line of an evaluation: "step 50/400 | eval loss 1.2345 | ppl 3.44 (held-out, ...)".
std::string eval_line(int64_t step, int64_t total_steps, double eval_loss);

// One JSON object per line. Training lines: step, loss, aux_loss, z_loss, lr, grad_norm,
// tokens_per_s, model_gflops_per_rank, mfu, dropped_frac, load_max_over_mean, skipped_steps,
// time_s (seconds per step by phase), moe_layers (a list of {layer, routed, kept, dropped_frac,
// router_entropy, load_max_over_mean}). Evaluation lines: step, "split": "eval", eval_loss,
// eval_perplexity.
// Every write is checked: a failure is recorded in `writes` (which then turns every later write into
// a no-op), never thrown.
class MetricsLog {
 public:
  MetricsLog(const std::string& path, LogWrites& writes);  // appends
  ~MetricsLog();
  void write(const StepMetrics& m);
  void write_eval(int64_t step, double eval_loss);

 private:
  void write_line(const std::string& line);
  std::string path_;
  std::FILE* file_ = nullptr;
  LogWrites& writes_;
};

// Cuts metrics.jsonl at `path` back to its lines of steps <= last_step: it ends at the first line of a
// later step or a torn line (one without its newline, or not a JSON object of a step). A missing
// file is fine; a failure is recorded in `writes`.
void cut_back_metrics(const std::string& path, int64_t last_step, LogWrites& writes);

// The TensorBoard scalars of a step: train/*, perf/*, time/<phase>_ms, moe/dropped_frac,
// moe/load_max_over_mean, moe/layer<i>/{dropped_frac,router_entropy,load_max_over_mean} and
// expert_load/layer<i>/expert<e> (the expert's share of the layer's routed pairs), with i the
// model's layer index.
void write_tensorboard(TensorBoardWriter& tb, const StepMetrics& m);
void write_tensorboard_eval(TensorBoardWriter& tb, int64_t step, double eval_loss);
// The text summary moe/routing at `step` (the run's first step): the MoE layers' routing in words
// (MoEConfig::routing_description), shown in TensorBoard's TEXT tab.
void write_tensorboard_routing(TensorBoardWriter& tb, int64_t step, const std::string& routing);

// The peak MFU divides by: the sum over ranks of each rank's peak GFLOP/s, and how it was obtained.
struct PeakFlops {
  double total_gflops = 0;
  std::string how;  // for the start-up line
};

// Collective over world. With gflops_per_rank > 0 (run.peak_gflops) the peak is that times the
// world size. Otherwise every rank times a GEMM of 2048^3 in the run's precision (float32, or
// bfloat16 inputs with a float32 output: linear_forward as the model calls it) on its own threads, all
// ranks at once (a barrier before each repeat, so ranks sharing a machine share it as they will in
// training): one warm-up, then the best of 5. Best, not median: a peak must not be lowered by a noisy
// repeat, which would flatter MFU. About a second on one Zen 4 core in float32. On Device::CUDA the
// GEMM is the CUDA backend's linear_forward of 8192^3 on the rank's GPU.
PeakFlops measure_peak_flops(Communicator& world, double gflops_per_rank, Device device = Device::CPU,
                             Precision precision = Precision::FP32);

std::string format_duration(double seconds);  // "1h02m", "3m12s", "45s"

}  // namespace moe
