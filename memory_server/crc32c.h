// CRC-32C (Castagnoli), the checksum of stored value blocks. Uses the SSE4.2 instruction.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ultramem::memory {

// Extends `crc` (0 for a fresh checksum) over `size` bytes: Crc32c(Crc32c(0, a), b) equals the
// checksum of a followed by b.
uint32_t Crc32c(uint32_t crc, const void* data, size_t size);

}  // namespace ultramem::memory
