// Whole-buffer reads and writes on a file descriptor (core/file_io.h).
#include "core/file_io.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace moe {

namespace {
constexpr size_t kMaxTransfer = size_t{1} << 30;  // bytes per read or write call
}  // namespace

bool write_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min(n, kMaxTransfer));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

size_t read_all(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::read(fd, p + done, std::min(n - done, kMaxTransfer));
    if (r < 0) {
      if (errno == EINTR) continue;
      return done;
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

bool read_all_at(int fd, void* data, size_t n, uint64_t offset) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, std::min(n, kMaxTransfer), static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return true;
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace moe
