// Error reporting: user-input errors (InvalidArgument), library-call failures and internal invariants.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace moe {

// Bad user input (a parameter, a shape, a value): the message names what is wrong and what is accepted.
class InvalidArgument : public std::runtime_error {
 public:
  explicit InvalidArgument(const std::string& what) : std::runtime_error(what) {}
};

// A broken internal invariant: a bug in this program, never the user's fault.
class InternalError : public std::logic_error {
 public:
  explicit InternalError(const std::string& what) : std::logic_error(what) {}
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace moe

// Checks user input. Usage: MOE_REQUIRE(k <= E, "top_k = ", k, " must be in [1, num_experts = ", E, "]");
#define MOE_REQUIRE(cond, ...)                                              \
  do {                                                                      \
    if (!(cond)) throw ::moe::InvalidArgument(::moe::detail::concat(__VA_ARGS__)); \
  } while (0)

// Checks an internal invariant; the reason goes on the same line. Always on, also in release builds.
#define MOE_ASSERT(cond, reason)                                                            \
  do {                                                                                      \
    if (!(cond))                                                                            \
      throw ::moe::InternalError(::moe::detail::concat(__FILE__, ":", __LINE__,             \
                                                       ": internal error: ", #cond, " (", reason, ")")); \
  } while (0)
