// Constants shared by every structure that lives in shared memory.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shmbus {

// The line size that shared structures are padded to. 128, not 64: Intel's adjacent-line prefetcher pulls
// lines in pairs, so two indices 64 bytes apart still ping-pong between cores.
inline constexpr std::size_t kCacheLine = 128;

// The hardware line: the unit a slot's first bytes share with its sequence word.
inline constexpr std::size_t kHwLine = 64;

// Layout version of every shared structure in this library. Bump it whenever any shared struct changes
// size, alignment, field order or meaning; a segment of another version is refused at open.
inline constexpr std::uint32_t kLayoutVersion = 4;  // 4: EventCount seq carries kArmed; woken

}  // namespace shmbus
