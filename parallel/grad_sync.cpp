// Gradient synchronisation over the world and expert-data-parallel groups (parallel/grad_sync.h).
#include "parallel/grad_sync.h"

#include <cstring>

namespace moe {

namespace {

void all_reduce_mean(std::vector<Parameter*>& params, std::vector<float>& buffer, Communicator& comm,
                     float scale) {
  int64_t total = 0;
  for (const Parameter* p : params) total += p->grad.numel();
  if (total == 0) return;
  buffer.resize(static_cast<size_t>(total));
  int64_t at = 0;
  for (const Parameter* p : params) {
    std::memcpy(buffer.data() + at, p->grad.f32(), p->grad.numel() * sizeof(float));
    at += p->grad.numel();
  }
  all_reduce(comm, buffer.data(), total);
  at = 0;
  for (Parameter* p : params) {
    float* g = p->grad.f32();
    for (int64_t i = 0; i < p->grad.numel(); ++i) g[i] = buffer[at + i] * scale;
    at += p->grad.numel();
  }
}

}  // namespace

void GradientSync::sync(ParameterRegistry& registry, const ProcessGroups& groups, int64_t micro_batches) {
  std::vector<Parameter*> dense, expert;
  for (Parameter& p : registry.all()) (p.kind == ParamKind::Dense ? dense : expert).push_back(&p);
  const float scale = 1.0f / static_cast<float>(groups.layout.world_size * micro_batches);
  all_reduce_mean(dense, dense_buffer_, *groups.world, scale);
  all_reduce_mean(expert, expert_buffer_, *groups.expert_data_parallel, scale);
}

}  // namespace moe
