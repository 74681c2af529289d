// A private bus for one test: a temporary runtime directory, a unique domain, and a real broker
// process (the built `shmbus` binary) started and stopped by PID.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "../shm/test_util.hpp"  // wait_until, fork_child
#include "shmbus/detail/control.hpp"
#include "shmbus/shmbus.hpp"

#ifndef SHMBUS_BIN
#error "SHMBUS_BIN (path of the shmbus binary) must be defined"
#endif

namespace shmbus::test {

class Bus {
 public:
  Bus() {
    char tmpl[] = "/tmp/shmbus-it-XXXXXX";
    runtime_ = mkdtemp(tmpl);
    domain_ = "it" + std::to_string(getpid()) + "n" + std::to_string(counter()++);
    setenv("SHMBUS_RUNTIME_DIR", runtime_.c_str(), 1);
    setenv("SHMBUS_DOMAIN", domain_.c_str(), 1);
    setenv("SHMBUS_AUTOSTART", "0", 1);
    start_broker();
  }
  ~Bus() {
    stop_broker(SIGTERM);
    // Whatever a killed broker left behind.
    if (DIR* d = opendir("/dev/shm")) {
      const std::string prefix = "shmbus." + domain_ + ".";
      while (dirent* e = readdir(d))
        if (std::string(e->d_name).rfind(prefix, 0) == 0)
          unlink(("/dev/shm/" + std::string(e->d_name)).c_str());
      closedir(d);
    }
    std::system(("rm -rf '" + runtime_ + "'").c_str());
  }

  void start_broker() {
    const std::string log = runtime_ + "/broker-" + std::to_string(starts_++) + ".log";
    log_ = log;
    broker_ = fork();
    if (broker_ == 0) {
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      execl(SHMBUS_BIN, SHMBUS_BIN, "broker", "--domain", domain_.c_str(), "--log-level", "info",
            static_cast<char*>(nullptr));
      _exit(127);
    }
    const auto sock = control::socket_path(domain_).value();
    const bool up = wait_until(
        [&] {
          auto fd = control::connect_socket(sock);
          if (!fd) return false;
          close(*fd);
          return true;
        },
        std::chrono::seconds(10));
    ASSERT_TRUE(up) << "broker did not come up; log: " << log;
  }

  // Stop the broker with `sig` and reap it (SIGKILL to simulate a crash).
  void stop_broker(int sig) {
    if (broker_ <= 0) return;
    kill(broker_, sig);
    int st = 0;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (waitpid(broker_, &st, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > end) {
        kill(broker_, SIGKILL);
        waitpid(broker_, &st, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    broker_ = -1;
  }

  // Create topics through a short-lived client, then (optionally) use it once; it is gone (and its
  // thread joined) on return, so the test process can fork safely afterwards.
  void create_topics(const std::vector<std::pair<std::string, TopicOptions>>& topics,
                     const std::function<void(Client&)>& then = {}) {
    Client c = client();
    for (const auto& [name, options] : topics) ASSERT_TRUE(c.create_topic(name, options)) << name;
    if (then) then(c);
  }

  Client client() {
    auto c = Client::connect();
    EXPECT_TRUE(c) << c.error().message();
    return std::move(c).value();
  }

  const std::string& domain() const { return domain_; }
  const std::string& runtime() const { return runtime_; }
  pid_t broker_pid() const { return broker_; }
  // What the latest broker wrote to its log so far.
  std::string log() const {
    std::string text;
    if (FILE* f = std::fopen(log_.c_str(), "re")) {
      char buf[4096];
      for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
      std::fclose(f);
    }
    return text;
  }

 private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  std::string runtime_;
  std::string domain_;
  pid_t broker_ = -1;
  int starts_ = 0;
  std::string log_;
};

// Memory shared with forked children, for test bookkeeping (results, flags).
template <typename T>
T* shared_block(std::size_t count = 1) {
  void* p = mmap(nullptr, sizeof(T) * count, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  EXPECT_NE(p, MAP_FAILED);
  return new (p) T[count]();
}

}  // namespace shmbus::test
