// Edits of an MoE layer's experts on its full tensors (optim/expert_edit.h).
#include "optim/expert_edit.h"

#include <cstring>
#include <numeric>

#include "core/check.h"
#include "core/parameter_names.h"
#include "core/random.h"
#include "optim/optimizer.h"

namespace moe {

ExpertEdit keep_experts_edit(int64_t old_experts, const std::vector<int64_t>& keep) {
  ExpertEdit edit;
  edit.old_experts = old_experts;
  for (int64_t e : keep) {
    MOE_ASSERT(e >= 0 && e < old_experts, "kept experts are old experts");
    edit.experts.push_back({e, 0, true});
  }
  return edit;
}

ExpertEdit add_experts_edit(int64_t old_experts, int64_t count, int64_t from) {
  MOE_ASSERT(from < old_experts, "a copied expert is an old expert");
  std::vector<int64_t> all(static_cast<size_t>(old_experts));
  std::iota(all.begin(), all.end(), 0);
  ExpertEdit edit = keep_experts_edit(old_experts, all);
  for (int64_t n = 0; n < count; ++n) edit.experts.push_back({from < 0 ? -1 : from, 0, false});
  return edit;
}

ExpertEdit split_experts_edit(int64_t old_experts, const std::vector<int64_t>& ids, float noise) {
  MOE_ASSERT(noise > 0, "a split perturbs its copy");
  ExpertEdit edit = add_experts_edit(old_experts, 0, -1);
  for (int64_t e : ids) {
    MOE_ASSERT(e >= 0 && e < old_experts, "split experts are old experts");
    edit.experts.push_back({e, noise, true});
  }
  return edit;
}

int expert_axis(const std::string& name, int64_t* layer) {
  names::LayerTensorName n;
  if (!names::parse_layer_tensor(parameter_of(name), &n) || n.part != names::kMoE) return -1;
  int axis = -1;
  if (n.leaf == names::kWIn || n.leaf == names::kWOut || n.leaf == names::kSelectionBias) axis = 0;
  if (n.leaf == names::kWGate) axis = 1;
  if (axis >= 0) *layer = n.layer;
  return axis;
}

Tensor apply_expert_edit(const ExpertEdit& edit, const std::string& name, const Tensor& full) {
  int64_t layer = -1;
  const int axis = expert_axis(name, &layer);
  MOE_ASSERT(axis >= 0 && full.rank() > axis && full.dim(axis) == edit.old_experts,
             "an expert edit applies to its layer's expert-indexed tensors");
  const bool state = is_optimizer_state(name);
  std::vector<int64_t> ids;
  for (const NewExpert& x : edit.experts) ids.push_back(state && !x.copy_state ? -1 : x.from);
  Tensor out = gather_axis(full, axis, ids);
  names::LayerTensorName n;
  names::parse_layer_tensor(name, &n);
  const bool weights = !state && (n.leaf == names::kWIn || n.leaf == names::kWOut);
  if (!weights) return out;
  const int64_t per_expert = out.numel() / out.dim(0);
  const float fresh_std = edit.init_std * (n.leaf == names::kWOut ? edit.out_scale : 1.0f);
  const uint64_t noise_stream = stream_id(edit.seed, "split." + name);
  for (int64_t j = 0; j < edit.new_experts(); ++j) {
    const NewExpert& x = edit.experts[j];
    const uint64_t offset = static_cast<uint64_t>(j * per_expert);
    Tensor row = out.rows(j, j + 1);
    if (x.from < 0) {
      fill_normal(row, fresh_std, stream_id(edit.seed, name), offset);
    } else if (x.noise > 0) {
      float* w = row.f32();
      for (int64_t i = 0; i < per_expert; ++i)
        w[i] *= 1.0f + x.noise * standard_normal(noise_stream, offset + static_cast<uint64_t>(i));
    }
  }
  return out;
}

Tensor gather_axis(const Tensor& t, int axis, const std::vector<int64_t>& ids) {
  MOE_ASSERT(axis >= 0 && axis < t.rank(), "axis within the tensor's rank");
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < axis; ++i) outer *= t.dim(i);
  for (int i = axis + 1; i < t.rank(); ++i) inner *= t.dim(i);
  const int64_t n = t.dim(axis);
  Shape shape = t.shape();
  shape[axis] = static_cast<int64_t>(ids.size());
  Tensor out = Tensor::zeros(shape, t.dtype());
  // float32 and int32 are both 4 bytes: copy as raw words.
  const char* src =
      t.dtype() == DType::F32 ? reinterpret_cast<const char*>(t.f32()) : reinterpret_cast<const char*>(t.i32());
  char* dst = t.dtype() == DType::F32 ? reinterpret_cast<char*>(out.f32()) : reinterpret_cast<char*>(out.i32());
  const size_t row = static_cast<size_t>(inner) * 4;
  for (int64_t o = 0; o < outer; ++o)
    for (size_t j = 0; j < ids.size(); ++j) {
      if (ids[j] < 0) continue;
      MOE_ASSERT(ids[j] < n, "gathered index within the axis");
      std::memcpy(dst + (o * static_cast<int64_t>(ids.size()) + static_cast<int64_t>(j)) * row,
                  src + (o * n + ids[j]) * row, row);
    }
  return out;
}

}  // namespace moe
