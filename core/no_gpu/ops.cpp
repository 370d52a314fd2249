// The moe::cuda op backend of a build without CUDA: every op throws InvalidArgument.
#include "core/backend.h"
#include "core/check.h"

#define MOE_NO_CUDA(op) throw ::moe::InvalidArgument(#op " has no CUDA implementation in this build")

namespace moe::cuda {

int device_count() { return 0; }  // asked by tests to decide what to skip: an answer, not an error
void use_device(int) { MOE_NO_CUDA(use_device); }
void synchronize() { MOE_NO_CUDA(synchronize); }
void* allocate_bytes(int64_t) { MOE_NO_CUDA(allocate_bytes); }
void free_bytes(void*) {}  // nothing was ever allocated (and a deleter must not throw)
void copy_bytes(void*, const void*, int64_t) { MOE_NO_CUDA(copy_bytes); }
void zero_bytes(void*, int64_t) { MOE_NO_CUDA(zero_bytes); }
void fill_f32(float*, int64_t, float) { MOE_NO_CUDA(fill_f32); }
void copy_to_host(void*, const void*, int64_t) { MOE_NO_CUDA(copy_to_host); }
void copy_from_host(void*, const void*, int64_t) { MOE_NO_CUDA(copy_from_host); }

void convert(Tensor&, const Tensor&) { MOE_NO_CUDA(convert); }

void linear_forward(Tensor&, const Tensor&, const Tensor&, const Tensor*) { MOE_NO_CUDA(linear_forward); }
void linear_backward(Tensor*, Tensor*, Tensor*, const Tensor&, const Tensor&, const Tensor&) {
  MOE_NO_CUDA(linear_backward);
}
void grouped_linear_forward(Tensor&, const Tensor&, const std::vector<int64_t>&, const Tensor&) {
  MOE_NO_CUDA(grouped_linear_forward);
}
void grouped_linear_backward(Tensor*, Tensor*, const Tensor&, const Tensor&, const std::vector<int64_t>&,
                             const Tensor&) {
  MOE_NO_CUDA(grouped_linear_backward);
}

void relu_forward(Tensor&, const Tensor&) { MOE_NO_CUDA(relu_forward); }
void relu_backward(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(relu_backward); }
void gelu_forward(Tensor&, const Tensor&) { MOE_NO_CUDA(gelu_forward); }
void gelu_backward(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(gelu_backward); }
void swiglu_forward(Tensor&, const Tensor&) { MOE_NO_CUDA(swiglu_forward); }
void swiglu_backward(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(swiglu_backward); }

void sigmoid_forward(Tensor&, const Tensor&) { MOE_NO_CUDA(sigmoid_forward); }
void sigmoid_backward(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(sigmoid_backward); }
void softmax_forward(Tensor&, const Tensor&) { MOE_NO_CUDA(softmax_forward); }
void softmax_backward(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(softmax_backward); }
void normalize_rows_forward(Tensor&, const Tensor&) { MOE_NO_CUDA(normalize_rows_forward); }
void normalize_rows_backward(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(normalize_rows_backward); }

void rmsnorm_forward(Tensor&, Tensor&, const Tensor&, const Tensor&, float) { MOE_NO_CUDA(rmsnorm_forward); }
void rmsnorm_backward(Tensor*, Tensor*, const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  MOE_NO_CUDA(rmsnorm_backward);
}
void layernorm_forward(Tensor&, Tensor&, Tensor&, const Tensor&, const Tensor&, const Tensor&, float) {
  MOE_NO_CUDA(layernorm_forward);
}
void layernorm_backward(Tensor*, Tensor*, Tensor*, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                        const Tensor&) {
  MOE_NO_CUDA(layernorm_backward);
}

float cross_entropy_forward(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(cross_entropy_forward); }
void cross_entropy_backward(Tensor&, const Tensor&, const Tensor&, float) {
  MOE_NO_CUDA(cross_entropy_backward);
}

void embedding_forward(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(embedding_forward); }
void embedding_backward(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(embedding_backward); }

void gather_rows(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(gather_rows); }
void scatter_add_rows(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(scatter_add_rows); }
void combine_forward(Tensor&, const Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(combine_forward); }
void combine_backward(Tensor*, Tensor*, const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  MOE_NO_CUDA(combine_backward);
}
void add_scaled(Tensor&, const Tensor&, float) { MOE_NO_CUDA(add_scaled); }

void linear_transposed_forward(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(linear_transposed_forward); }
void linear_transposed_backward(Tensor*, Tensor*, const Tensor&, const Tensor&, const Tensor&) {
  MOE_NO_CUDA(linear_transposed_backward);
}

void rotary_forward(Tensor&, const Tensor&, int64_t, int64_t, float, const Tensor*, int64_t) {
  MOE_NO_CUDA(rotary_forward);
}
void rotary_backward(Tensor&, const Tensor&, int64_t, int64_t, float, const Tensor*) { MOE_NO_CUDA(rotary_backward); }
void causal_attention_forward(Tensor&, Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t,
                              const Tensor*) {
  MOE_NO_CUDA(causal_attention_forward);
}
void causal_attention_backward(Tensor*, Tensor*, Tensor*, const Tensor&, const Tensor&, const Tensor&,
                               const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t, const Tensor*) {
  MOE_NO_CUDA(causal_attention_backward);
}
void cached_attention_forward(Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t) {
  MOE_NO_CUDA(cached_attention_forward);
}

void topk_forward(Tensor&, Tensor&, const Tensor&, int64_t, bool, const Tensor*, float) {
  MOE_NO_CUDA(topk_forward);
}
void topk_backward(Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, float) {
  MOE_NO_CUDA(topk_backward);
}
void expert_choice_topk(Tensor&, const Tensor&) { MOE_NO_CUDA(expert_choice_topk); }
void static_route_forward(Tensor&, Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(static_route_forward); }
void group_limit_forward(Tensor&, const Tensor&, const Tensor*, int64_t, int64_t, int64_t) {
  MOE_NO_CUDA(group_limit_forward);
}
void jitter_forward(Tensor&, Tensor&, const Tensor&, float, uint64_t, uint64_t) { MOE_NO_CUDA(jitter_forward); }
void jitter_backward(Tensor&, const Tensor&, const Tensor&) { MOE_NO_CUDA(jitter_backward); }
void load_balance_sums(std::vector<double>&, std::vector<double>&, const Tensor&, const Tensor&, int64_t) {
  MOE_NO_CUDA(load_balance_sums);
}
void load_balance_backward(Tensor&, const std::vector<double>&, double, double, double, double) {
  MOE_NO_CUDA(load_balance_backward);
}
double z_loss_forward(const Tensor&, double, double) { MOE_NO_CUDA(z_loss_forward); }
void z_loss_backward(Tensor&, const Tensor&, const Tensor&, double, double, double) { MOE_NO_CUDA(z_loss_backward); }
void index_ramp(Tensor&, int64_t, int64_t, int64_t) { MOE_NO_CUDA(index_ramp); }
int64_t first_nonfinite(const Tensor&) { MOE_NO_CUDA(first_nonfinite); }

void adamw_update(Tensor&, Tensor&, Tensor&, const Tensor&, const AdamWScalars&) { MOE_NO_CUDA(adamw_update); }
void sgd_update(Tensor&, Tensor&, const Tensor&, float, float, float) { MOE_NO_CUDA(sgd_update); }
double sum_of_squares(const Tensor&) { MOE_NO_CUDA(sum_of_squares); }
void scale_in_place(Tensor&, double) { MOE_NO_CUDA(scale_in_place); }
void selection_bias_update(Tensor&, const std::vector<int64_t>&, double) { MOE_NO_CUDA(selection_bias_update); }

}  // namespace moe::cuda
