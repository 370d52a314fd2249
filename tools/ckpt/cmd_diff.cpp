// moe-ckpt diff: two checkpoints compared tensor by tensor, whatever layouts they were saved with.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/checkpoint/checkpoint.h"
#include "core/checkpoint/checkpoint_paths.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/commands.h"

namespace moe::ckpt {

const char* const kDiffHelp = R"(usage: moe-ckpt diff A B

Compares two checkpoints tensor by tensor, whatever layouts they were saved with (expert slices are
reassembled into whole tensors first): tensors only in A or only in B, shape or dtype changes, and
for each common tensor that differs its max absolute difference max|a - b| and max relative
difference max(|a - b| / max(|a|, |b|)). Notes differences of step, run id, layout and config.
Exit status like diff(1): 0 when every tensor is identical, 1 when they differ, 2 on any error.
)";

int cmd_diff(const Args& args) {
  const std::string a_dir = resolve_checkpoint(args.positional[0]), b_dir = resolve_checkpoint(args.positional[1]);
  std::unique_ptr<CheckpointReader> a = open_checkpoint(a_dir), b = open_checkpoint(b_dir);
  const std::vector<TensorInfo> at = list_tensors(*a), bt = list_tensors(*b);
  std::map<std::string, const TensorInfo*> in_b;
  for (const TensorInfo& t : bt) in_b[t.name] = &t;
  std::set<std::string> in_a;
  int only_a = 0, only_b = 0, changed = 0, differ = 0, same = 0;
  for (const TensorInfo& ta : at) {
    in_a.insert(ta.name);
    auto it = in_b.find(ta.name);
    if (it == in_b.end()) {
      std::printf("only in A: %s %s\n", ta.name.c_str(), to_string(ta.shape).c_str());
      ++only_a;
      continue;
    }
    const TensorInfo& tb = *it->second;
    if (ta.shape != tb.shape || ta.dtype != tb.dtype) {
      std::printf("shape differs: %s: A %s %s, B %s %s\n", ta.name.c_str(), to_string(ta.shape).c_str(),
                  to_string(ta.dtype), to_string(tb.shape).c_str(), to_string(tb.dtype));
      ++changed;
      continue;
    }
    Tensor x, y;
    check(read_tensor(*a, ta, &x));
    check(read_tensor(*b, tb, &y));
    double max_abs = 0, max_rel = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double p = x.dtype() == DType::F32 ? x.f32()[i] : x.i32()[i];
      const double q = y.dtype() == DType::F32 ? y.f32()[i] : y.i32()[i];
      if (p == q || (std::isnan(p) && std::isnan(q))) continue;
      double d = std::fabs(p - q);
      if (std::isnan(d)) d = std::numeric_limits<double>::infinity();
      max_abs = std::max(max_abs, d);
      max_rel = std::max(max_rel, d / std::max(std::fabs(p), std::fabs(q)));
    }
    if (max_abs == 0) {
      ++same;
      continue;
    }
    ++differ;
    std::printf("differs: %s %s: max abs %.6g, max rel %.6g\n", ta.name.c_str(), to_string(ta.shape).c_str(), max_abs,
                max_rel);
  }
  for (const TensorInfo& tb : bt)
    if (in_a.count(tb.name) == 0) {
      std::printf("only in B: %s %s\n", tb.name.c_str(), to_string(tb.shape).c_str());
      ++only_b;
    }
  const checkpoint::Manifest &ma = a->manifest(), &mb = b->manifest();
  if (ma.step() != mb.step())
    std::printf("note: step %lld in A, %lld in B\n", static_cast<long long>(ma.step()),
                static_cast<long long>(mb.step()));
  if (ma.run_id() != mb.run_id()) std::printf("note: run %s in A, %s in B\n", ma.run_id().c_str(), mb.run_id().c_str());
  if (layout_text(ma.layout()) != layout_text(mb.layout()))
    std::printf("note: layout %s in A, %s in B\n", layout_text(ma.layout()).c_str(), layout_text(mb.layout()).c_str());
  if (ma.config_yaml() != mb.config_yaml()) std::printf("note: the configs differ (moe-ckpt info --config A / B)\n");
  std::printf("%d tensors in common: %d identical, %d differ, %d change shape; %d only in A, %d only in B\n",
              same + differ + changed, same, differ, changed, only_a, only_b);
  return only_a + only_b + changed + differ == 0 ? 0 : 1;
}

}  // namespace moe::ckpt
