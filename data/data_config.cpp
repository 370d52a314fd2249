// Validation of the training data's settings (data/data_config.h).
#include "data/data_config.h"

#include "core/check.h"

namespace moe {
namespace {

void require_synthetic_ranges(const DataConfig& c) {
  require_in_range("synthetic_domains", c.synthetic_domains, DataConfig::kSyntheticDomainsRange);
  require_in_range("synthetic_branching", c.synthetic_branching, DataConfig::kSyntheticBranchingRange);
  require_in_range("synthetic_sequences", c.synthetic_sequences, DataConfig::kSyntheticSequencesRange);
}

}  // namespace

void DataConfig::validate(int64_t vocab_size) const {
  require_in_range("eval_fraction", eval_fraction, kEvalFractionRange);
  require_in_range("batch_size", batch_size, kBatchSizeRange);
  require_synthetic_ranges(*this);
  MOE_REQUIRE(source != DataSource::Tokens || !train_path.empty(),
              "source = tokens needs train_path (a token file), which is empty");
  MOE_REQUIRE(document_end_token == kAutoEndToken || kDocumentEndTokenRange.contains(document_end_token),
              "document_end_token = ", document_end_token, " is out of range; accepted: ",
              kDocumentEndTokenRange.text(), ", or auto");
  MOE_REQUIRE(!document_mask || source == DataSource::Tokens,
              "document_mask = true needs source = tokens: the synthetic corpus has no documents");
  if (source == DataSource::Synthetic) validate_synthetic(vocab_size);
}

void DataConfig::validate_synthetic(int64_t vocab_size) const {
  require_synthetic_ranges(*this);
  MOE_REQUIRE(vocab_size >= 2 * synthetic_domains, "synthetic_domains = ", synthetic_domains,
              " needs model.vocab_size >= 2 * ", synthetic_domains, " = ", 2 * synthetic_domains,
              ", but model.vocab_size = ", vocab_size);
  const int64_t band = vocab_size / synthetic_domains;
  MOE_REQUIRE(synthetic_branching <= band, "synthetic_branching = ", synthetic_branching,
              " must be <= model.vocab_size / synthetic_domains = ", vocab_size, " / ", synthetic_domains, " = ",
              band);
}

}  // namespace moe
