// Validation of the training data's settings (data/data_config.h).
#include "data/data_config.h"

#include <cmath>
#include <cstdlib>

#include "core/check.h"

namespace moe {
namespace {

void require_synthetic_ranges(const DataConfig& c) {
  require_in_range("synthetic_domains", c.synthetic_domains, DataConfig::kSyntheticDomainsRange);
  require_in_range("synthetic_branching", c.synthetic_branching, DataConfig::kSyntheticBranchingRange);
  require_in_range("synthetic_sequences", c.synthetic_sequences, DataConfig::kSyntheticSequencesRange);
}

}  // namespace

std::vector<WeightedFile> parse_train_files(const std::string& text) {
  auto refuse = [&](const std::string& entry, const std::string& why) {
    throw InvalidArgument("train_files = '" + text + "': " + (entry.empty() ? "" : "entry '" + entry + "' ") + why +
                          "; accepted: " + kTrainFilesFormat);
  };
  if (text.empty()) refuse("", "is empty");
  std::vector<WeightedFile> files;
  size_t begin = 0;
  while (true) {
    const size_t comma = text.find(',', begin);
    const std::string entry = text.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin);
    if (entry.empty()) refuse("", "has an empty entry (two commas in a row, or one at an end)");
    const size_t colon = entry.rfind(':');
    if (colon == std::string::npos) refuse(entry, "has no ':WEIGHT'");
    WeightedFile f{entry.substr(0, colon), 0};
    if (f.path.empty()) refuse(entry, "has an empty path");
    const std::string weight = entry.substr(colon + 1);
    char* end = nullptr;
    f.weight = std::strtod(weight.c_str(), &end);
    if (weight.empty() || *end != '\0') refuse(entry, "has weight '" + weight + "', not a number");
    if (!std::isfinite(f.weight) || f.weight <= 0) refuse(entry, "has weight " + weight + ", not a finite number > 0");
    files.push_back(std::move(f));
    if (comma == std::string::npos) return files;
    begin = comma + 1;
  }
}

void DataConfig::validate(int64_t vocab_size) const {
  require_in_range("eval_fraction", eval_fraction, kEvalFractionRange);
  require_in_range("batch_size", batch_size, kBatchSizeRange);
  require_synthetic_ranges(*this);
  MOE_REQUIRE(source != DataSource::Tokens || !train_path.empty() || !train_files.empty(),
              "source = tokens needs train_path (a token file) or train_files (token files blended by weight), "
              "which are both empty");
  MOE_REQUIRE(train_path.empty() || train_files.empty(), "train_path = '", train_path, "' and train_files = '",
              train_files, "' are both set; give one: train_path for one token file, train_files for a blend");
  if (!train_files.empty()) parse_train_files(train_files);
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
