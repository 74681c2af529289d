#include "shmbus/owner.hpp"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>

namespace shmbus {
namespace {

// Field 22 (starttime) of /proc/PID/stat. The comm field (2) may hold spaces and parentheses, so parse
// from the last ')'.
std::optional<std::uint64_t> read_start_time(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) return std::nullopt;
  char buf[1024];
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return std::nullopt;
  // After ") " come fields 3.. ; starttime is field 22, i.e. the 20th field after the ')'.
  int field = 2;
  for (++p; *p != '\0'; ++p) {
    if (*p == ' ') {
      ++field;
      if (field == 22) {
        unsigned long long v = 0;
        if (std::sscanf(p + 1, "%llu", &v) != 1) return std::nullopt;
        return v;
      }
    }
  }
  return std::nullopt;
}

OwnerId compute_self() {
  const pid_t pid = getpid();
  const auto start = read_start_time(pid);
  return OwnerId::make(pid, start ? static_cast<std::uint32_t>(*start) : 0);
}

void reset_in_child() {
  detail::g_self.store(compute_self().value, std::memory_order_relaxed);
}

}  // namespace

// Written once at first use and again in the child after fork() (pthread_atfork), so a forked child never
// acts under its parent's id. Relaxed: the value depends only on this process.
std::atomic<std::uint64_t> detail::g_self{0};

OwnerId OwnerId::self_slow() {
  std::uint64_t v = detail::g_self.load(std::memory_order_relaxed);
  if (v != 0) return OwnerId{v};
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, reset_in_child); });
  v = compute_self().value;
  detail::g_self.store(v, std::memory_order_relaxed);
  return OwnerId{v};
}

std::optional<OwnerId> OwnerId::of(pid_t pid) {
  const auto start = read_start_time(pid);
  if (!start) return std::nullopt;
  return OwnerId::make(pid, static_cast<std::uint32_t>(*start));
}

bool owner_alive(OwnerId id) {
  const auto now = OwnerId::of(id.pid());
  return now && *now == id;
}

}  // namespace shmbus
