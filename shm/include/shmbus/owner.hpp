// OwnerId: who holds a chunk, as one 64-bit word that is never reused; and liveness: whether the process
// an OwnerId names still runs, as a proof rather than a guess.
//
// A bare pid is reused by the kernel, so a reclaimer that freed "everything of pid 42" could free the
// chunks of a new, live process 42. An OwnerId is the pid in the high 32 bits and the low 32 bits of the
// process's start time (field 22 of /proc/PID/stat, in clock ticks since boot) in the low 32 bits. Two
// processes with the same pid have different start times unless the pid wraps within one clock tick.
//
// Pid namespaces: a pid means something only in one pid namespace. The broker names every client in its
// own namespace (the pid SO_PEERCRED gives it, the start time it reads from its /proc) and tells the client
// at `hello` which OwnerId to stamp; a client never stamps its getpid(), which in a container is not the
// pid the broker sees. OwnerId::self() is the calling process's id in its own namespace: what the broker
// stamps, and what processes that use the shared structures without a broker (tests, benchmarks) stamp.
//
// Bit 63 of an OwnerId is always 0 (pids are < 2^22), which leaves bit 63 of a chunk's owner word free to
// mean "queued in a ring" (see chunk_pool.hpp).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <optional>

#include "shmbus/result.hpp"

namespace shmbus {

struct OwnerId {
  std::uint64_t value = 0;

  static constexpr OwnerId make(pid_t pid, std::uint32_t start) {
    return OwnerId{(static_cast<std::uint64_t>(static_cast<std::uint32_t>(pid)) << 32) | start};
  }
  pid_t pid() const { return static_cast<pid_t>(value >> 32); }
  std::uint32_t start() const { return static_cast<std::uint32_t>(value); }
  bool valid() const { return value != 0 && (value >> 63) == 0 && pid() > 0; }
  friend bool operator==(OwnerId a, OwnerId b) = default;

  // The OwnerId of the calling process in its own pid namespace. Computed once per process (and again
  // after fork()); inline, because every ring hand-over asks for it. If /proc/self/stat cannot be read
  // (after retries: EMFILE, a missing /proc) the process aborts with the reason: an id with a made-up
  // start time would let a reclaimer take this process for dead.
  static OwnerId self();
  static OwnerId self_slow();
  // The OwnerId of a running process, or nullopt if it does not exist or /proc cannot be read (ask
  // liveness() to tell the two apart).
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

// Whether the process an OwnerId names runs, in the caller's pid namespace. `dead` is a proof: the pid
// does not exist (pidfd_open or kill(pid, 0) answers ESRCH), or it exists with another start time (the
// pid was reused, so the process the id named has exited), or a pidfd opened on the pid reports that the
// whole thread group exited (a zombie not yet reaped included; a leader in state 'Z' whose other threads
// run is alive). `unknown` when neither life nor death can be shown (/proc unreadable: EMFILE, hidepid,
// EACCES; a 'Z' state without a pidfd): a caller must not reclaim then. Ids stamped in another pid
// namespace mean nothing here: the broker refuses to adopt a domain stamped in another one.
enum class Liveness : std::uint8_t { alive, dead, unknown };
Liveness liveness(OwnerId id) noexcept;
const char* to_string(Liveness l) noexcept;

// The pid namespace of the calling process (the inode and device of /proc/self/ns/pid). Errc::unavailable
// when /proc is not mounted for that namespace (its pids are not ours, as after `unshare --pid` without
// --mount-proc): liveness() would then read other processes than it is asked about.
struct PidNamespace {
  std::uint64_t ino = 0;
  std::uint64_t dev = 0;
  friend bool operator==(const PidNamespace&, const PidNamespace&) = default;
};
Result<PidNamespace> own_pid_namespace();

// Field 22 of /proc/PID/stat (the start time in clock ticks since boot), retried on EINTR/EAGAIN.
// nullopt when it cannot be read; *err then holds the errno (ENOENT: no such process in this /proc).
std::optional<std::uint64_t> read_start_time(pid_t pid, int* err = nullptr) noexcept;

}  // namespace shmbus
