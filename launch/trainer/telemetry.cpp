// Training telemetry (launch/trainer/telemetry.h).
#include "launch/trainer/telemetry.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "core/check.h"
#include "core/cpu/gemm.h"
#include "core/model/model_options.h"
#include "core/ops.h"
#include "core/timer.h"

namespace moe {

namespace {
const char* const kPhaseNames[PhaseTimes::kCount] = {"data",      "forward",   "backward",  "token_exchange",
                                                     "grad_sync", "optimizer", "checkpoint"};

int64_t sum(const std::vector<int64_t>& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

// JSON has no NaN or Infinity: non-finite values are written as null.
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void json_list(std::ostream& os, const std::vector<int64_t>& v) {
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << "]";
}
}  // namespace

double MoELayerMetrics::dropped_frac() const {
  const int64_t all = sum(routed);
  return all ? 1.0 - static_cast<double>(sum(kept)) / all : 0.0;
}

double MoELayerMetrics::load_max_over_mean() const {
  const int64_t all = sum(routed);
  if (all == 0) return 0.0;
  return static_cast<double>(*std::max_element(routed.begin(), routed.end())) * routed.size() / all;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  else std::snprintf(buf, sizeof buf, "%llds", (long long)s);
  return buf;
}

std::string progress_line(const StepMetrics& m) {
  char buf[512];
  const double tps = m.tokens_per_s;
  std::snprintf(buf, sizeof buf,
                "step %lld/%lld | loss %.4f | aux %.4f | z %.5f | lr %.2e | gnorm %.3f | %.1f%s tok/s | "
                "%.1f GFLOP/s/rank | MFU %.1f%% | dropped %.1f%% | load max/mean %.2f | ETA %s",
                (long long)m.step, (long long)m.total_steps, m.loss, m.aux_loss, m.z_loss, m.lr, m.grad_norm,
                tps >= 1e3 ? tps / 1e3 : tps, tps >= 1e3 ? "k" : "", m.model_gflops_per_rank, 100.0 * m.mfu,
                100.0 * m.dropped_frac, m.load_max_over_mean, format_duration(m.eta_s).c_str());
  std::string line = buf;
  if (m.skipped_steps > 0) line += " | skipped " + std::to_string(m.skipped_steps);
  return line;
}

std::string eval_line(int64_t step, int64_t total_steps, double eval_loss) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "step %lld/%lld | eval loss %.4f | ppl %.3f (held-out, evaluation capacity factor)",
                (long long)step, (long long)total_steps, eval_loss, std::exp(eval_loss));
  return buf;
}

MetricsLog::MetricsLog(const std::string& path, LogWrites& writes) : path_(path), writes_(writes) {
  if (!writes_.ok()) return;
  file_ = std::fopen(path.c_str(), "a");
  if (file_ == nullptr) writes_.fail(path, errno);
}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsLog::write_line(const std::string& line) {
  if (file_ == nullptr || !writes_.ok()) return;
  if (std::fputs(line.c_str(), file_) < 0 || std::fflush(file_) != 0) writes_.fail(path_, errno);
}

void cut_back_metrics(const std::string& path, int64_t last_step, LogWrites& writes) {
  std::ifstream in(path, std::ios::binary);
  if (!in || !writes.ok()) return;
  std::string line;
  uint64_t keep = 0;
  // getline leaves eof set on a last line without its newline: such a line is torn.
  while (std::getline(in, line) && !in.eof()) {
    long long step = -1;
    if (line.empty() || line.back() != '}' || std::sscanf(line.c_str(), "{\"step\": %lld", &step) != 1 ||
        step > last_step)
      break;
    keep += line.size() + 1;
  }
  in.close();
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (!ec && keep < size && ::truncate(path.c_str(), static_cast<off_t>(keep)) != 0) writes.fail(path, errno);
}

void MetricsLog::write(const StepMetrics& m) {
  std::ostringstream os;
  os << "{\"step\": " << m.step << ", \"loss\": " << json_number(m.loss) << ", \"aux_loss\": " << json_number(m.aux_loss)
     << ", \"z_loss\": " << json_number(m.z_loss) << ", \"lr\": " << json_number(m.lr)
     << ", \"grad_norm\": " << json_number(m.grad_norm) << ", \"tokens_per_s\": " << json_number(m.tokens_per_s)
     << ", \"model_gflops_per_rank\": " << json_number(m.model_gflops_per_rank) << ", \"mfu\": " << json_number(m.mfu)
     << ", \"dropped_frac\": " << json_number(m.dropped_frac)
     << ", \"load_max_over_mean\": " << json_number(m.load_max_over_mean) << ", \"skipped_steps\": " << m.skipped_steps
     << ", \"time_s\": {";
  for (int i = 0; i < PhaseTimes::kCount; ++i)
    os << (i ? ", " : "") << "\"" << kPhaseNames[i] << "\": " << json_number(m.time.begin()[i]);
  os << "}, \"moe_layers\": [";
  for (size_t l = 0; l < m.moe_layers.size(); ++l) {
    const MoELayerMetrics& ml = m.moe_layers[l];
    os << (l ? ", " : "") << "{\"layer\": " << ml.layer << ", \"routed\": ";
    json_list(os, ml.routed);
    os << ", \"kept\": ";
    json_list(os, ml.kept);
    os << ", \"dropped_frac\": " << json_number(ml.dropped_frac())
       << ", \"router_entropy\": " << json_number(ml.router_entropy)
       << ", \"load_max_over_mean\": " << json_number(ml.load_max_over_mean()) << "}";
  }
  os << "]}\n";
  write_line(os.str());
}

void MetricsLog::write_eval(int64_t step, double eval_loss) {
  write_line("{\"step\": " + std::to_string(step) + ", \"split\": \"eval\", \"eval_loss\": " + json_number(eval_loss) +
             ", \"eval_perplexity\": " + json_number(std::exp(eval_loss)) + "}\n");
}

void write_tensorboard(TensorBoardWriter& tb, const StepMetrics& m) {
  std::vector<std::pair<std::string, float>> s = {
      {"train/loss", static_cast<float>(m.loss)},
      {"train/aux_loss", static_cast<float>(m.aux_loss)},
      {"train/z_loss", static_cast<float>(m.z_loss)},
      {"train/lr", static_cast<float>(m.lr)},
      {"train/grad_norm", static_cast<float>(m.grad_norm)},
      {"perf/tokens_per_s", static_cast<float>(m.tokens_per_s)},
      {"perf/model_gflops_per_rank", static_cast<float>(m.model_gflops_per_rank)},
      {"perf/mfu", static_cast<float>(m.mfu)},
      {"moe/dropped_frac", static_cast<float>(m.dropped_frac)},
      {"moe/load_max_over_mean", static_cast<float>(m.load_max_over_mean)},
  };
  for (int i = 0; i < PhaseTimes::kCount; ++i)
    s.emplace_back(std::string("time/") + kPhaseNames[i] + "_ms", static_cast<float>(1e3 * m.time.begin()[i]));
  for (const MoELayerMetrics& ml : m.moe_layers) {
    const std::string layer = "layer" + std::to_string(ml.layer);
    s.emplace_back("moe/" + layer + "/dropped_frac", static_cast<float>(ml.dropped_frac()));
    s.emplace_back("moe/" + layer + "/router_entropy", static_cast<float>(ml.router_entropy));
    s.emplace_back("moe/" + layer + "/load_max_over_mean", static_cast<float>(ml.load_max_over_mean()));
    const int64_t total = sum(ml.routed);
    for (size_t e = 0; e < ml.routed.size(); ++e)
      s.emplace_back("expert_load/" + layer + "/expert" + std::to_string(e),
                     total ? static_cast<float>(ml.routed[e]) / total : 0.f);
  }
  tb.add_scalars(m.step, s);
  tb.flush();
}

void write_tensorboard_eval(TensorBoardWriter& tb, int64_t step, double eval_loss) {
  tb.add_scalars(step, {{"eval/loss", static_cast<float>(eval_loss)},
                        {"eval/perplexity", static_cast<float>(std::exp(eval_loss))}});
  tb.flush();
}

void write_tensorboard_routing(TensorBoardWriter& tb, int64_t step, const std::string& routing) {
  tb.add_text(step, "moe/routing", routing);
  tb.flush();
}

PeakFlops measure_peak_flops(Communicator& world, double gflops_per_rank, Device device, Precision precision) {
  const int W = world.size();
  char how[256];
  if (gflops_per_rank > 0) {
    std::snprintf(how, sizeof how, "%d rank(s) x %.1f GFLOP/s from run.peak_gflops", W, gflops_per_rank);
    return {gflops_per_rank * W, how};
  }
  const int64_t n = device == Device::CPU ? 2048 : 8192;
  Tensor a32 = Tensor::empty({n, n}, DType::F32, device), b32 = Tensor::empty({n, n}, DType::F32, device),
         c = Tensor::empty({n, n}, DType::F32, device);
  a32.fill(0.5f);
  b32.fill(0.25f);
  const DType products = product_dtype(precision);
  Tensor a16, b16;
  const Tensor& a = as_dtype(a32, a16, products);
  const Tensor& b = as_dtype(b32, b16, products);
  double best = 1e30;
  for (int i = 0; i < 6; ++i) {
    world.barrier();  // every rank computes at once, as in training
    const double t0 = now_seconds();
    linear_forward(c, a, b, nullptr);
    c.rows(0, 1).to(Device::CPU);  // a GPU's GEMM has finished once its result reaches the host
    if (i > 0) best = std::min(best, now_seconds() - t0);  // the first call warms up
  }
  const double mine = 2.0 * n * n * n / best / 1e9;
  double rates[2] = {mine, -mine};  // one all-reduce for the slowest and the fastest rank
  all_reduce(world, rates, 2, ReduceOp::Min);
  const double total = all_reduce_value(world, mine);
  std::snprintf(how, sizeof how,
                "%d rank(s) x %s, %s GEMM %lld^3 on every rank at once, best of 5 after a warm-up: "
                "%.1f to %.1f GFLOP/s per rank (%s); run.peak_gflops overrides",
                W, device == Device::CPU ? (std::to_string(num_threads()) + " thread(s)").c_str() : "1 GPU",
                to_string(products), static_cast<long long>(n), rates[0], -rates[1],
                device == Device::CPU ? gemm_provider() : "cuBLAS");
  return {total, how};
}

}  // namespace moe
