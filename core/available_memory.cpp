// The memory this machine can still give (core/available_memory.h).
#include "core/available_memory.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>

namespace moe {

AvailableMemory available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  unsigned long long kib = 0;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:") return {kib * 1024ull, "MemAvailable in /proc/meminfo"};
  const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return {pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0,
          "free pages (sysconf _SC_AVPHYS_PAGES)"};
}

std::string memory_size_text(double bytes) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) {
    bytes /= 1024;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

}  // namespace moe
