// CRC32C (Castagnoli), as TFRecord files (TensorBoard events) and our checkpoint manifests use it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moe {

// CRC32C of data[0, n), continuing from `crc` (0 to start). Uses the SSE4.2 instruction when the
// CPU has it, a table otherwise; both give the same value.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

// The masked form TFRecord stores: rotate right by 15 and add a constant, so CRCs of data that
// itself contains CRCs stay well distributed.
inline uint32_t crc32c_masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

}  // namespace moe
