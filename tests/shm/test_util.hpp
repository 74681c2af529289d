// Helpers shared by the libshmbus tests: unique segment names, a segment that removes itself, and
// forking children with a bounded wait.
#pragma once

// SHMBUS_TEST_TSAN: defined under ThreadSanitizer (GCC and Clang), where stress tests run fewer rounds.
#if defined(__SANITIZE_THREAD__)
#define SHMBUS_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SHMBUS_TEST_TSAN 1
#endif
#endif

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "shmbus/segment.hpp"

namespace shmbus::test {

// "t.<pid>.<counter>.<tag>": unique per process and call, so tests may run in parallel.
inline std::string unique_name(const std::string& tag) {
  static std::atomic<int> counter{0};
  return "t." + std::to_string(getpid()) + "." + std::to_string(counter.fetch_add(1)) + "." + tag;
}

// Removes the named segment when it goes out of scope (ignores "not found").
struct ScopedName {
  std::string name;
  explicit ScopedName(std::string n) : name(std::move(n)) { (void)Segment::remove(name); }
  ~ScopedName() { (void)Segment::remove(name); }
};

// fork() and run f in the child; the child leaves with _exit(f()). Returns the child's pid.
inline pid_t fork_child(const std::function<int()>& f) {
  const pid_t pid = fork();
  if (pid == 0) {
    int rc = 1;
    rc = f();
    _exit(rc);
  }
  return pid;
}

struct ChildExit {
  bool exited = false;     // normal exit
  int code = -1;           // exit code if exited
  int signal = 0;          // terminating signal otherwise
  bool timed_out = false;  // still running at the deadline (then killed)
};

// Wait for pid up to `timeout`; a child still running then is SIGKILLed and reported as timed out.
inline ChildExit wait_child(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  ChildExit r;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) {
      if (WIFEXITED(status)) {
        r.exited = true;
        r.code = WEXITSTATUS(status);
      } else if (WIFSIGNALED(status)) {
        r.signal = WTERMSIG(status);
      }
      return r;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      r.timed_out = true;
      return r;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// Poll `cond` every millisecond until it holds or `limit` passes; returns its last value.
inline bool wait_until(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return cond();
}

}  // namespace shmbus::test
