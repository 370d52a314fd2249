// Checked writes of the run directory's log files (launch/trainer/log_writes.h).
#include "launch/trainer/log_writes.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace moe {

void LogWrites::fail(const std::string& path, int error) {
  if (!ok()) return;
  failure_ = "writing '" + path + "' failed: " + std::strerror(error);
  std::fprintf(stderr,
               "moe-train: %s; training goes on without writing logs, DONE will not be written and the exit "
               "status will be 5\n",
               failure_.c_str());
  std::fflush(stderr);
}

bool LogWrites::write_file(const std::string& path, const std::string& text) {
  if (!ok()) return false;
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) {
    fail(path, errno);
    return false;
  }
  const char* p = text.data();
  size_t left = text.size();
  int error = 0;
  while (left > 0 && error == 0) {
    const ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno != EINTR) error = errno;
    if (w > 0) {
      p += w;
      left -= static_cast<size_t>(w);
    }
  }
  if (error == 0 && ::fsync(fd) != 0) error = errno;
  if (::close(fd) != 0 && error == 0) error = errno;
  if (error == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) error = errno;
  if (error != 0) {
    ::unlink(tmp.c_str());
    fail(path, error);
    return false;
  }
  return true;
}

}  // namespace moe
