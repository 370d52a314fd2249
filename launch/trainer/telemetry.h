// Training telemetry on rank 0: the progress line, metrics.jsonl and TensorBoard scalars, all fed
// from one StepMetrics record per logged step; and the GEMM peak that MFU is measured against.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "launch/trainer/tensorboard_writer.h"

namespace moe {

struct StepMetrics {
  int64_t step = 0;             // 1-based count of steps done
  int64_t total_steps = 0;
  double loss = 0;              // cross-entropy, mean over ranks
  double aux_loss = 0;          // sum over MoE layers, mean over ranks
  double z_loss = 0;            // sum over MoE layers, mean over ranks
  double lr = 0;
  double grad_norm = 0;         // before clipping
  double tokens_per_s = 0;      // all ranks together
  double mfu = 0;               // model FLOP/s over the measured GEMM peak of all ranks
  double dropped_frac = 0;      // dropped (token, choice) pairs over all pairs, all MoE layers and ranks
  double load_max_over_mean = 0;  // worst layer's max expert load over mean expert load
  int64_t skipped_steps = 0;    // non-finite steps skipped so far
  double eta_s = 0;
  std::vector<std::vector<int64_t>> tokens_per_expert;  // [MoE layer][expert], kept, all ranks
};

// One line, e.g. "step 40/300 | loss 2.1345 | aux 0.0102 | z 0.00131 | lr 2.9e-03 | gnorm 0.82 |
// 5.1k tok/s | MFU 41.2% | dropped 1.3% | load max/mean 1.21 | ETA 1m12s".
std::string progress_line(const StepMetrics& m);

// One JSON object per line: step, loss, aux_loss, z_loss, lr, grad_norm, tokens_per_s, mfu,
// dropped_frac, load_max_over_mean, skipped_steps, tokens_per_expert (list per MoE layer).
// Evaluation lines carry step, eval_loss and "split": "eval".
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path);  // appends; InvalidArgument naming the path on failure
  ~MetricsLog();
  void write(const StepMetrics& m);
  void write_eval(int64_t step, double eval_loss);

 private:
  std::FILE* file_ = nullptr;
};

// The TensorBoard scalars of a step: train/loss, train/aux_loss, ..., and expert_load/layer<i>/
// expert<e> as the share of the layer's kept tokens.
void write_tensorboard(TensorBoardWriter& tb, const StepMetrics& m);

// GFLOP/s of a plain float32 GEMM (2048 x 1024 x 1024) on this rank's threads: the peak MFU is
// measured against. Median of a few repeats after a warm-up; about half a second.
double measure_gemm_peak_gflops();

std::string format_duration(double seconds);  // "1h02m", "3m12s", "45s"

}  // namespace moe
