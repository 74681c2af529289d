#include "shmbus/owner.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

#include "shmbus/result.hpp"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

namespace shmbus {
namespace {

struct ProcStat {
  std::uint64_t start = 0;
  char state = '?';
};

// /proc/PID/stat, read with plain syscalls (no stdio buffer to allocate). The comm field (2) may hold
// spaces and parentheses, so fields are counted from the last ')': field 3 (state) follows it, field 22
// (starttime) is the 20th after it. Returns false with *err set when the file cannot be read or parsed.
bool read_stat(pid_t pid, ProcStat* out, int* err) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  int fd = -1;
  for (int attempt = 0; attempt < 3; ++attempt) {
    fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0 || (errno != EINTR && errno != EAGAIN)) break;
  }
  if (fd < 0) {
    *err = errno;
    return false;
  }
  char buf[1024];
  std::size_t n = 0;
  for (;;) {
    const ssize_t k = ::read(fd, buf + n, sizeof buf - 1 - n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    n += static_cast<std::size_t>(k);
    if (n == sizeof buf - 1) break;
  }
  ::close(fd);
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr || p[1] != ' ' || p[2] == '\0') {
    *err = n == 0 ? ESRCH : EINVAL;  // an empty read: the process went away while we read
    return false;
  }
  out->state = p[2];
  int field = 2;
  for (++p; *p != '\0'; ++p) {
    if (*p != ' ') continue;
    if (++field != 22) continue;
    unsigned long long v = 0;
    if (std::sscanf(p + 1, "%llu", &v) != 1) break;
    out->start = v;
    return true;
  }
  *err = EINVAL;
  return false;
}

OwnerId compute_self() {
  // /proc/self is ours whatever hidepid says; what can fail is the open (EMFILE, ENFILE, no /proc).
  // Retry for a while: an exhausted descriptor table may be a moment's peak. Never settle for a made-up
  // start time: an id that does not match /proc makes the broker take this process for dead.
  ProcStat st;
  int err = 0;
  const pid_t pid = ::getpid();
  for (int attempt = 0; attempt < 200; ++attempt) {
    if (read_stat(pid, &st, &err)) return OwnerId::make(pid, static_cast<std::uint32_t>(st.start));
    const timespec pause{0, 5'000'000};  // 5 ms: 1 s in all
    ::nanosleep(&pause, nullptr);
  }
  char what[256];
  std::snprintf(what, sizeof what,
                "cannot read /proc/self/stat for this process's owner id (%s); shmbus needs it to stamp "
                "what this process holds",
                std::strerror(err));
  panic(__FILE__, __LINE__, what);
}

// In a forked child: forget the parent's id. It is computed again at the child's first use, outside the
// atfork handler, where a failed read can be retried.
void reset_in_child() {
  detail::g_self.store(0, std::memory_order_relaxed);
}

int pidfd_open(pid_t pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

}  // namespace

// Written at first use and cleared in the child after fork() (pthread_atfork), so a forked child never
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

std::optional<std::uint64_t> read_start_time(pid_t pid, int* err) noexcept {
  ProcStat st;
  int e = 0;
  if (!read_stat(pid, &st, &e)) {
    if (err != nullptr) *err = e;
    return std::nullopt;
  }
  return st.start;
}

std::optional<OwnerId> OwnerId::of(pid_t pid) {
  const auto start = read_start_time(pid);
  if (!start) return std::nullopt;
  return OwnerId::make(pid, static_cast<std::uint32_t>(*start));
}

Liveness liveness(OwnerId id) noexcept {
  if (!id.valid()) return Liveness::unknown;  // names no process: nothing can be proved about it
  const pid_t pid = id.pid();
  // A pidfd pins the process that has the pid now: whatever we read next is about that one process.
  const int fd = pidfd_open(pid);
  if (fd < 0) {
    if (errno == ESRCH) return Liveness::dead;
    // EMFILE, ENOSYS, ...: fall back to kill(pid, 0). EPERM means it exists under another uid.
    if (::kill(pid, 0) != 0 && errno == ESRCH) return Liveness::dead;
  }
  ProcStat st;
  int err = 0;
  Liveness result = Liveness::unknown;
  if (read_stat(pid, &st, &err)) {
    if (static_cast<std::uint32_t>(st.start) != id.start()) {
      result = Liveness::dead;  // the pid belongs to a newer process: the one the id named has exited
    } else if (fd >= 0) {
      // The pidfd becomes readable once the whole thread group has exited (a zombie not yet reaped
      // included). /proc's 'Z' is no proof: a leader that called pthread_exit() shows 'Z' while its
      // other threads still run and hold what the process holds.
      pollfd p{fd, POLLIN, 0};
      result = ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) ? Liveness::dead : Liveness::alive;
    } else {
      result = st.state == 'Z' || st.state == 'X' ? Liveness::unknown : Liveness::alive;
    }
  } else if (fd >= 0) {
    // /proc said nothing (hidepid, EACCES, EMFILE). The pidfd still proves an exit: it becomes readable
    // when the process it pins exits, and if the id's process had exited before we opened it, it is
    // dead either way.
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) == 1 && (p.revents & POLLIN)) result = Liveness::dead;
  }
  if (fd >= 0) ::close(fd);
  return result;
}

Result<PidNamespace> own_pid_namespace() {
  struct stat st {};
  if (::stat("/proc/self/ns/pid", &st) != 0)
    return Error::from_errno(errno, "cannot stat /proc/self/ns/pid (is /proc mounted?)");
  // /proc/self resolves in the namespace of the /proc mount; its pid must be ours.
  char buf[64] = {};
  const ssize_t n = ::readlink("/proc/self", buf, sizeof buf - 1);
  if (n <= 0 || std::strtol(buf, nullptr, 10) != ::getpid())
    return Error(
        Errc::unavailable,
        "/proc is mounted for another pid namespace than this process's (it calls this process pid " +
            std::string(n > 0 ? buf : "?") + ", getpid() says " + std::to_string(::getpid()) +
            "): mount /proc for it (e.g. unshare --pid --fork --mount-proc)");
  return PidNamespace{static_cast<std::uint64_t>(st.st_ino), static_cast<std::uint64_t>(st.st_dev)};
}

const char* to_string(Liveness l) noexcept {
  switch (l) {
    case Liveness::alive:
      return "alive";
    case Liveness::dead:
      return "dead";
    case Liveness::unknown:
      return "unknown";
  }
  return "?";
}

}  // namespace shmbus
