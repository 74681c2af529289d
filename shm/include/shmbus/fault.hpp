// Named fault points: places in libshmbus where a test can make the process die, to prove that every
// shared structure survives a SIGKILL at exactly that step.
//
// A test arms one point in a (forked) child with `fault::arm("mpmc.push.after_claim", n, action)`; the
// n-th time the child passes that point it calls `_exit(kFaultExitCode)` or `raise(SIGKILL)`. A process
// started with SHMBUS_FAULT=<point>:<n> in its environment (a broker under a soak test) is armed with
// SIGKILL at start-up; arm_from_env() does the same on demand. With
// SHMBUS_FAULT_INJECTION off (the release preset) the macro compiles to nothing. With it on, a point
// that is not armed costs one relaxed load of a process-local flag.
#pragma once

#include <atomic>
#include <cstdint>

namespace shmbus::fault {

enum class Action { exit, sigkill };
inline constexpr int kFaultExitCode = 86;

// Arm `point` (a string literal compared by content) to fire on its `nth` pass (1 = the first).
void arm(const char* point, std::uint64_t nth, Action action = Action::sigkill);
void disarm();
// Arm from SHMBUS_FAULT=<point>:<n> if set (a no-op without fault injection compiled in). Returns true if
// it armed a point; a malformed value is ignored.
bool arm_from_env();

namespace detail {
extern std::atomic<bool> g_armed;
void hit(const char* point);
}  // namespace detail

}  // namespace shmbus::fault

#if defined(SHMBUS_FAULT_INJECTION)
// Relaxed: the flag is set by this process before the code under test runs; no ordering is implied.
#define SHMBUS_FAULT_POINT(name)                                                               \
  do {                                                                                         \
    if (__builtin_expect(::shmbus::fault::detail::g_armed.load(std::memory_order_relaxed), 0)) \
      ::shmbus::fault::detail::hit(name);                                                      \
  } while (0)
#else
#define SHMBUS_FAULT_POINT(name) \
  do {                           \
  } while (0)
#endif
