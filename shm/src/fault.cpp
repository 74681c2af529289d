#include "shmbus/fault.hpp"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

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

bool arm_from_env() {
#if defined(SHMBUS_FAULT_INJECTION)
  static std::string point;  // arm() keeps the pointer
  const char* e = std::getenv("SHMBUS_FAULT");
  if (e == nullptr) return false;
  const std::string_view v(e);
  const auto colon = v.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  char* end = nullptr;
  const std::string n(v.substr(colon + 1));
  const unsigned long long nth = std::strtoull(n.c_str(), &end, 10);
  if (n.empty() || *end != '\0' || nth == 0) return false;
  point.assign(v.substr(0, colon));
  arm(point.c_str(), nth, Action::sigkill);
  return true;
#else
  return false;
#endif
}

namespace {
// Processes started with SHMBUS_FAULT set are armed before main().
[[maybe_unused]] const bool g_armed_from_env = arm_from_env();
}  // namespace

}  // namespace shmbus::fault
