// Status: the result of an I/O operation (checkpoint and data readers), turned into a message by the
// caller. Ok, or a code with a message naming the file and what is wrong. [[nodiscard]]: a Status
// that is dropped is a compiler warning; where ignoring one is deliberate, cast it to (void) and say why.
#pragma once

#include <string>
#include <utility>

namespace moe {

class [[nodiscard]] Status {
 public:
  enum class Code { Ok, NotFound, IOError, Corruption, InvalidArgument, NotSupported };

  Status() = default;
  static Status ok_status() { return Status(); }
  static Status not_found(std::string msg) { return Status(Code::NotFound, std::move(msg)); }
  static Status io_error(std::string msg) { return Status(Code::IOError, std::move(msg)); }
  static Status corruption(std::string msg) { return Status(Code::Corruption, std::move(msg)); }
  static Status invalid_argument(std::string msg) { return Status(Code::InvalidArgument, std::move(msg)); }
  static Status not_supported(std::string msg) { return Status(Code::NotSupported, std::move(msg)); }

  bool ok() const { return code_ == Code::Ok; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "corruption: <message>", or "ok".
  std::string to_string() const;

 private:
  Status(Code code, std::string msg) : code_(code), message_(std::move(msg)) {}
  Code code_ = Code::Ok;
  std::string message_;
};

inline std::string Status::to_string() const {
  switch (code_) {
    case Code::Ok: return "ok";
    case Code::NotFound: return "not found: " + message_;
    case Code::IOError: return "I/O error: " + message_;
    case Code::Corruption: return "corruption: " + message_;
    case Code::InvalidArgument: return "invalid argument: " + message_;
    case Code::NotSupported: return "not supported: " + message_;
  }
  return message_;
}

}  // namespace moe
