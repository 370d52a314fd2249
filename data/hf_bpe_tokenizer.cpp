// The Hugging Face tokenizer.json BPE tokenizer (data/hf_bpe_tokenizer.h).
#include "data/hf_bpe_tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <queue>

#include "core/check.h"
#include "core/crc32c.h"

namespace moe {
namespace {

using Json = nlohmann::json;

constexpr const char* kSupported =
    "supported: model BPE; normalizer null, Prepend and Replace(\" \" -> marker) (Mixtral); pre_tokenizer null or "
    "Metaspace (Llama 2, Mistral); the byte-level BPE of GPT-2 and Llama 3 is not";

// The JSON's `key` as a string, or `fallback` when absent or null; InvalidArgument otherwise.
std::string string_or(const Json& j, const char* key, const std::string& fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  MOE_REQUIRE(j[key].is_string(), where, ": '", key, "' is ", j[key].type_name(), ", not a string");
  return j[key].get<std::string>();
}

// The JSON's `key` as a boolean, or `fallback` when absent or null; InvalidArgument otherwise.
bool bool_or(const Json& j, const char* key, bool fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  MOE_REQUIRE(j[key].is_boolean(), where, ": '", key, "' is ", j[key].type_name(), ", not true or false");
  return j[key].get<bool>();
}

// The token id `value` as an int32; InvalidArgument naming the piece otherwise.
int32_t token_id(const Json& value, const std::string& piece, const std::string& where) {
  MOE_REQUIRE(value.is_number_integer() && value.get<int64_t>() >= 0 &&
                  value.get<int64_t>() < kTokenFileMaxVocab,
              where, ": the id of '", piece, "' is ", value.dump(), "; accepted: an integer in [0, 2^31)");
  return static_cast<int32_t>(value.get<int64_t>());
}

// The UTF-8 length of the character whose first byte is `b` (1 for a stray continuation byte).
size_t utf8_length(unsigned char b) {
  if (b >= 0xF0 && b < 0xF8) return 4;
  if (b >= 0xE0) return b < 0xF0 ? 3 : 1;
  if (b >= 0xC0) return 2;
  return 1;
}

}  // namespace

HfBpeTokenizer::HfBpeTokenizer(std::string_view json, const std::string& name, const std::string& eos_token) {
  const std::string where = "tokenizer.json '" + name + "'";
  Json root;
  try {
    root = Json::parse(json);
  } catch (const Json::parse_error& e) {
    throw InvalidArgument(where + " is not valid JSON: " + e.what());
  }
  MOE_REQUIRE(root.is_object() && root.contains("model") && root["model"].is_object(), where,
              " has no \"model\" object; is it a Hugging Face tokenizer.json?");
  const Json& model = root["model"];
  const std::string type = string_or(model, "type", "BPE", where + " model");
  MOE_REQUIRE(type == "BPE", where, ": model type '", type, "' is not supported; ", kSupported);
  MOE_REQUIRE(!model.contains("dropout") || model["dropout"].is_null() ||
                  (model["dropout"].is_number() && model["dropout"].get<double>() == 0.0),
              where, ": BPE dropout ", model.value("dropout", Json()).dump(), " is not supported (null or 0 is)");
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"})
    MOE_REQUIRE(string_or(model, affix, "", where).empty(), where, ": model ", affix, " '",
                string_or(model, affix, "", where), "' is not supported (null or empty is)");
  byte_fallback_ = bool_or(model, "byte_fallback", false, where);
  fuse_unk_ = bool_or(model, "fuse_unk", false, where);
  ignore_merges_ = bool_or(model, "ignore_merges", false, where);

  // The vocabulary, then the added tokens (which may extend it).
  MOE_REQUIRE(model.contains("vocab") && model["vocab"].is_object(), where, ": model has no \"vocab\" object");
  auto add_piece = [&](const std::string& piece, int32_t id) {
    if (static_cast<size_t>(id) >= pieces_.size()) pieces_.resize(static_cast<size_t>(id) + 1);
    MOE_REQUIRE(pieces_[id].empty() || pieces_[id] == piece, where, ": id ", id, " is both '", pieces_[id],
                "' and '", piece, "'");
    pieces_[id] = piece;
    ids_[piece] = id;
  };
  for (const auto& [piece, id] : model["vocab"].items()) add_piece(piece, token_id(id, piece, where));
  if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
    MOE_REQUIRE(root["added_tokens"].is_array(), where, ": \"added_tokens\" is not an array");
    for (const Json& t : root["added_tokens"]) {
      MOE_REQUIRE(t.is_object() && t.contains("content") && t["content"].is_string() && t.contains("id"), where,
                  ": an entry of \"added_tokens\" has no \"content\" string and \"id\": ", t.dump());
      const std::string content = t["content"].get<std::string>();
      add_piece(content, token_id(t["id"], content, where));
    }
  }
  MOE_REQUIRE(!pieces_.empty(), where, ": the vocabulary is empty");

  const std::string unk = string_or(model, "unk_token", "", where);
  if (!unk.empty()) {
    unk_id_ = id_of(unk);
    MOE_REQUIRE(unk_id_ >= 0, where, ": unk_token '", unk, "' is not in the vocabulary");
  }
  for (int b = 0; b < 256; ++b) {
    char piece[8];
    std::snprintf(piece, sizeof piece, "<0x%02X>", b);
    byte_ids_[b] = id_of(piece);
  }

  // Merges: rank = position in the list.
  MOE_REQUIRE(model.contains("merges") && model["merges"].is_array(), where, ": model has no \"merges\" array");
  const Json& merges = model["merges"];
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const Json& m = merges[rank];
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      MOE_REQUIRE(space != std::string::npos && s.find(' ', space + 1) == std::string::npos, where, ": merge ",
                  rank, " '", s, "' is not two pieces separated by one space");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else {
      MOE_REQUIRE(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), where, ": merge ", rank,
                  " is ", m.dump(), "; accepted: \"a b\" or [\"a\", \"b\"]");
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    }
    const int32_t l = id_of(left), r = id_of(right), joined = id_of(left + right);
    MOE_REQUIRE(l >= 0 && r >= 0 && joined >= 0, where, ": merge ", rank, " ('", left, "', '", right, "') joins ",
                l < 0 ? "'" + left + "', which is" : r < 0 ? "'" + right + "', which is" : "into '" + left + right + "', which is",
                " not in the vocabulary");
    // A pair listed twice keeps its first (lowest) rank, as Hugging Face does.
    merges_.emplace(static_cast<uint64_t>(l) << 32 | static_cast<uint32_t>(r),
                    Merge{static_cast<int32_t>(rank), joined});
  }

  // The normalizer: none, or Prepend(marker) and Replace(" " -> marker) in any order.
  std::vector<Json> normalizers;
  if (root.contains("normalizer") && !root["normalizer"].is_null()) {
    const Json& n = root["normalizer"];
    if (n.value("type", "") == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array())
      normalizers.assign(n["normalizers"].begin(), n["normalizers"].end());
    else
      normalizers.push_back(n);
  }
  // Every place that names the marker must name the same one.
  auto set_marker = [&](const std::string& m, const char* from) {
    MOE_REQUIRE(!m.empty() && (marker_.empty() || marker_ == m), where, ": ", from, " uses the space marker '", m,
                "'", marker_.empty() ? std::string(", which is empty") : ", but another part uses '" + marker_ + "'",
                "; ", kSupported);
    marker_ = m;
  };
  bool replaces_spaces = false;
  for (const Json& n : normalizers) {
    const std::string t = n.is_object() ? n.value("type", "") : "";
    if (t == "Prepend") {
      set_marker(string_or(n, "prepend", "", where), "normalizer Prepend");
      prepend_marker_ = true;
    } else if (t == "Replace" && n.contains("pattern") && n["pattern"].is_object() &&
               n["pattern"].contains("String") && n["pattern"]["String"] == " ") {
      set_marker(string_or(n, "content", "", where), "normalizer Replace");
      replaces_spaces = true;
    } else {
      throw InvalidArgument(where + ": normalizer " + (t.empty() ? n.dump() : t == "Replace" ? n.dump() : t) +
                            " is not supported; " + kSupported);
    }
  }
  MOE_REQUIRE(!prepend_marker_ || replaces_spaces, where,
              ": normalizer Prepend without Replace(\" \" -> marker) is not supported; ", kSupported);

  if (root.contains("pre_tokenizer") && !root["pre_tokenizer"].is_null()) {
    const Json& p = root["pre_tokenizer"];
    const std::string t = p.is_object() ? p.value("type", "") : "";
    MOE_REQUIRE(t == "Metaspace", where, ": pre_tokenizer ", t.empty() ? p.dump() : t, " is not supported; ",
                kSupported);
    MOE_REQUIRE(!replaces_spaces, where, ": a Replace normalizer together with a Metaspace pre_tokenizer is not "
                "supported; ", kSupported);
    set_marker(string_or(p, "replacement", "\xe2\x96\x81", where), "pre_tokenizer Metaspace");
    const std::string scheme =
        string_or(p, "prepend_scheme", bool_or(p, "add_prefix_space", true, where) ? "always" : "never", where);
    MOE_REQUIRE(scheme == "always" || scheme == "first" || scheme == "never", where,
                ": Metaspace prepend_scheme '", scheme, "'; accepted: always, first, never");
    // One text is one section, so "first" and "always" prepend alike.
    prepend_marker_ = scheme != "never";
    prepend_unless_present_ = true;
    split_at_marker_ = bool_or(p, "split", true, where);
  }

  // The end-of-document token.
  int32_t eos = -1;
  std::string eos_name = eos_token;
  if (!eos_token.empty()) {
    eos = id_of(eos_token);
    MOE_REQUIRE(eos >= 0, where, " has no token '", eos_token, "' for the end of documents");
  } else {
    for (const char* candidate : {"</s>", "<|endoftext|>", "<|end_of_text|>"}) {
      if ((eos = id_of(candidate)) >= 0) break;
    }
    MOE_REQUIRE(eos >= 0, where, " has none of the end-of-document tokens looked for (</s>, <|endoftext|>, "
                "<|end_of_text|>); name one with --eos-token");
  }
  record_ = TokenizerRecord{TokenizerKind::HfBpe, name, crc32c(json.data(), json.size()), eos};
}

int32_t HfBpeTokenizer::id_of(std::string_view piece) const {
  const auto it = ids_.find(std::string(piece));
  return it == ids_.end() ? -1 : it->second;
}

void HfBpeTokenizer::encode(std::string_view text, std::vector<int32_t>& tokens) const {
  if (text.empty()) return;
  std::string s;
  s.reserve(text.size() + marker_.size());
  if (prepend_marker_ && !(prepend_unless_present_ && (text.starts_with(' ') || text.starts_with(marker_))))
    s = marker_;
  for (char c : text) {
    if (c == ' ' && !marker_.empty())
      s += marker_;
    else
      s.push_back(c);
  }
  const size_t shift = s.size() - text.size();  // bytes the marker added, for offsets in messages
  if (!split_at_marker_) {
    encode_word(s, 0, tokens);
    return;
  }
  // Metaspace split: each marker starts a word ("a▁▁b" -> "a", "▁", "▁b").
  size_t start = 0;
  while (start < s.size()) {
    size_t next = s.find(marker_, start + (s.compare(start, marker_.size(), marker_) == 0 ? marker_.size() : 0));
    if (next == std::string::npos) next = s.size();
    encode_word(std::string_view(s).substr(start, next - start), start > shift ? start - shift : 0, tokens);
    start = next;
  }
}

void HfBpeTokenizer::encode_word(std::string_view word, size_t offset, std::vector<int32_t>& tokens) const {
  if (ignore_merges_) {
    const int32_t whole = id_of(word);
    if (whole >= 0) {
      tokens.push_back(whole);
      return;
    }
  }
  // The word's symbols, a linked list: each character's piece, or its bytes, or unk.
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // -1 at the ends
  };
  std::vector<Symbol> symbols;
  bool last_is_unk = false;
  for (size_t i = 0; i < word.size();) {
    const size_t n = std::min(utf8_length(static_cast<unsigned char>(word[i])), word.size() - i);
    const std::string_view c = word.substr(i, n);
    std::vector<int32_t> ids;
    bool unknown = false;
    if (const int32_t id = id_of(c); id >= 0) {
      ids.push_back(id);
    } else if (byte_fallback_ && std::all_of(c.begin(), c.end(), [&](char b) {
                 return byte_ids_[static_cast<unsigned char>(b)] >= 0;
               })) {
      for (char b : c) ids.push_back(byte_ids_[static_cast<unsigned char>(b)]);
    } else {
      MOE_REQUIRE(unk_id_ >= 0, "tokenizer.json '", record_.name, "': the character at byte ", offset + i,
                  " of the text is not in the vocabulary, and the tokenizer has neither byte fallback nor unk_token");
      unknown = true;
      if (!(fuse_unk_ && last_is_unk)) ids.push_back(unk_id_);  // fuse_unk: a run of unknowns is one unk
    }
    last_is_unk = unknown;
    for (int32_t id : ids) symbols.push_back({id, static_cast<int32_t>(symbols.size()) - 1, -1});
    i += n;
  }
  const int32_t count = static_cast<int32_t>(symbols.size());
  for (int32_t i = 0; i + 1 < count; ++i) symbols[i].next = i + 1;

  // Lowest rank first, then leftmost: as Hugging Face's BPE. A queued pair is stale when either
  // symbol has changed since; it is skipped then.
  struct Candidate {
    int32_t rank, left, left_id, right_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto consider = [&](int32_t left) {
    if (left < 0 || symbols[left].next < 0) return;
    const int32_t right = symbols[left].next;
    const auto it = merges_.find(static_cast<uint64_t>(symbols[left].id) << 32 | static_cast<uint32_t>(symbols[right].id));
    if (it != merges_.end()) queue.push({it->second.rank, left, symbols[left].id, symbols[right].id});
  };
  for (int32_t i = 0; i + 1 < count; ++i) consider(i);
  std::vector<bool> removed(static_cast<size_t>(count), false);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    if (removed[c.left] || left.id != c.left_id || left.next < 0 || symbols[left.next].id != c.right_id) continue;
    const int32_t right = left.next;
    left.id = merges_.at(static_cast<uint64_t>(c.left_id) << 32 | static_cast<uint32_t>(c.right_id)).merged;
    removed[right] = true;
    left.next = symbols[right].next;
    if (left.next >= 0) symbols[left.next].prev = c.left;
    consider(left.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i < count; ++i)
    if (!removed[i]) tokens.push_back(symbols[i].id);
}

std::string HfBpeTokenizer::decode(std::span<const int32_t> tokens) const {
  std::string s;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t t = tokens[i];
    MOE_REQUIRE(t >= 0 && t < vocab_size() && !pieces_[t].empty(), "tokenizer.json '", record_.name, "': token ", t,
                " at position ", i, " is not in its vocabulary");
    const auto byte = std::find(byte_ids_, byte_ids_ + 256, t);
    if (byte_fallback_ && byte != byte_ids_ + 256)
      s.push_back(static_cast<char>(byte - byte_ids_));
    else
      s += pieces_[t];
  }
  if (marker_.empty()) return s;
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, marker_.size(), marker_) == 0) {
      out.push_back(' ');
      i += marker_.size();
    } else {
      out.push_back(s[i++]);
    }
  }
  if (prepend_marker_ && out.starts_with(' ')) out.erase(0, 1);
  return out;
}

}  // namespace moe
