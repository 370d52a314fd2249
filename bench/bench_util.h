// What the benchmarks share: the median they report, and for bench-moe-layer and bench-moe-dispatch the
// MoE layer's shape and timing flags with the layer config they describe.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/command_line.h"
#include "core/moe/moe_config.h"

namespace bench {

struct LayerArgs {
  int64_t d = 512, h = 2048, E = 8, k = 2, T = 4096;
  double cf = 1.25;
  std::string activation = "gelu";
  std::string precision = "fp32";  // of the expert products and the rows exchanged
  int threads = 1, warmup = 2, repeats = 7;
};

// Reads the value v of flag s into a when s is one of the flags above (--d, --h, --experts, --topk,
// --tokens, --capacity-factor, --activation, --precision, --threads, --warmup, --repeats); false for any
// other flag.
// A value out of range throws InvalidArgument naming the flag.
inline bool parse_layer_arg(const std::string& s, const char* v, LayerArgs& a) {
  if (s == "--d") a.d = moe::parse_integer_argument(s, v, 1, INT64_MAX);
  else if (s == "--h") a.h = moe::parse_integer_argument(s, v, 1, INT64_MAX);
  else if (s == "--experts") a.E = moe::parse_integer_argument(s, v, 1, INT64_MAX);
  else if (s == "--topk") a.k = moe::parse_integer_argument(s, v, 1, INT64_MAX);
  else if (s == "--tokens") a.T = moe::parse_integer_argument(s, v, 1, INT64_MAX);
  else if (s == "--capacity-factor") a.cf = moe::parse_number_argument(s + " (<= 0: dropless)", v, -HUGE_VAL, HUGE_VAL);
  else if (s == "--activation") a.activation = v;
  else if (s == "--precision") a.precision = v;
  else if (s == "--threads") a.threads = static_cast<int>(moe::parse_integer_argument(s, v, 1, INT_MAX));
  else if (s == "--warmup") a.warmup = static_cast<int>(moe::parse_integer_argument(s, v, 0, INT_MAX));
  else if (s == "--repeats") a.repeats = static_cast<int>(moe::parse_integer_argument(s, v, 1, INT_MAX));
  else return false;
  return true;
}

// The layer these flags describe (not validated; an unknown activation or precision throws InvalidArgument).
inline moe::MoEConfig layer_config(const LayerArgs& a) {
  moe::MoEConfig cfg;
  cfg.d_model = a.d;
  cfg.expert_hidden = a.h;
  cfg.num_experts = a.E;
  cfg.top_k = a.k;
  cfg.capacity_factor = a.cf;
  cfg.activation = moe::parse_activation(a.activation);
  MOE_REQUIRE(a.precision == "fp32" || a.precision == "bf16", "--precision ", a.precision,
              ": expected fp32 or bf16");
  cfg.precision = a.precision == "bf16" ? moe::Precision::BF16 : moe::Precision::FP32;
  return cfg;
}

// The median of v (the mean of the middle two for an even count).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

}  // namespace bench
