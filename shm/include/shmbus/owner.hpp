// OwnerId: who holds a chunk, as one 64-bit word that is never reused.
//
// A bare pid is reused by the kernel, so a reclaimer that freed "everything of pid 42" could free the
// chunks of a new, live process 42. An OwnerId is the pid in the high 32 bits and the low 32 bits of the
// process's start time (field 22 of /proc/PID/stat, in clock ticks since boot) in the low 32 bits. Two
// processes with the same pid have different start times unless the pid wraps within one clock tick.
//
// Bit 63 of an OwnerId is always 0 (pids are < 2^22), which leaves bit 63 of a chunk's owner word free to
// mean "queued in a ring" (see chunk_pool.hpp).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <optional>

namespace shmbus {

struct OwnerId {
  std::uint64_t value = 0;

  static constexpr OwnerId make(pid_t pid, std::uint32_t start) {
    return OwnerId{(static_cast<std::uint64_t>(static_cast<std::uint32_t>(pid)) << 32) | start};
  }
  pid_t pid() const { return static_cast<pid_t>(value >> 32); }
  std::uint32_t start() const { return static_cast<std::uint32_t>(value); }
  bool valid() const { return value != 0 && (value >> 63) == 0; }
  friend bool operator==(OwnerId a, OwnerId b) = default;

  // The OwnerId of the calling process. Computed once per process (and again after fork()); inline,
  // because every ring hand-over asks for it.
  static OwnerId self();
  static OwnerId self_slow();
  // The OwnerId of a running process, or nullopt if it does not exist (or /proc cannot be read).
  static std::optional<OwnerId> of(pid_t pid);
};

namespace detail {
extern std::atomic<std::uint64_t> g_self;  // this process's OwnerId, 0 until first asked (owner.cpp)
}  // namespace detail

inline OwnerId OwnerId::self() {
  // Relaxed: the value depends only on this process.
  const std::uint64_t v = detail::g_self.load(std::memory_order_relaxed);
  return __builtin_expect(v != 0, 1) ? OwnerId{v} : self_slow();
}

// True if the process named by `id` still runs (same pid and same start time).
bool owner_alive(OwnerId id);

}  // namespace shmbus
