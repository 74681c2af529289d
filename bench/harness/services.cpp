#include "harness/services.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <fstream>
#include <set>
#include <thread>
#include <vector>

#include "shmbus/shmbus.hpp"

#ifndef SHMBUS_BENCH_BROKER_BIN
#define SHMBUS_BENCH_BROKER_BIN "shmbus"
#endif

namespace shmbus::bench {

namespace {

std::string find_in_path(const std::string& prog) {
  const char* path = std::getenv("PATH");
  std::string p = path != nullptr ? path : "/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= p.size()) {
    const std::size_t end = p.find(':', start);
    const std::string dir = p.substr(start, end == std::string::npos ? std::string::npos : end - start);
    const std::string cand = (dir.empty() ? "." : dir) + "/" + prog;
    if (::access(cand.c_str(), X_OK) == 0) return cand;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return {};
}

// Another iox-roudi on this host (iceoryx 2.0 allows one per host: fixed shared-memory names).
pid_t other_roudi() {
  DIR* d = ::opendir("/proc");
  if (d == nullptr) return 0;
  pid_t found = 0;
  while (dirent* e = ::readdir(d)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::ifstream f("/proc/" + std::string(e->d_name) + "/comm");
    std::string comm;
    std::getline(f, comm);
    if (comm == "iox-roudi") {
      found = pid;
      break;
    }
  }
  ::closedir(d);
  return found;
}

// Wait up to 15 s for a daemon just spawned to be ready(); false (and why) when it exits first or the
// time runs out (then the caller stops it).
template <class Ready>
bool wait_ready(pid_t& pid, const std::string& log, const std::string& name, const std::string& not_ready,
                Ready&& ready, std::string* err) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (std::chrono::steady_clock::now() < end) {
    if (ready()) return true;
    int st;
    if (::waitpid(pid, &st, WNOHANG) == pid) {
      pid = -1;
      *err = name + " exited at start: " + tail_of(log, 3);
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  *err = name + " " + not_ready + " within 15 s: " + tail_of(log, 3);
  return false;
}

}  // namespace

pid_t spawn_logged(const std::vector<std::string>& argv, const std::string& log) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  const pid_t pid = ::fork();
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec: the orchestrator may have threads.
    if (out >= 0) {
      ::dup2(out, 1);
      ::dup2(out, 2);
    }
    const int in = ::open("/dev/null", O_RDONLY);
    if (in >= 0) ::dup2(in, 0);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  if (out >= 0) ::close(out);
  return pid;
}

int reap(pid_t pid, int ms) {
  int st = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  for (;;) {
    const pid_t r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid) return st;
    if (r < 0) return 0;
    if (std::chrono::steady_clock::now() > end) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &st, 0);
  return -1;
}

std::string tail_of(const std::string& path, std::size_t lines) {
  std::ifstream f(path);
  std::deque<std::string> q;
  std::string l;
  while (std::getline(f, l)) {
    q.push_back(l);
    if (q.size() > lines) q.pop_front();
  }
  std::string s;
  for (const auto& x : q) s += (s.empty() ? "" : " | ") + x;
  return s;
}

bool Broker::start(const std::string& rundir, const std::string& domain, std::string* err) {
  std::string bin;
  if (const char* e = std::getenv("SHMBUS_BROKER"); e != nullptr && *e != '\0') bin = e;
  if (bin.empty() && ::access(SHMBUS_BENCH_BROKER_BIN, X_OK) == 0) bin = SHMBUS_BENCH_BROKER_BIN;
  if (bin.empty()) bin = find_in_path("shmbus");
  if (bin.empty()) {
    *err = "the shmbus binary (broker) was not found: build target shmbus_cli or set SHMBUS_BROKER";
    return false;
  }
  log_ = rundir + "/broker.log";
  // A private domain: its topics go with the broker (they would otherwise stay for a next one).
  pid_ = spawn_logged({bin, "broker", "--domain", domain, "--log-level", "info", "--purge-on-exit"}, log_);
  if (pid_ < 0) {
    *err = "fork for the broker failed";
    return false;
  }
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < end) {
    auto c = Client::connect({.domain = domain, .name = "shmbus-bench-probe", .autostart = false});
    if (c) return true;
    int st;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      *err = "the broker exited at start: " + tail_of(log_, 3);
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  *err = "the broker did not accept connections within 10 s: " + tail_of(log_, 3);
  stop();
  return false;
}

void Broker::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  reap(pid_, 5000);
  pid_ = -1;
}

bool Roudi::start(const std::string& rundir, std::size_t max_payload, std::string* err) {
  const std::string bin = find_in_path("iox-roudi");
  if (bin.empty()) {
    *err = "iox-roudi not found (apt install iceoryx)";
    return false;
  }
  if (const pid_t other = other_roudi(); other > 0) {
    *err = "another iox-roudi runs (pid " + std::to_string(other) +
           "); iceoryx 2.0 allows one per host, and this run will not share or stop it";
    return false;
  }
  // Mempools: small chunks for the small messages, and for each power of two up to the largest payload a
  // pool big enough for a stream's ring (capped at 64 MiB of chunks per pool).
  const std::string cfg = rundir + "/roudi.toml";
  {
    std::ofstream f(cfg);
    f << "[general]\nversion = 1\n\n[[segment]]\n";
    std::set<std::size_t> sizes = {256, 1024 + 256, 4096 + 256};
    for (std::size_t s = 16384; s < 2 * max_payload; s *= 4) sizes.insert(s + 256);
    sizes.insert(max_payload + 256);
    for (std::size_t s : sizes) {
      const std::size_t sz = (s + 7) / 8 * 8;
      const std::size_t count = std::min<std::size_t>(8192, std::max<std::size_t>(72, (64u << 20) / sz));
      f << "\n[[segment.mempool]]\nsize = " << sz << "\ncount = " << count << "\n";
    }
  }
  log_ = rundir + "/roudi.log";
  pid_ = spawn_logged({bin, "-c", cfg, "-m", "off", "-l", "info"}, log_);
  if (pid_ < 0) {
    *err = "fork for iox-roudi failed";
    return false;
  }
  const auto ready = [&] {
    std::ifstream f(log_);
    std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return all.find("RouDi is ready for clients") != std::string::npos;
  };
  if (wait_ready(pid_, log_, "iox-roudi", "was not ready", ready, err)) return true;
  std::string ignore;
  stop(&ignore);
  return false;
}

bool Roudi::stop(std::string* err) {
  if (pid_ <= 0) return true;
  ::kill(pid_, SIGTERM);
  const int st = reap(pid_, 10000);
  pid_ = -1;
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    *err = "iox-roudi did not stop cleanly (" + tail_of(log_, 2) + ")";
    return false;
  }
  return true;
}

bool Aeronmd::start(const std::string& dir, const std::string& log, std::string* err) {
#ifndef SHMBUS_BENCH_AERONMD_BIN
  (void)dir;
  (void)log;
  *err = "built without Aeron (configure with -DSHMBUS_AERON_ROOT=<Aeron source or install tree>)";
  return false;
#else
  const std::string bin = SHMBUS_BENCH_AERONMD_BIN;
  if (::access(bin.c_str(), X_OK) != 0) {
    *err = "aeronmd not found at " + bin + " (reconfigure with -DSHMBUS_AERON_ROOT)";
    return false;
  }
  log_ = log;
  pid_ = spawn_logged({bin, "-Daeron.dir=" + dir, "-Daeron.threading.mode=SHARED",
                       "-Daeron.dir.delete.on.start=true", "-Daeron.dir.delete.on.shutdown=true"},
                      log_);
  if (pid_ < 0) {
    *err = "fork for aeronmd failed";
    return false;
  }
  const std::string cnc = dir + "/cnc.dat";
  const auto ready = [&] {
    struct stat st {};
    return ::stat(cnc.c_str(), &st) == 0 && st.st_size > 0;
  };
  if (wait_ready(pid_, log_, "aeronmd", "did not create " + cnc, ready, err)) return true;
  std::string ignore;
  stop(&ignore);
  return false;
#endif
}

bool Aeronmd::stop(std::string* err) {
  if (pid_ <= 0) return true;
  ::kill(pid_, SIGINT);  // aeronmd shuts down (and deletes its directory) on SIGINT only
  const int st = reap(pid_, 10000);
  pid_ = -1;
  // It exits with the number of the signal that stopped it.
  if (st == -1 || !WIFEXITED(st) || (WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != SIGINT)) {
    *err = "aeronmd did not stop cleanly (" + tail_of(log_, 2) + ")";
    return false;
  }
  return true;
}

}  // namespace shmbus::bench
