// Whole-buffer reads and writes on a file descriptor, retried after EINTR and short transfers: what the
// checkpoint and token-file readers and writers build on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moe {

// Writes all n bytes of data to fd; false on error (errno set).
bool write_all(int fd, const void* data, size_t n);

// Reads n bytes from fd into data; returns the number read, less than n only at end of file or on an
// error (errno then set).
size_t read_all(int fd, void* data, size_t n);

// Reads exactly n bytes at `offset` (pread: the file position is left alone); false at end of file or
// on error.
bool read_all_at(int fd, void* data, size_t n, uint64_t offset);

// strerror(errno), for messages.
std::string errno_text();

}  // namespace moe
