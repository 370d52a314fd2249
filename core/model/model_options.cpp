// Validation of the model's dense settings (core/model/model_options.h).
#include "core/model/model_options.h"

#include <cmath>

#include "core/check.h"

namespace moe {

void ModelConfig::validate() const {
  require_in_range("vocab_size", vocab_size, kVocabSizeRange);
  require_in_range("d_model", d_model, kDModelRange);
  require_in_range("n_layers", n_layers, kNLayersRange);
  require_in_range("n_heads", n_heads, kNHeadsRange);
  require_in_range("seq_len", seq_len, kSeqLenRange);
  require_in_range("moe_every", moe_every, kMoeEveryRange);
  require_in_range("dense_hidden", dense_hidden, kDenseHiddenRange);
  require_in_range("init_std", init_std, kInitStdRange);
  require_in_range("n_kv_heads", n_kv_heads, kNKvHeadsRange);
  require_in_range("norm_eps", norm_eps, kNormEpsRange);
  require_in_range("rope_theta", rope_theta, kRopeThetaRange);
  MOE_REQUIRE(d_model % n_heads == 0, "d_model = ", d_model, " is not divisible by n_heads = ", n_heads);
  MOE_REQUIRE(n_heads % kv_heads() == 0, "n_kv_heads = ", n_kv_heads, " does not divide n_heads = ", n_heads,
              " (each key/value head serves n_heads / n_kv_heads query heads; 0 = n_heads)");
  MOE_REQUIRE(positions != PositionKind::Rotary || head_dim() % 2 == 0,
              "positions = rotary needs an even head dim, but d_model / n_heads = ", d_model, " / ", n_heads, " = ",
              head_dim(), " (use learned, or change either)");
}


}  // namespace moe
