#include "shmbus/fault.hpp"

#include <signal.h>
#include <unistd.h>

#include <cstring>

namespace shmbus::fault {
namespace detail {
std::atomic<bool> g_armed{false};
namespace {
const char* g_point = nullptr;
std::uint64_t g_left = 0;
Action g_action = Action::sigkill;
}  // namespace

void hit(const char* point) {
  if (g_point == nullptr || std::strcmp(point, g_point) != 0) return;
  if (--g_left != 0) return;
  if (g_action == Action::exit) _exit(kFaultExitCode);
  raise(SIGKILL);
  _exit(kFaultExitCode);  // not reached
}
}  // namespace detail

void arm(const char* point, std::uint64_t nth, Action action) {
  detail::g_point = point;
  detail::g_left = nth == 0 ? 1 : nth;
  detail::g_action = action;
  detail::g_armed.store(true, std::memory_order_relaxed);  // process-local flag; see fault.hpp
}

void disarm() {
  detail::g_armed.store(false, std::memory_order_relaxed);
  detail::g_point = nullptr;
}

}  // namespace shmbus::fault
