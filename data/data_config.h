// The settings of the training data: the keys of the run configuration's `data:` section, named as it
// spells them, with their defaults (launch/config/train_config.cpp binds each key to its field here)
// and accepted ranges. The synthetic corpus (data/synthetic_corpus.h) reads its keys from here too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/value_range.h"

namespace moe {

enum class DataSource { Synthetic, Tokens };

// One token file of a blend (data.train_files) and its weight.
struct WeightedFile {
  std::string path;
  double weight = 0;
  bool operator==(const WeightedFile&) const = default;
};

// What data.train_files accepts, for messages and the key's help.
inline constexpr const char* kTrainFilesFormat =
    "PATH:WEIGHT entries separated by commas, each weight a finite number > 0 (relative: they need not sum "
    "to 1), e.g. \"web.tok:0.7,code.tok:0.3\"";

// Parses data.train_files: entries split at each ',', each split at its last ':' into a path and a
// weight. Returns the files in order, or throws InvalidArgument naming the bad entry and kTrainFilesFormat
// (an empty text, an entry without ':' or with an empty path, a weight that is not a number, <= 0 or
// not finite). A path may hold ':' but not ','.
std::vector<WeightedFile> parse_train_files(const std::string& text);

struct DataConfig {
  DataSource source = DataSource::Synthetic;
  std::string train_path;             // token file; source = tokens needs it or train_files
  std::string train_files;            // several token files blended by weight (parse_train_files)
  std::string eval_path;              // empty: the last eval_fraction of the training sequences
  std::string tokenizer;              // the tokenizer's model file the token files must have been made
                                      // with (their recorded fingerprint); empty: not checked
  double eval_fraction = 0.05;
  int64_t batch_size = 8;             // sequences per rank per step
  int64_t synthetic_domains = 4;      // D: domain d uses tokens [d * V / D, (d + 1) * V / D)
  int64_t synthetic_branching = 3;    // successors per token, with probabilities 0.6, 0.25, 0.15, ... (normalised)
  int64_t synthetic_sequences = 20000;
  // Documents packed into a sequence (data/documents.h): with document_mask, each token attends only to
  // the earlier tokens of its own document and positions restart at each document's first token.
  bool document_mask = false;
  int64_t document_end_token = kAutoEndToken;  // the token ending a document; auto: the one the token file records

  static constexpr int64_t kAutoEndToken = -1;  // document_end_token = auto

  // The accepted range of each number above: validate() checks them, the run configuration's schema
  // quotes them.
  static constexpr Range kEvalFractionRange = open_closed(0, 0.5);
  static constexpr Range kBatchSizeRange = at_least(1);
  static constexpr Range kSyntheticDomainsRange = at_least(1);    // and <= vocab_size / 2
  static constexpr Range kSyntheticBranchingRange = at_least(1);  // and <= vocab_size / synthetic_domains
  static constexpr Range kSyntheticSequencesRange = at_least(1);
  static constexpr Range kDocumentEndTokenRange = at_least(0);  // and < the token files' vocab_size, or auto

  // Throws InvalidArgument naming the first bad field as the run configuration spells its key
  // ("batch_size = 0 ..."), its value and what is accepted: each number's range, source = tokens
  // needs train_path or train_files (not both; train_files parses), document_mask needs source =
  // tokens, and with source = synthetic, validate_synthetic(vocab_size). vocab_size is the model's
  // (model.vocab_size).
  void validate(int64_t vocab_size) const;
  // The synthetic corpus's checks, whatever the source: the synthetic_* ranges, and the corpus fits
  // a vocabulary of vocab_size tokens (each domain a band of at least 2 tokens, each token
  // synthetic_branching distinct successors inside its band).
  void validate_synthetic(int64_t vocab_size) const;
  bool operator==(const DataConfig&) const = default;
};

}  // namespace moe
