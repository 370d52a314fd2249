// The memory this machine can still give: what moe-train and moe-ckpt check their needs against
// before allocating, so that a size that cannot fit is refused with a message, not a bad_alloc.
#pragma once

#include <cstdint>
#include <string>

namespace moe {

struct AvailableMemory {
  uint64_t bytes = 0;  // memory new allocations can get without swapping
  std::string source;  // where the figure comes from, for messages: "MemAvailable in /proc/meminfo"
};

// /proc/meminfo's MemAvailable (the kernel's estimate, page cache that can be dropped included),
// else sysconf(_SC_AVPHYS_PAGES) x the page size (free pages only). A cgroup's memory limit is not
// read: a job limited below the machine's free memory is not refused by this figure.
AvailableMemory available_memory();

// "2.7 GiB", "512.0 MiB", "12 bytes": a byte count for messages and listings (moe-ckpt), in binary units.
std::string memory_size_text(double bytes);

}  // namespace moe
