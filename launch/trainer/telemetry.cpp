// Training telemetry (launch/trainer/telemetry.h).
#include "launch/trainer/telemetry.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <sstream>

#include "core/check.h"
#include "core/gemm.h"
#include "core/timer.h"

namespace moe {

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
                "step %lld/%lld | loss %.4f | aux %.4f | z %.5f | lr %.2e | gnorm %.3f | %.1f%s tok/s | MFU %.1f%% | "
                "dropped %.1f%% | load max/mean %.2f | ETA %s",
                (long long)m.step, (long long)m.total_steps, m.loss, m.aux_loss, m.z_loss, m.lr, m.grad_norm,
                tps >= 1e3 ? tps / 1e3 : tps, tps >= 1e3 ? "k" : "", 100.0 * m.mfu, 100.0 * m.dropped_frac,
                m.load_max_over_mean, format_duration(m.eta_s).c_str());
  std::string line = buf;
  if (m.skipped_steps > 0) line += " | skipped " + std::to_string(m.skipped_steps);
  return line;
}

MetricsLog::MetricsLog(const std::string& path) {
  file_ = std::fopen(path.c_str(), "a");
  MOE_REQUIRE(file_ != nullptr, "cannot open '", path, "' for writing: ", std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

namespace {
// JSON has no NaN or Infinity: non-finite values are written as null.
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
}  // namespace

void MetricsLog::write(const StepMetrics& m) {
  std::ostringstream os;
  os << "{\"step\": " << m.step << ", \"loss\": " << json_number(m.loss) << ", \"aux_loss\": " << json_number(m.aux_loss)
     << ", \"z_loss\": " << json_number(m.z_loss) << ", \"lr\": " << json_number(m.lr)
     << ", \"grad_norm\": " << json_number(m.grad_norm) << ", \"tokens_per_s\": " << json_number(m.tokens_per_s)
     << ", \"mfu\": " << json_number(m.mfu) << ", \"dropped_frac\": " << json_number(m.dropped_frac)
     << ", \"load_max_over_mean\": " << json_number(m.load_max_over_mean) << ", \"skipped_steps\": " << m.skipped_steps
     << ", \"tokens_per_expert\": [";
  for (size_t l = 0; l < m.tokens_per_expert.size(); ++l) {
    os << (l ? ", " : "") << "[";
    for (size_t e = 0; e < m.tokens_per_expert[l].size(); ++e) os << (e ? ", " : "") << m.tokens_per_expert[l][e];
    os << "]";
  }
  os << "]}\n";
  std::fputs(os.str().c_str(), file_);
  std::fflush(file_);
}

void MetricsLog::write_eval(int64_t step, double eval_loss) {
  std::fprintf(file_, "{\"step\": %lld, \"split\": \"eval\", \"eval_loss\": %s}\n", (long long)step,
               json_number(eval_loss).c_str());
  std::fflush(file_);
}

void write_tensorboard(TensorBoardWriter& tb, const StepMetrics& m) {
  std::vector<std::pair<std::string, float>> s = {
      {"train/loss", static_cast<float>(m.loss)},
      {"train/aux_loss", static_cast<float>(m.aux_loss)},
      {"train/z_loss", static_cast<float>(m.z_loss)},
      {"train/lr", static_cast<float>(m.lr)},
      {"train/grad_norm", static_cast<float>(m.grad_norm)},
      {"perf/tokens_per_s", static_cast<float>(m.tokens_per_s)},
      {"perf/mfu", static_cast<float>(m.mfu)},
      {"moe/dropped_frac", static_cast<float>(m.dropped_frac)},
      {"moe/load_max_over_mean", static_cast<float>(m.load_max_over_mean)},
  };
  for (size_t l = 0; l < m.tokens_per_expert.size(); ++l) {
    int64_t total = 0;
    for (int64_t c : m.tokens_per_expert[l]) total += c;
    for (size_t e = 0; e < m.tokens_per_expert[l].size(); ++e)
      s.emplace_back("expert_load/moe_layer" + std::to_string(l) + "/expert" + std::to_string(e),
                     total ? static_cast<float>(m.tokens_per_expert[l][e]) / total : 0.f);
  }
  tb.add_scalars(m.step, s);
  tb.flush();
}

double measure_gemm_peak_gflops() {
  const int64_t M = 2048, N = 1024, K = 1024;
  std::vector<float> a(M * K, 0.5f), b(K * N, 0.25f), c(M * N);
  std::vector<double> times;
  for (int i = 0; i < 6; ++i) {
    const double t0 = now_seconds();
    gemm(false, false, M, N, K, 1.f, a.data(), K, b.data(), N, 0.f, c.data(), N);
    if (i > 0) times.push_back(now_seconds() - t0);  // the first call warms up
  }
  std::sort(times.begin(), times.end());
  return 2.0 * M * N * K / times[times.size() / 2] / 1e9;
}

}  // namespace moe
