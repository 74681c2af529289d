// Helpers for the broker and CLI tests: a fresh domain and runtime directory per test, the built `shmbus`
// binary run as a real child process (fork + exec) with a bounded wait, a broker child that is stopped by
// pid, and a raw control connection for speaking the protocol byte by byte.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "shmbus/detail/control.hpp"
#include "shmbus/paths.hpp"

#ifndef SHMBUS_CLI_PATH
#error "SHMBUS_CLI_PATH must name the built shmbus binary"
#endif

extern char** environ;

namespace shmbus::btest {

using namespace std::chrono_literals;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

inline const std::string kShmbus = SHMBUS_CLI_PATH;

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

inline bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// True while `pid` runs (not after it exited, even if nobody has reaped the zombie yet).
inline bool process_running(pid_t pid) {
  const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  const auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z' &&
         stat[paren + 2] != 'X';
}

// Poll `cond` every 10 ms until it holds or `timeout` passes; returns its last value.
inline bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (cond()) return true;
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
}

struct ExitStatus {
  bool exited = false;
  int code = -1;
  int signal = 0;
  bool timed_out = false;
};

// Wait for a child up to `timeout`; one still running then is SIGKILLed and reported as timed out.
inline ExitStatus wait_exit(pid_t pid, std::chrono::milliseconds timeout) {
  ExitStatus r;
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) {
      if (WIFEXITED(status)) {
        r.exited = true;
        r.code = WEXITSTATUS(status);
      } else if (WIFSIGNALED(status)) {
        r.signal = WTERMSIG(status);
      }
      return r;
    }
    if (w < 0) return r;
    if (Clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.timed_out = true;
      return r;
    }
    std::this_thread::sleep_for(2ms);
  }
}

// A fresh bus domain with its own runtime directory. Sets SHMBUS_DOMAIN / SHMBUS_RUNTIME_DIR in this
// process too, so that control::socket_path() and the client library find the same broker. Removes the
// domain's segments and directory at the end, and stops a broker left running (an autostarted one is
// not our child, so it is found through its pid file).
class TestDomain {
 public:
  TestDomain() {
    static std::atomic<int> counter{0};
    char tmpl[] = "/tmp/shmbus-bt-XXXXXX";
    const char* d = ::mkdtemp(tmpl);
    EXPECT_NE(d, nullptr);
    runtime_dir_ = d != nullptr ? d : "/tmp";
    domain_ = "bt" + std::to_string(::getpid()) + "x" + std::to_string(counter.fetch_add(1));
    ::setenv("SHMBUS_RUNTIME_DIR", runtime_dir_.c_str(), 1);
    ::setenv("SHMBUS_DOMAIN", domain_.c_str(), 1);
    ::setenv("SHMBUS_BROKER", kShmbus.c_str(), 1);
    ::setenv("SHMBUS_AUTOSTART", "0", 1);
  }
  ~TestDomain() {
    if (auto pid = broker_pid_from_file(); pid && *pid != ::getpid()) ::kill(*pid, SIGKILL);
    for (const std::string& name : segments()) ::unlink(("/dev/shm/" + name).c_str());
    ::unlink(lock_file().c_str());
    std::error_code ec;
    std::filesystem::remove_all(runtime_dir_, ec);
  }

  const std::string& domain() const { return domain_; }
  const std::string& runtime_dir() const { return runtime_dir_; }
  std::string dir() const { return runtime_dir_ + "/" + domain_; }
  std::string socket() const { return dir() + "/broker.sock"; }
  std::string pid_file() const { return dir() + "/broker.pid"; }
  std::string path(const std::string& name) const { return runtime_dir_ + "/" + name; }

  // The names of this domain's segments in /dev/shm ("shmbus.<domain>.dir", "shmbus.<domain>.<id>"); the
  // domain lock (shmbus.<domain>.lock) is not a segment.
  std::vector<std::string> segments() const {
    std::vector<std::string> out;
    const std::string prefix = "shmbus." + domain_ + ".";
    if (DIR* dp = ::opendir("/dev/shm")) {
      while (dirent* e = ::readdir(dp)) {
        const std::string_view name(e->d_name);
        if (name.substr(0, prefix.size()) == prefix && name.substr(prefix.size()) != "lock")
          out.emplace_back(name);
      }
      ::closedir(dp);
    }
    return out;
  }
  std::string lock_file() const { return "/dev/shm/shmbus." + domain_ + ".lock"; }
  std::string topic_segment(std::uint64_t id) const {
    return "/dev/shm/shmbus." + domain_ + "." + std::to_string(id);
  }
  std::string directory_segment() const { return "/dev/shm/shmbus." + domain_ + ".dir"; }

  std::optional<pid_t> broker_pid_from_file() const {
    std::ifstream in(pid_file());
    long pid = 0;
    if (in >> pid && pid > 0) return static_cast<pid_t>(pid);
    return std::nullopt;
  }

 private:
  std::string runtime_dir_;
  std::string domain_;
};

struct SpawnOptions {
  std::vector<std::string> env;  // extra "KEY=VALUE" (override this process's environment)
  std::string stdin_path = "/dev/null";
  std::string stdout_path = "/dev/null";
  std::string stderr_path = "/dev/null";
};

// fork + exec `shmbus args...`. The child gets this process's environment plus opts.env.
inline pid_t spawn_shmbus(const std::vector<std::string>& args, const SpawnOptions& opts = {}) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string kv = *e;
    const std::string key = kv.substr(0, kv.find('='));
    bool overridden = false;
    for (const auto& o : opts.env) overridden = overridden || o.substr(0, o.find('=')) == key;
    if (!overridden) env.push_back(kv);
  }
  for (const auto& o : opts.env) env.push_back(o);
  std::vector<std::string> argv_s = {kShmbus};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int in = ::open(opts.stdin_path.c_str(), O_RDONLY);
    const int out = ::open(opts.stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int err = ::open(opts.stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (in < 0 || out < 0 || err < 0) ::_exit(126);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

struct CliResult {
  int code = -1;  // exit status; -1 if killed or timed out
  bool timed_out = false;
  std::string out;
  std::string err;
};

inline std::ostream& operator<<(std::ostream& os, const CliResult& r) {
  return os << "exit " << r.code << (r.timed_out ? " (timed out)" : "") << "\n--- stdout\n"
            << r.out << "--- stderr\n"
            << r.err;
}

// Run `shmbus args...` to completion (bounded), capturing stdout and stderr.
inline CliResult run_cli(const TestDomain& d, const std::vector<std::string>& args,
                         const std::string& stdin_text = "", std::vector<std::string> env = {},
                         std::chrono::milliseconds timeout = 20s) {
  static std::atomic<int> n{0};
  const std::string base = d.path("cli" + std::to_string(n.fetch_add(1)));
  SpawnOptions o;
  o.env = std::move(env);
  o.stdin_path = base + ".in";
  o.stdout_path = base + ".out";
  o.stderr_path = base + ".err";
  write_file(o.stdin_path, stdin_text);
  const pid_t pid = spawn_shmbus(args, o);
  const ExitStatus st = wait_exit(pid, timeout);
  CliResult r;
  r.code = st.exited ? st.code : -1;
  r.timed_out = st.timed_out;
  r.out = read_file(o.stdout_path);
  r.err = read_file(o.stderr_path);
  return r;
}

// A raw control connection: frames are written byte by byte as the test says, replies read with the
// library's recv_frame.
class RawConn {
 public:
  explicit RawConn(const std::string& socket) {
    auto fd = control::connect_socket(socket);
    EXPECT_TRUE(fd) << (fd ? "" : fd.error().message());
    if (fd) fd_ = *fd;
  }
  RawConn(const RawConn&) = delete;
  ~RawConn() { close(); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd() const { return fd_; }
  bool ok() const { return fd_ >= 0; }

  void send_bytes(const std::string& bytes) {
    std::size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t k = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (k <= 0) return;
      off += static_cast<std::size_t>(k);
    }
  }
  static std::string frame(const std::string& body) {
    std::string f(4, '\0');
    const auto n = static_cast<std::uint32_t>(body.size());
    for (int i = 0; i < 4; ++i) f[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return f + body;
  }
  void send_json(const json& j) { send_bytes(frame(j.dump())); }
  Result<json> recv(std::chrono::milliseconds timeout = 5000ms) { return control::recv_frame(fd_, timeout); }
  // send + recv, the reply as it came (ok or not).
  json call(const json& j) {
    send_json(j);
    auto r = recv();
    EXPECT_TRUE(r) << (r ? "" : r.error().message());
    return r ? *r : json();
  }
  json hello(const std::string& name = "test") {
    return call({{"op", "hello"}, {"version", control::kProtocolVersion}, {"client", name}});
  }
  // True once the broker has closed this connection (EOF within the timeout).
  bool closed_by_peer(std::chrono::milliseconds timeout = 5000ms) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
    char c;
    return ::recv(fd_, &c, 1, MSG_DONTWAIT) == 0;
  }

 private:
  int fd_ = -1;
};

// A broker run as a child process (`shmbus broker --domain D --log-level debug ...`), logging to a file.
class BrokerProcess {
 public:
  BrokerProcess(const TestDomain& d, std::vector<std::string> extra = {}, std::vector<std::string> env = {})
      : d_(d) {
    static std::atomic<int> n{0};
    log_ = d.path("broker" + std::to_string(n.fetch_add(1)) + ".log");
    std::vector<std::string> args = {"broker", "--domain", d.domain(), "--log-level", "debug"};
    args.insert(args.end(), extra.begin(), extra.end());
    SpawnOptions o;
    o.env = std::move(env);
    o.stderr_path = log_;
    o.stdout_path = log_ + ".out";
    pid_ = spawn_shmbus(args, o);
  }
  BrokerProcess(const BrokerProcess&) = delete;
  ~BrokerProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid() const { return pid_; }
  std::string log() const { return read_file(log_); }

  // Wait until the broker answers hello on its socket (false if it exited or did not within `timeout`).
  bool wait_ready(std::chrono::milliseconds timeout = 10s) {
    return eventually(
               [&] {
                 if (!running()) return true;
                 auto fd = control::connect_socket(d_.socket());
                 if (!fd) return false;
                 auto r = control::call(
                     *fd, {{"op", "hello"}, {"version", control::kProtocolVersion}, {"client", "probe"}},
                     1000ms);
                 ::close(*fd);
                 return static_cast<bool>(r);
               },
               timeout) &&
           running();
  }
  bool running() {
    if (reaped_) return false;
    int status = 0;
    const pid_t w = ::waitpid(pid_, &status, WNOHANG);
    if (w == pid_) {
      reaped_ = true;
      status_.exited = WIFEXITED(status);
      status_.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      status_.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
      return false;
    }
    return true;
  }
  // Send `sig` and wait for the exit (bounded).
  ExitStatus signal_and_wait(int sig, std::chrono::milliseconds timeout = 10s) {
    if (!reaped_) ::kill(pid_, sig);
    return wait(timeout);
  }
  ExitStatus wait(std::chrono::milliseconds timeout = 10s) {
    if (!reaped_) {
      status_ = wait_exit(pid_, timeout);
      reaped_ = true;
    }
    return status_;
  }

 private:
  const TestDomain& d_;
  std::string log_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  ExitStatus status_;
};

// The "topics" reply's entry for `name`, through a fresh raw connection.
inline std::optional<json> topic_entry(const TestDomain& d, const std::string& name) {
  RawConn c(d.socket());
  if (!c.ok()) return std::nullopt;
  c.hello();
  const json r = c.call({{"op", "topics"}});
  for (const auto& t : r.value("topics", json::array()))
    if (t.value("name", std::string()) == name) return t;
  return std::nullopt;
}

}  // namespace shmbus::btest
