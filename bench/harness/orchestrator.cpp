// The orchestrator.
//
// A suite is a list of groups. A group is one point of one scenario (pingpong at 64 B, fan-out to 4
// subscribers, queue 2x2, ...) and holds every transport/mode measured at that point, plus a floor. All of
// a group's benches are set up at once on one set of worker processes and then run interleaved in rounds
// (A B C ... A B C ...): this guest's core-to-core latency flips between ~120 ns and ~450 ns within seconds
// and the host steals CPU time in bursts, so only measurements taken in the same round are comparable.
// Each row reports the median over rounds of each round's percentile (max: the largest over all rounds),
// its ratio to the floor measured in the same round (median over rounds), and the regime of those rounds
// (near/far, from floor-cacheline's p50 in each round; a hidden floor-cacheline probe runs in groups that do
// not show it).
//
// Failures never end the suite: a bench whose setup fails, or whose worker dies or hangs, becomes a
// "skipped" row with the reason; the group's workers are restarted and the other benches go on.
#include "harness/orchestrator.hpp"

#include <dirent.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <ctime>
#include <map>
#include <optional>
#include <thread>

#include "common/timing.hpp"
#include "harness/report.hpp"
#include "harness/services.hpp"
#include "shmbus/eventcount.hpp"
#include "shmbus/shmbus.hpp"
#include "shmbus/topic.hpp"

namespace shmbus::bench {

namespace {

using Clock = std::chrono::steady_clock;

constexpr double kNearFarNs = 250;  // floor-cacheline round-trip p50 below this: the "near" regime

// ---- presets ----

struct PresetValues {
  u64 iters;
  u32 rounds;
  u64 warmup;
  double cap_s, round_s;
  u32 reps;
};

PresetValues preset_values(Preset p) {
  switch (p) {
    case Preset::full:
      return {100'000, 10, 2'000, 30.0, 0.25, 100};
    case Preset::quick:
      return {40'000, 8, 1'000, 1.5, 0.04, 20};
    case Preset::smoke:
      return {300, 2, 20, 0.2, 0.004, 3};
  }
  return {};
}

// ---- what each scenario measures ----

struct Entry {
  const char* transport;
  Mode mode;
  const char* skip;  // non-null: listed as skipped with this reason
};

constexpr const char* kZmqBusy =
    "ZeroMQ delivers through an I/O thread on the receiver's (pinned) CPU; a receiver spinning on "
    "ZMQ_DONTWAIT "
    "starves it, so ZeroMQ is measured with blocking receives only";

constexpr const char* kAeronPoll =
    "Aeron has no blocking receive: a subscription is polled, and waits through an idle strategy";

std::vector<Entry> entries_for(Scenario s) {
  switch (s) {
    case Scenario::pingpong:
      return {{"floor-cacheline", Mode::busy, nullptr},  {"floor-ring", Mode::busy, nullptr},
              {"shmbus", Mode::busy, nullptr},           {"shmbus", Mode::zero_copy, nullptr},
              {"shmbus", Mode::spin_park, nullptr},      {"pipe", Mode::busy, nullptr},
              {"uds-stream", Mode::busy, nullptr},       {"uds-seqpacket", Mode::busy, nullptr},
              {"posix-mq", Mode::busy, nullptr},         {"boost-mq", Mode::busy, nullptr},
              {"zmq-ipc", Mode::busy, kZmqBusy},         {"zmq-ipc", Mode::blocking, nullptr},
              {"iceoryx", Mode::zero_copy, nullptr},     {"aeron-ipc", Mode::busy, nullptr},
              {"layer-pool", Mode::busy, nullptr},       {"layer-stream", Mode::busy, nullptr},
              {"layer-stream", Mode::zero_copy, nullptr}};
    case Scenario::wakeup:
      return {{"floor-futex", Mode::blocking, nullptr}, {"floor-eventfd", Mode::blocking, nullptr},
              {"shmbus", Mode::blocking, nullptr},      {"pipe", Mode::blocking, nullptr},
              {"uds-stream", Mode::blocking, nullptr},  {"uds-seqpacket", Mode::blocking, nullptr},
              {"posix-mq", Mode::blocking, nullptr},    {"boost-mq", Mode::blocking, nullptr},
              {"zmq-ipc", Mode::blocking, nullptr},     {"iceoryx", Mode::blocking, nullptr},
              {"aeron-ipc", Mode::blocking, kAeronPoll}};
    case Scenario::throughput:
      return {{"floor-ring", Mode::copy, nullptr},   {"shmbus", Mode::copy, nullptr},
              {"shmbus", Mode::zero_copy, nullptr},  {"pipe", Mode::busy, nullptr},
              {"uds-stream", Mode::busy, nullptr},   {"uds-seqpacket", Mode::busy, nullptr},
              {"posix-mq", Mode::busy, nullptr},     {"boost-mq", Mode::busy, nullptr},
              {"zmq-ipc", Mode::blocking, nullptr},  {"iceoryx", Mode::zero_copy, nullptr},
              {"aeron-ipc", Mode::copy, nullptr},    {"aeron-ipc-exclusive", Mode::copy, nullptr},
              {"layer-stream", Mode::copy, nullptr}, {"layer-stream", Mode::zero_copy, nullptr}};
    case Scenario::fanout:
      return {{"floor-ring", Mode::busy, nullptr},  {"shmbus", Mode::busy, nullptr},
              {"shmbus", Mode::zero_copy, nullptr}, {"pipe", Mode::busy, nullptr},
              {"uds-stream", Mode::busy, nullptr},  {"uds-seqpacket", Mode::busy, nullptr},
              {"posix-mq", Mode::busy, nullptr},    {"boost-mq", Mode::busy, nullptr},
              {"zmq-ipc", Mode::blocking, nullptr}, {"iceoryx", Mode::zero_copy, nullptr},
              {"aeron-ipc", Mode::busy, nullptr}};
    case Scenario::queue:
      return {{"floor-ring", Mode::busy, nullptr},
              {"shmbus", Mode::busy, nullptr},
              {"shmbus", Mode::blocking, nullptr},
              {"pipe", Mode::blocking, nullptr},
              {"uds-stream", Mode::blocking,
               "a Unix socket connects two endpoints: no competing consumers without a dispatcher process"},
              {"uds-seqpacket", Mode::blocking,
               "a Unix socket connects two endpoints: no competing consumers without a dispatcher process"},
              {"posix-mq", Mode::blocking, nullptr},
              {"boost-mq", Mode::blocking, nullptr},
              {"zmq-ipc", Mode::blocking, nullptr},
              {"iceoryx", Mode::blocking,
               "iceoryx 2.0 has no competing consumers: every subscriber gets every message"},
              {"aeron-ipc", Mode::busy,
               "Aeron has no competing consumers: every subscription sees every message"}};
    case Scenario::reclaim: {
      const char* na =
          "a kernel object's buffers are freed by the kernel when the process dies: nothing to reclaim";
      return {
          {"shmbus", Mode::loans, nullptr},
          {"shmbus", Mode::samples, nullptr},
          {"iceoryx", Mode::samples,
           "RouDi reclaims a dead process's chunks only after its heartbeat monitoring declares it dead "
           "(seconds), and only with monitoring on; not comparable with a death notification"},
          {"pipe", Mode::blocking, na},
          {"posix-mq", Mode::blocking, na},
          {"boost-mq", Mode::blocking,
           "a message queue's buffers stay with the queue; a reader killed inside receive() can leave its "
           "interprocess mutex locked, which Boost does not recover"}};
    }
  }
  return {};
}

const char* floor_of(Scenario s) {
  switch (s) {
    case Scenario::pingpong:
      return "floor-cacheline";
    case Scenario::wakeup:
      return "floor-futex";
    case Scenario::throughput:
    case Scenario::fanout:
    case Scenario::queue:
      return "floor-ring";
    case Scenario::reclaim:
      return "";
  }
  return "";
}

bool is_peer(const std::string& t) {  // not shmbus, a floor or a layer of shmbus's data path
  return t != "shmbus" && t.rfind("floor-", 0) != 0 && t.rfind("layer-", 0) != 0;
}

Pattern pattern_of(Scenario s) {
  switch (s) {
    case Scenario::pingpong:
    case Scenario::wakeup:
      return Pattern::roundtrip;
    case Scenario::throughput:
      return Pattern::stream;
    case Scenario::fanout:
      return Pattern::fanout;
    case Scenario::queue:
      return Pattern::queue;
    case Scenario::reclaim:
      return Pattern::reclaim;
  }
  return Pattern::roundtrip;
}

u64 pow2_at_most(u64 v) {
  return v < 2 ? 2 : std::bit_floor(v);
}

u64 read_proc_u64(const char* path, u64 fallback) {
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return fallback;
  unsigned long long v = 0;
  const bool ok = std::fscanf(f, "%llu", &v) == 1;
  std::fclose(f);
  return ok && v > 0 ? v : fallback;
}

// ---- one bench of a group and its measurements ----

struct Planned {
  std::string transport;
  Mode mode = Mode::busy;
  Pattern pattern = Pattern::roundtrip;
  u64 payload = 64, depth = 8;
  u32 receivers = 1, senders = 1, spin = 0;
  bool hidden = false;  // the regime probe of a group that does not show floor-cacheline
  std::string skip;     // not run (or no longer running), and why
  std::string note;
  // Sizing.
  u64 iters = 0;      // latency: total round trips; rates: messages per round
  u64 per_round = 0;  // latency: round trips per round
  // Per round (index = cycle), absent when the bench did not run in that cycle.
  std::vector<std::optional<Percentiles>> lat;
  std::vector<std::optional<Percentiles>> send;
  std::vector<std::optional<double>> rate;
  std::vector<double> pooled;  // all round trips (ns), for the percentile curves
  u64 measured = 0;
  bool keep_pooled = false;
  bool latency() const { return pattern == Pattern::roundtrip || pattern == Pattern::fanout; }
};

struct Group {
  Scenario scenario;
  std::string label;
  u64 payload = 64;
  u32 subs = 1, producers = 1, consumers = 1;
  std::vector<Planned> b;
  int workers = 2;
};

std::string fmt_size(u64 b) {
  if (b >= (1u << 20) && b % (1u << 20) == 0) return std::to_string(b >> 20) + " MiB";
  if (b >= 1024 && b % 1024 == 0) return std::to_string(b >> 10) + " KiB";
  return std::to_string(b) + " B";
}

// Children, for the interrupt handler: workers [0, kMaxWorkers), then the broker, iox-roudi and aeronmd.
pid_t g_children[kMaxWorkers + 3];
char g_cleanup[1024];  // the shell command that removes what this run made, prepared by init()

void on_sigchld(int) {}  // interrupts futex_wait, so a dead worker is noticed at once

// Ctrl-C: kill the workers, stop the broker and RouDi (SIGTERM, so they remove their shared memory), then
// replace this process with a shell that removes the run's files. Only async-signal-safe calls.
void on_sigint(int) {
  for (int i = 0; i < kMaxWorkers; ++i)
    if (g_children[i] > 0) ::kill(g_children[i], SIGKILL);
  for (int i = kMaxWorkers; i < kMaxWorkers + 2; ++i)
    if (g_children[i] > 0) ::kill(g_children[i], SIGTERM);
  if (g_children[kMaxWorkers + 2] > 0) ::kill(g_children[kMaxWorkers + 2], SIGINT);  // aeronmd's stop signal
  for (int i = 0; i < kMaxWorkers + 3; ++i) {
    if (g_children[i] <= 0) continue;
    for (int t = 0; t < 500 && ::waitpid(g_children[i], nullptr, WNOHANG) == 0; ++t) {
      const timespec ten_ms{0, 10'000'000};
      ::nanosleep(&ten_ms, nullptr);
    }
  }
  ::execl("/bin/sh", "sh", "-c", g_cleanup, static_cast<char*>(nullptr));
  ::_exit(130);
}

class Orchestrator {
 public:
  explicit Orchestrator(const Options& o) : o_(o) {}
  int run();

 private:
  // Environment.
  bool init(std::string* err);
  void cleanup();
  std::vector<Group> plan();
  bool wanted(const std::string& transport, Mode m) const;
  bool named(const std::string& transport) const;
  // Workers.
  bool spawn_workers(int n, int group, std::string* err);
  void kill_workers();
  void quit_workers();
  void command(int w, Cmd c, u32 bench, u32 phase, u64 count);
  std::string wait_done(int w, double timeout_s);
  std::string wait_started(int w, double timeout_s);
  bool worker_dead(int w, std::string* why);
  // Groups.
  void run_group(Group& g, int gi);
  bool bring_up(Group& g, int gi);
  std::string setup_bench(Group& g, std::size_t bi);
  void teardown_bench(Group& g, std::size_t bi);
  std::string run_bench(Group& g, std::size_t bi, u64 count, int cycle, bool record, double* seconds);
  std::string run_pair(Planned& p, u32 bi, u64 count, double timeout_s);
  std::string run_queue(Planned& p, u32 bi, u64 total, double timeout_s, double* rate);
  void size_bench(Planned& p, double per_op_s);
  void report_group(const Group& g);
  void run_reclaim(Group& g);
  // Services.
  bool need_broker(std::string* err);
  bool need_roudi(std::string* err);
  bool need_aeronmd(std::string* err);
  void progress(const std::string& s, bool milestone = false);

  Options o_;
  PresetValues pv_{};
  int memfd_ = -1;
  Control* ctl_ = nullptr;
  u64* samples_ = nullptr;
  u64* samples2_ = nullptr;
  std::string self_, rundir_, prefix_, domain_;
  std::vector<pid_t> workers_;
  u32 seq_[kMaxWorkers] = {};
  int attempt_ = 0;
  Broker broker_;
  bool broker_tried_ = false;
  std::string broker_err_;
  Roudi roudi_;
  bool roudi_tried_ = false;
  std::string roudi_err_;
  Aeronmd aeronmd_;
  bool aeronmd_tried_ = false;
  std::string aeronmd_err_;
  std::string aeron_dir_;  // /dev/shm/<prefix>-aeron, $AERON_DIR of the workers
  std::size_t max_payload_ = 64;
  Report rep_;
  Clock::time_point t0_;
  int groups_total_ = 0, group_now_ = 0;
  bool tty_ = false;
  std::string stage_;
};

// ---- environment ----

bool Orchestrator::init(std::string* err) {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) {
    *err = "readlink /proc/self/exe failed";
    return false;
  }
  self_.assign(buf, static_cast<std::size_t>(n));
  char tmpl[] = "/tmp/shmbus-bench-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    *err = errno_text("mkdtemp");
    return false;
  }
  rundir_ = tmpl;
  prefix_ = "sbb" + std::to_string(::getpid());
  domain_ = prefix_;
  ::setenv("SHMBUS_RUNTIME_DIR", rundir_.c_str(), 1);
  ::setenv("SHMBUS_DOMAIN", domain_.c_str(), 1);
  ::setenv("SHMBUS_AUTOSTART", "0", 1);
  aeron_dir_ = "/dev/shm/" + prefix_ + "-aeron";  // log buffers in memory, not on /tmp's disk
  ::setenv("AERON_DIR", aeron_dir_.c_str(), 1);   // the Aeron clients of the workers read it

  memfd_ = ::memfd_create("shmbus-bench-control", 0);  // no CLOEXEC: workers inherit it through exec
  if (memfd_ < 0 || ::ftruncate(memfd_, static_cast<off_t>(kRegionBytes)) != 0) {
    *err = errno_text("memfd");
    return false;
  }
  void* p = ::mmap(nullptr, kRegionBytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0);
  if (p == MAP_FAILED) {
    *err = errno_text("mmap");
    return false;
  }
  ctl_ = new (p) Control();
  ctl_->magic = kControlMagic;
  g_use_tsc = o_.use_tsc;
  ctl_->use_tsc = o_.use_tsc ? 1 : 0;
  ctl_->ns_per_tick = o_.use_tsc ? calibrate_tsc(50) : 1.0;
  std::snprintf(ctl_->rundir, sizeof ctl_->rundir, "%s", rundir_.c_str());
  samples_ = reinterpret_cast<u64*>(static_cast<std::byte*>(p) + kControlBytes);
  samples2_ = samples_ + kMaxSamples;

  struct sigaction sa {};
  sa.sa_handler = on_sigchld;  // no SA_RESTART: futex_wait returns on a child's death
  sigaction(SIGCHLD, &sa, nullptr);
  struct sigaction si {};
  si.sa_handler = on_sigint;
  sigaction(SIGINT, &si, nullptr);
  sigaction(SIGTERM, &si, nullptr);
  tty_ = ::isatty(2) != 0;
  std::snprintf(g_cleanup, sizeof g_cleanup,
                "rm -rf '%s' /dev/shm/%s* /dev/shm/shmbus.%s* /dev/mqueue/%s* /tmp/sbw%d-* 2>/dev/null; "
                "echo; echo 'shmbus-bench: interrupted' >&2; exit 130",
                rundir_.c_str(), prefix_.c_str(), prefix_.c_str(), prefix_.c_str(),
                static_cast<int>(::getpid()));
  return true;
}

void remove_matching(const std::string& dir, const std::string& prefix, bool shm_unlink_names) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d))
    if (std::string(e->d_name).rfind(prefix, 0) == 0) names.push_back(e->d_name);
  ::closedir(d);
  for (const auto& n : names) {
    if (shm_unlink_names)
      ::shm_unlink(("/" + n).c_str());
    else
      ::unlink((dir + "/" + n).c_str());
  }
}

void Orchestrator::cleanup() {
  kill_workers();
  std::string e;
  if (!roudi_.stop(&e)) rep_.notes.push_back(e);
  if (!aeronmd_.stop(&e)) rep_.notes.push_back(e);
  broker_.stop();
  g_children[kMaxWorkers] = g_children[kMaxWorkers + 1] = g_children[kMaxWorkers + 2] = 0;
  if (!aeron_dir_.empty()) (void)std::system(("rm -rf '" + aeron_dir_ + "'").c_str());
  // What killed processes may have left: segments, message queues, the run directory.
  remove_matching("/dev/shm", prefix_, true);
  remove_matching("/dev/shm", "shmbus." + prefix_, true);
  remove_matching("/dev/mqueue", prefix_, false);
  // The sockets of iceoryx runtimes whose worker was killed (named "sbw<orchestrator pid>-<worker pid>").
  remove_matching("/tmp", "sbw" + std::to_string(::getpid()) + "-", false);
  if (!rundir_.empty()) {
    const std::string cmd = "rm -rf '" + rundir_ + "'";
    (void)std::system(cmd.c_str());
  }
}

// Named in --transports (the layers of the data path run only then).
bool Orchestrator::named(const std::string& t) const {
  for (const auto& f : o_.transports)
    if (f == t || f.rfind(t + "/", 0) == 0) return true;
  return false;
}

bool Orchestrator::wanted(const std::string& t, Mode m) const {
  if (o_.transports.empty()) return true;
  for (const auto& f : o_.transports) {
    const auto slash = f.find('/');
    if (slash == std::string::npos ? f == t
                                   : (f.substr(0, slash) == t && f.substr(slash + 1) == to_string(m)))
      return true;
  }
  return false;
}

std::vector<Group> Orchestrator::plan() {
  std::vector<Group> groups;
  auto make = [&](Scenario s, u64 payload, u32 subs, u32 prod, u32 cons) {
    Group g;
    g.scenario = s;
    g.payload = payload;
    g.subs = subs;
    g.producers = prod;
    g.consumers = cons;
    g.label = s == Scenario::fanout    ? std::to_string(subs) + " sub" + (subs == 1 ? "" : "s")
              : s == Scenario::queue   ? std::to_string(prod) + "x" + std::to_string(cons)
              : s == Scenario::reclaim ? std::string("kill -9")
                                       : fmt_size(payload);
    g.workers = s == Scenario::queue ? static_cast<int>(prod + cons) : s == Scenario::reclaim ? 1 : 2;
    const Pattern pat = pattern_of(s);
    bool has_line = false;
    for (const Entry& e : entries_for(s)) {
      if (!wanted(e.transport, e.mode)) continue;
      if (std::string_view(e.transport).rfind("layer-", 0) == 0 && !named(e.transport)) continue;  // opt-in
      Planned p;
      p.transport = e.transport;
      p.mode = e.mode;
      p.pattern = pat;
      p.payload = payload;
      p.receivers = s == Scenario::fanout ? subs : s == Scenario::queue ? cons : 1;
      p.senders = s == Scenario::queue ? prod : 1;
      p.spin = 20000;
      if (pat == Pattern::stream || pat == Pattern::queue)
        p.depth = std::min<u64>(1024, pow2_at_most((64u << 20) / std::max<u64>(payload, 1)));
      else
        p.depth = 8;
      if (e.skip != nullptr) p.skip = e.skip;
      if (p.transport == "posix-mq" && p.skip.empty()) {
        // POSIX queues live within the system's limits; a benchmark does not raise them.
        const u64 msg_max = read_proc_u64("/proc/sys/fs/mqueue/msg_max", 10);
        const u64 size_max = read_proc_u64("/proc/sys/fs/mqueue/msgsize_max", 8192);
        if (p.payload > size_max) {
          p.skip = "a " + std::to_string(p.payload) +
                   "-byte message exceeds /proc/sys/fs/mqueue/msgsize_max (" + std::to_string(size_max) + ")";
        } else if (p.depth > msg_max) {
          p.depth = msg_max;
          p.note = "depth " + std::to_string(msg_max) + " (msg_max)";
        }
      }
      std::string why;
      if (p.skip.empty() && !transport_compiled(p.transport, &why)) p.skip = why;
      has_line = has_line || (p.transport == "floor-cacheline" && p.skip.empty());
      p.keep_pooled = (s == Scenario::pingpong || s == Scenario::wakeup) && payload == 64;
      g.b.push_back(p);
    }
    if (g.b.empty()) return;
    if (!has_line && s != Scenario::reclaim) {
      Planned probe;
      probe.transport = "floor-cacheline";
      probe.mode = Mode::busy;
      probe.pattern = Pattern::roundtrip;
      probe.payload = 8;
      probe.hidden = true;
      g.b.insert(g.b.begin(), probe);
    }
    groups.push_back(std::move(g));
  };
  for (Scenario s : o_.scenarios) {
    switch (s) {
      case Scenario::pingpong:
      case Scenario::wakeup:
      case Scenario::throughput: {
        std::vector<u64> sizes = o_.sizes;
        if (sizes.empty()) {
          if (s == Scenario::wakeup)
            sizes = o_.preset == Preset::full ? std::vector<u64>{64, 4096} : std::vector<u64>{64};
          else if (o_.preset == Preset::smoke)
            sizes = {64, 4096};
          else if (o_.preset == Preset::quick)
            sizes = s == Scenario::pingpong ? std::vector<u64>{8, 64, 1024, 4096, 65536, 1 << 20}
                                            : std::vector<u64>{8, 64, 4096, 65536, 1 << 20};
          else
            sizes = {8, 64, 1024, 4096, 65536, 1 << 20};
        }
        for (u64 z : sizes) make(s, z, 1, 1, 1);
        break;
      }
      case Scenario::fanout: {
        std::vector<u32> subs = o_.subs;
        if (subs.empty())
          subs = o_.preset == Preset::smoke ? std::vector<u32>{1, 2} : std::vector<u32>{1, 2, 4, 8};
        const u64 z = o_.sizes.empty() ? 64 : o_.sizes[0];
        for (u32 n : subs) make(s, z, n, 1, 1);
        break;
      }
      case Scenario::queue: {
        auto pc = o_.pc;
        if (pc.empty())
          pc = o_.preset == Preset::smoke ? std::vector<std::pair<u32, u32>>{{1, 1}, {2, 2}}
                                          : std::vector<std::pair<u32, u32>>{{1, 1}, {2, 2}, {4, 4}};
        const u64 z = o_.sizes.empty() ? 64 : o_.sizes[0];
        for (auto [p, c] : pc) make(s, z, 1, p, c);
        break;
      }
      case Scenario::reclaim:
        make(s, 64, 1, 1, 1);
        break;
    }
  }
  for (const Group& g : groups)
    for (const Planned& p : g.b)
      if (p.transport == "iceoryx" && p.skip.empty())
        max_payload_ = std::max<std::size_t>(max_payload_, p.payload);
  return groups;
}

// ---- workers ----

bool Orchestrator::spawn_workers(int n, int group, std::string* err) {
  kill_workers();
  ctl_->nworkers = static_cast<u32>(n);
  for (int i = 0; i < n; ++i) {
    WorkerSlot& w = ctl_->w[i];
    w.cmd_seq.store(0, std::memory_order_relaxed);
    w.done_seq.store(0, std::memory_order_relaxed);
    w.started_seq.store(0, std::memory_order_relaxed);
    w.progress.store(0, std::memory_order_relaxed);
    seq_[i] = 0;
    const int cpu = n == 2 ? (i == 0 ? o_.cpu_a : o_.cpu_b) : (i % 2 == 0 ? o_.cpu_a : o_.cpu_b);
    const std::string log = rundir_ + "/worker-g" + std::to_string(group) + "-" + std::to_string(i) + ".log";
    const pid_t pid = spawn_logged(
        {self_, "--worker", std::to_string(memfd_), std::to_string(i), std::to_string(cpu)}, log);
    if (pid < 0) {
      *err = errno_text("fork");
      return false;
    }
    workers_.push_back(pid);
    g_children[i] = pid;
  }
  return true;
}

void Orchestrator::kill_workers() {
  for (std::size_t i = 0; i < workers_.size(); ++i) {
    if (workers_[i] > 0) {
      ::kill(workers_[i], SIGKILL);
      ::waitpid(workers_[i], nullptr, 0);
    }
    g_children[i] = 0;
  }
  workers_.clear();
}

void Orchestrator::quit_workers() {
  for (std::size_t i = 0; i < workers_.size(); ++i)
    if (workers_[i] > 0) command(static_cast<int>(i), Cmd::quit, 0, 0, 0);
  for (std::size_t i = 0; i < workers_.size(); ++i) {
    if (workers_[i] <= 0) continue;
    const int st = reap(workers_[i], 10000);
    if (st == -1) rep_.notes.push_back("a worker did not quit within 10 s and was killed");
    workers_[i] = -1;
    g_children[i] = 0;
  }
  workers_.clear();
}

void Orchestrator::command(int w, Cmd c, u32 bench, u32 phase, u64 count) {
  WorkerSlot& s = ctl_->w[w];
  s.cmd = static_cast<u32>(c);
  s.bench = bench;
  s.phase = phase;
  s.count = count;
  s.cmd_seq.store(++seq_[w], std::memory_order_release);  // R-CMD
  (void)futex_wake(&s.cmd_seq, 1);
}

bool Orchestrator::worker_dead(int w, std::string* why) {
  if (w >= static_cast<int>(workers_.size()) || workers_[w] <= 0) {
    *why = "worker " + std::to_string(w) + " is not running";
    return true;
  }
  int st = 0;
  if (::waitpid(workers_[w], &st, WNOHANG) != workers_[w]) return false;
  workers_[w] = -1;
  g_children[w] = 0;
  std::string how = WIFSIGNALED(st) ? "killed by signal " + std::to_string(WTERMSIG(st))
                                    : "exit " + std::to_string(WEXITSTATUS(st));
  const std::string said = ctl_->w[w].error;
  *why = "worker " + std::to_string(w) + " died (" + how + ")" + (said.empty() ? "" : ": " + said);
  return true;
}

std::string Orchestrator::wait_done(int w, double timeout_s) {
  WorkerSlot& s = ctl_->w[w];
  const auto end = Clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    const u32 d = s.done_seq.load(std::memory_order_acquire);  // A-DONE
    if (d == seq_[w]) return s.status == 0 ? std::string() : std::string(s.error);
    std::string why;
    if (worker_dead(w, &why)) return why;
    if (Clock::now() > end)
      return "no answer within " + std::to_string(static_cast<int>(timeout_s)) + " s (hung)";
    (void)futex_wait(&s.done_seq, d, std::chrono::milliseconds(500));
  }
}

std::string Orchestrator::wait_started(int w, double timeout_s) {
  WorkerSlot& s = ctl_->w[w];
  const auto end = Clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    if (s.started_seq.load(std::memory_order_acquire) == seq_[w]) return {};
    if (s.done_seq.load(std::memory_order_acquire) == seq_[w])
      return s.status == 0 ? std::string() : std::string(s.error);
    std::string why;
    if (worker_dead(w, &why)) return why;
    if (Clock::now() > end)
      return "did not start within " + std::to_string(static_cast<int>(timeout_s)) + " s";
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

// ---- services ----

bool Orchestrator::need_broker(std::string* err) {
  if (!broker_tried_) {
    broker_tried_ = true;
    if (broker_.start(rundir_, domain_, &broker_err_)) g_children[kMaxWorkers] = broker_.pid();
  }
  *err = broker_err_.empty() ? "" : "no broker: " + broker_err_;
  return broker_err_.empty();
}

bool Orchestrator::need_aeronmd(std::string* err) {
  if (!aeronmd_tried_) {
    aeronmd_tried_ = true;
    if (aeronmd_.start(aeron_dir_, rundir_ + "/aeronmd.log", &aeronmd_err_))
      g_children[kMaxWorkers + 2] = aeronmd_.pid();
  }
  *err = aeronmd_err_;
  return aeronmd_err_.empty();
}

bool Orchestrator::need_roudi(std::string* err) {
  if (!roudi_tried_) {
    roudi_tried_ = true;
    if (roudi_.start(rundir_, max_payload_, &roudi_err_)) g_children[kMaxWorkers + 1] = roudi_.pid();
  }
  *err = roudi_err_;
  return roudi_err_.empty();
}

void Orchestrator::progress(const std::string& s, bool milestone) {
  const double el = std::chrono::duration<double>(Clock::now() - t0_).count();
  char head[64];
  std::snprintf(head, sizeof head, "[%d/%d %4.0fs] ", group_now_, groups_total_, el);
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s%s", head, s.c_str());
    std::fflush(stderr);
  } else if (milestone) {
    std::fprintf(stderr, "%s%s\n", head, s.c_str());
  }
}

// ---- groups ----

std::string Orchestrator::setup_bench(Group& g, std::size_t bi) {
  Planned& p = g.b[bi];
  BenchDesc& d = ctl_->benches[bi];
  d = BenchDesc{};
  std::snprintf(d.transport, sizeof d.transport, "%s", p.transport.c_str());
  d.mode = p.mode;
  d.pattern = p.pattern;
  d.payload = p.payload;
  d.depth = p.depth;
  d.receivers = p.receivers;
  d.senders = p.senders;
  d.spin = p.spin;
  std::snprintf(d.name, sizeof d.name, "%s.g%d.b%zu.a%d", prefix_.c_str(), group_now_, bi, attempt_);
  const int n = workers_for(d);
  for (u32 phase = 0; phase < 4; ++phase) {
    for (int w = 0; w < n; ++w) command(w, Cmd::setup, static_cast<u32>(bi), phase, 0);
    std::string err;
    for (int w = 0; w < n; ++w) {
      std::string e = wait_done(w, 30);
      if (!e.empty() && err.empty()) err = e;
    }
    if (!err.empty()) return err;
  }
  return {};
}

void Orchestrator::teardown_bench(Group& g, std::size_t bi) {
  const int n = workers_for(ctl_->benches[bi]);
  (void)g;
  for (u32 phase = 0; phase < 2; ++phase) {
    for (int w = 0; w < n; ++w)
      if (w < static_cast<int>(workers_.size()) && workers_[w] > 0)
        command(w, Cmd::teardown, static_cast<u32>(bi), phase, 0);
    for (int w = 0; w < n; ++w)
      if (w < static_cast<int>(workers_.size()) && workers_[w] > 0) (void)wait_done(w, 10);
  }
}

// Start the group's workers and set up every bench that may run. False: a worker died during setup (the
// bench that killed it is marked skipped); the caller starts over with fresh workers.
bool Orchestrator::bring_up(Group& g, int gi) {
  ++attempt_;
  std::string err;
  if (!spawn_workers(g.workers, gi, &err)) {
    for (auto& p : g.b)
      if (p.skip.empty()) p.skip = "cannot start workers: " + err;
    return true;
  }
  for (std::size_t bi = 0; bi < g.b.size(); ++bi) {
    Planned& p = g.b[bi];
    if (!p.skip.empty()) continue;
    if (p.transport == "shmbus" && !need_broker(&err)) {
      p.skip = err;
      continue;
    }
    if (p.transport == "iceoryx" && !need_roudi(&err)) {
      p.skip = err;
      continue;
    }
    if (p.transport.rfind("aeron-ipc", 0) == 0 && !need_aeronmd(&err)) {
      p.skip = err;
      continue;
    }
    progress(g.label + ": setting up " + p.transport + "/" + to_string(p.mode));
    const std::string e = setup_bench(g, bi);
    if (e.empty()) continue;
    p.skip = "setup failed: " + e;
    bool died = false;
    for (int w = 0; w < g.workers; ++w) {
      std::string why;
      died = died || worker_dead(w, &why);
    }
    if (died) {
      kill_workers();
      return false;
    }
    teardown_bench(g, bi);
  }
  return true;
}

// Latency: round trips per point from the preset, fewer for big payloads, capped by time. Rates: messages
// per round so that a round lasts about round_s.
void Orchestrator::size_bench(Planned& p, double per_op_s) {
  if (p.latency()) {
    u64 it = o_.iters;
    if (p.payload >= (1u << 20))
      it = o_.iters / 50;
    else if (p.payload >= 65536)
      it = o_.iters / 10;
    const u64 floor_it = static_cast<u64>(o_.rounds) * 10;
    it = std::max(it, floor_it);
    if (p.hidden) it = std::min<u64>(it, static_cast<u64>(o_.rounds) * 2000);
    if (per_op_s > 0 && static_cast<double>(it) * per_op_s > o_.cap_s) {
      const u64 capped = std::max(floor_it, static_cast<u64>(o_.cap_s / per_op_s));
      if (capped < it) {
        it = capped;
        if (!p.hidden) p.note += std::string(p.note.empty() ? "" : ", ") + "time-capped";
      }
    }
    p.per_round = std::min<u64>(kMaxSamples, std::max<u64>(1, it / o_.rounds));
    p.iters = p.per_round * o_.rounds;
  } else {
    double n = per_op_s > 0 ? o_.round_s / per_op_s : 1000;
    n = std::clamp(n, 200.0, 20e6);
    u64 count = static_cast<u64>(n);
    if (p.pattern == Pattern::queue) count = std::max<u64>(p.senders, count / p.senders * p.senders);
    p.iters = count;
    p.per_round = count;
  }
}

std::string Orchestrator::run_pair(Planned& p, u32 bi, u64 count, double timeout_s) {
  // Follower first: it must be in its loop before the leader's first message, or the first samples would
  // carry its wake-up.
  command(1, Cmd::run, bi, 0, count);
  if (auto e = wait_started(1, 10); !e.empty()) return "follower: " + e;
  command(0, Cmd::run, bi, 0, count);
  std::string e0 = wait_done(0, timeout_s);
  std::string e1 = wait_done(1, e0.empty() ? timeout_s : 2);
  (void)p;
  if (!e0.empty()) return "leader: " + e0;
  if (!e1.empty()) return "follower: " + e1;
  return {};
}

std::string Orchestrator::run_queue(Planned& p, u32 bi, u64 total, double timeout_s, double* rate) {
  const int P = static_cast<int>(p.senders), C = static_cast<int>(p.receivers);
  ctl_->go.store(0, std::memory_order_relaxed);
  for (int c = 0; c < C; ++c) {
    ctl_->w[P + c].progress.store(0, std::memory_order_relaxed);
    ctl_->w[P + c].last_tick.store(0, std::memory_order_relaxed);
    command(P + c, Cmd::run, bi, 0, 0);
  }
  for (int c = 0; c < C; ++c)
    if (auto e = wait_started(P + c, 10); !e.empty()) return "consumer: " + e;
  for (int w = 0; w < P; ++w) command(w, Cmd::run, bi, 0, total / static_cast<u64>(P));
  for (int w = 0; w < P; ++w)
    if (auto e = wait_started(w, 10); !e.empty()) return "producer: " + e;
  std::this_thread::sleep_for(std::chrono::milliseconds(2));  // producers reach the gate
  const u64 t_start = now_ticks();
  ctl_->go.store(1, std::memory_order_release);
  (void)futex_wake(&ctl_->go, INT_MAX);
  const auto end = Clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    u64 taken = 0;
    for (int c = 0; c < C; ++c) taken += ctl_->w[P + c].progress.load(std::memory_order_relaxed);
    if (taken >= total) break;
    std::string why;
    for (int w = 0; w < P + C; ++w)
      if (worker_dead(w, &why)) return why;
    if (Clock::now() > end)
      return "only " + std::to_string(taken) + " of " + std::to_string(total) + " messages taken within " +
             std::to_string(static_cast<int>(timeout_s)) + " s";
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  u64 t_end = 0;
  for (int c = 0; c < C; ++c)
    t_end = std::max(t_end, ctl_->w[P + c].last_tick.load(std::memory_order_relaxed));
  for (int w = 0; w < P; ++w)
    if (auto e = wait_done(w, timeout_s); !e.empty()) return "producer: " + e;
  // Stop the consumers: pills from producer 0 until every consumer has answered.
  for (int tries = 0;; ++tries) {
    command(0, Cmd::pill, bi, 0, static_cast<u64>(C));
    if (auto e = wait_done(0, 10); !e.empty()) return "pill: " + e;
    bool all = true;
    for (int c = 0; c < C; ++c) {
      WorkerSlot& s = ctl_->w[P + c];
      const auto until = Clock::now() + std::chrono::milliseconds(tries < 3 ? 200 : 20);
      while (s.done_seq.load(std::memory_order_acquire) != seq_[P + c] && Clock::now() < until)
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      all = all && s.done_seq.load(std::memory_order_acquire) == seq_[P + c];
    }
    if (all) break;
    if (tries > 50) return "consumers did not stop after pills";
  }
  for (int c = 0; c < C; ++c)
    if (auto e = wait_done(P + c, 2); !e.empty()) return "consumer: " + e;
  const double secs = static_cast<double>(t_end - t_start) * ctl_->ns_per_tick * 1e-9;
  *rate = secs > 0 ? static_cast<double>(total) / secs : 0;
  return {};
}

std::string Orchestrator::run_bench(Group& g, std::size_t bi, u64 count, int cycle, bool record,
                                    double* seconds) {
  Planned& p = g.b[bi];
  const double ns_tick = ctl_->ns_per_tick;
  const auto t_begin = Clock::now();
  const double timeout = 60 + 20 * o_.cap_s;
  std::string e;
  double rate = 0;
  if (p.pattern == Pattern::queue) {
    e = run_queue(p, static_cast<u32>(bi), count, timeout, &rate);
  } else {
    e = run_pair(p, static_cast<u32>(bi), count, timeout);
    if (e.empty() && p.pattern == Pattern::stream) {
      const double secs = static_cast<double>(samples_[0]) * ns_tick * 1e-9;
      rate = secs > 0 ? static_cast<double>(count) / secs : 0;
    }
  }
  *seconds = std::chrono::duration<double>(Clock::now() - t_begin).count();
  if (!e.empty()) return e;
  if (p.pattern == Pattern::stream || p.pattern == Pattern::queue) {
    if (rate > 0) *seconds = static_cast<double>(count) / rate;
  } else if (count > 0) {
    // Per round trip, from the samples (the command's own overhead excluded).
    double sum = 0;
    for (u64 i = 0; i < count; ++i) sum += static_cast<double>(samples_[i]);
    *seconds = sum * ns_tick * 1e-9;
  }
  if (!record) return {};
  if (p.latency()) {
    std::vector<double> v(count);
    for (u64 i = 0; i < count; ++i) v[i] = static_cast<double>(samples_[i]) * ns_tick;
    if (p.keep_pooled) p.pooled.insert(p.pooled.end(), v.begin(), v.end());
    p.lat[cycle] = percentiles(std::move(v));
    if (p.pattern == Pattern::fanout) {
      std::vector<double> s(count);
      for (u64 i = 0; i < count; ++i) s[i] = static_cast<double>(samples2_[i]) * ns_tick;
      p.send[cycle] = percentiles(std::move(s));
    }
  } else {
    p.rate[cycle] = rate;
  }
  p.measured += count;
  return {};
}

void Orchestrator::run_group(Group& g, int gi) {
  const std::string name = std::string(to_string(g.scenario)) + " " + g.label;
  stage_ = name;
  progress(name + ": starting " + std::to_string(g.workers) + " workers", true);
  if (g.scenario == Scenario::reclaim) {
    run_reclaim(g);
    report_group(g);
    return;
  }
  for (int tries = 0; !bring_up(g, gi); ++tries)
    if (tries > static_cast<int>(g.b.size())) break;
  const u32 R = o_.rounds;
  for (auto& p : g.b) {
    p.lat.assign(R, std::nullopt);
    p.send.assign(R, std::nullopt);
    p.rate.assign(R, std::nullopt);
  }
  // A run failure restarts the workers and sets up what is left; `fail` marks the bench and does that.
  auto fail = [&](std::size_t bi, const std::string& e) {
    g.b[bi].skip = "run failed: " + e;
    g.b[bi].pooled.clear();
    kill_workers();
    for (int tries = 0; !bring_up(g, gi); ++tries)
      if (tries > static_cast<int>(g.b.size())) break;
  };
  // Warm-up: every bench once, unrecorded; its timing sizes the rounds.
  for (std::size_t bi = 0; bi < g.b.size(); ++bi) {
    Planned& p = g.b[bi];
    if (!p.skip.empty()) continue;
    progress(name + ": warm-up " + p.transport + "/" + to_string(p.mode));
    u64 warm;
    if (p.latency()) {
      warm = std::max<u64>(10, std::min<u64>(o_.warmup, p.payload >= 65536 ? o_.warmup / 20 : o_.warmup));
    } else {
      warm = std::clamp<u64>((32u << 20) / std::max<u64>(p.payload, 1), 200, 20000);
      if (o_.preset == Preset::smoke) warm = 200;
      if (p.pattern == Pattern::queue) warm = std::max<u64>(p.senders, warm / p.senders * p.senders);
    }
    double secs = 0;
    if (auto e = run_bench(g, bi, warm, 0, false, &secs); !e.empty()) {
      fail(bi, e);
      continue;
    }
    size_bench(p, secs / static_cast<double>(warm));
  }
  for (u32 c = 0; c < R; ++c) {
    for (std::size_t bi = 0; bi < g.b.size(); ++bi) {
      Planned& p = g.b[bi];
      if (!p.skip.empty() || p.per_round == 0) continue;
      progress(name + ": round " + std::to_string(c + 1) + "/" + std::to_string(R) + " " + p.transport + "/" +
               to_string(p.mode));
      double secs = 0;
      if (auto e = run_bench(g, bi, p.per_round, static_cast<int>(c), true, &secs); !e.empty()) fail(bi, e);
    }
  }
  for (std::size_t bi = 0; bi < g.b.size(); ++bi)
    if (g.b[bi].skip.empty()) teardown_bench(g, bi);
  quit_workers();
  report_group(g);
}

// ---- reclaim ----

void Orchestrator::run_reclaim(Group& g) {
  std::string err;
  if (!need_broker(&err)) {
    for (auto& p : g.b)
      if (p.skip.empty()) p.skip = err;
    return;
  }
  auto client = Client::connect({.domain = domain_, .name = "shmbus-bench", .autostart = false});
  if (!client) {
    for (auto& p : g.b)
      if (p.skip.empty()) p.skip = "connect: " + client.error().message();
    return;
  }
  constexpr u64 kHeld = 8;
  const u32 reps = o_.reclaim_reps;
  cpu_set_t all;
  (void)sched_getaffinity(0, sizeof all, &all);
  pin_self(o_.cpu_a);
  for (std::size_t bi = 0; bi < g.b.size(); ++bi) {
    Planned& p = g.b[bi];
    if (!p.skip.empty()) continue;
    p.lat.assign(1, std::nullopt);
    const std::string topic = prefix_ + ".reclaim." + to_string(p.mode);
    TopicOptions to;
    to.kind = TopicKind::stream;
    to.depth = 64;
    to.max_size = 256;  // held samples must be chunk messages (larger than a slot's inline room)
    to.max_subscribers = 1;
    if (auto st = client->create_topic(topic, to); !st) {
      p.skip = "create_topic: " + st.error().message();
      continue;
    }
    auto dir = DirectoryView::open(domain_);
    std::optional<TopicInfo> info = dir ? dir->find(topic) : std::nullopt;
    auto th =
        info ? TopicHandle::open(domain_, info->id) : Result<TopicHandle>(Error(Errc::not_found, topic));
    if (!th) {
      p.skip = "open topic: " + th.error().message();
      continue;
    }
    std::optional<Publisher> pub;
    if (p.mode == Mode::samples) {
      auto r = client->publisher(topic);
      if (!r) {
        p.skip = "publisher: " + r.error().message();
        continue;
      }
      pub.emplace(std::move(*r));
    }
    ChunkPool& pool = th->pool();
    const u32 chunks = pool.chunk_count();
    std::vector<double> times, dead_times;
    for (u32 rep = 0; rep < reps && p.skip.empty(); ++rep) {
      progress(std::string("reclaim ") + to_string(p.mode) + ": kill " + std::to_string(rep + 1) + "/" +
               std::to_string(reps));
      ++attempt_;
      if (!spawn_workers(1, 0, &err)) {
        p.skip = err;
        break;
      }
      BenchDesc& d = ctl_->benches[bi];
      d = BenchDesc{};
      std::snprintf(d.transport, sizeof d.transport, "shmbus");
      d.mode = p.mode;
      d.pattern = Pattern::reclaim;
      d.payload = 64;
      std::snprintf(d.name, sizeof d.name, "%s", topic.c_str());
      command(0, Cmd::setup, static_cast<u32>(bi), 0, 0);
      if (auto e = wait_done(0, 10); !e.empty()) {
        p.skip = "victim setup: " + e;
        break;
      }
      if (pub)
        for (u64 i = 0; i < kHeld; ++i) (void)pub->publish(std::string(200, 'r'));
      command(0, Cmd::run, static_cast<u32>(bi), 0, kHeld);
      if (auto e = wait_done(0, 10); !e.empty()) {
        p.skip = "victim: " + e;
        break;
      }
      // What the victim holds. A publisher's chunks carry its slot's identity in their owner word (the
      // topic has one publisher slot in use); a subscriber's held chunks are bits in its slot (slot 0).
      const StreamView& sv = th->stream();
      auto held = [&] {
        u64 n = 0;
        if (pub) {
          for (u64 w = 0; w < sv.held_words; ++w)
            n += static_cast<u64>(std::popcount(sv.held_of(0)[w].load(std::memory_order_acquire)));
        } else {
          for (u32 i = 0; i < chunks; ++i)
            n += detail::is_slot_owner(pool.header(i).owner.load(std::memory_order_acquire));
        }
        return n;
      };
      // Back: a dead publisher's chunks free in the pool; a dead subscriber's chunks back with their
      // publisher (its slot free: every connection closed, every reference drained by the publisher).
      auto all_free = [&] {
        if (pub) {
          // The publisher does what a live one does: it publishes (to nobody now), which is when it acks the
          // departure and takes the returned chunks.
          (void)pub->publish(std::string_view("tick"));
          return sv.subs[0].state.load(std::memory_order_acquire) == kSlotFree;
        }
        for (u32 i = 0; i < chunks; ++i) {
          const u64 o = pool.header(i).owner.load(std::memory_order_acquire);
          if (!ChunkPool::is_queued(o) || ChunkPool::queued_ring(o) != 0) return false;
        }
        return true;
      };
      if (const u64 h = held(); h != kHeld) {
        p.skip = "the victim holds " + std::to_string(h) + " chunks, expected " + std::to_string(kHeld);
        break;
      }
      // The victim dies on the follower CPU while this process watches from the leader CPU, yielding in
      // its loop: a watcher spinning on the CPU where the victim's exit or the broker must run would
      // delay them by a scheduler tick and measure itself.
      {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(o_.cpu_b, &set);
        (void)sched_setaffinity(workers_[0], sizeof set, &set);
      }
      // The kernel's side, for reference: when the death becomes visible on a pidfd (what the broker
      // waits on). Polled in the same loop, so both times have the same granularity (~1 us).
      const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, workers_[0], 0));
      const u64 t0 = mono_ns();
      ::kill(workers_[0], SIGKILL);
      u64 t1 = 0, t_dead = 0;
      while (mono_ns() - t0 < 5'000'000'000ull) {
        if (t_dead == 0 && pidfd >= 0) {
          pollfd pf{pidfd, POLLIN, 0};
          if (::poll(&pf, 1, 0) == 1) t_dead = mono_ns();
        }
        if (all_free()) {
          t1 = mono_ns();
          break;
        }
        sched_yield();
      }
      if (pidfd >= 0) ::close(pidfd);
      if (t_dead != 0 && t1 != 0) dead_times.push_back(static_cast<double>(t_dead - t0));
      ::waitpid(workers_[0], nullptr, 0);
      workers_.clear();
      g_children[0] = 0;
      sched_yield();
      if (t1 == 0) {
        p.skip = "the chunks were not back in the pool within 5 s";
        break;
      }
      times.push_back(static_cast<double>(t1 - t0));
      // The invariant once the broker is done: every chunk free, none lost.
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      PoolCensus cen = pool.census();
      // A live publisher keeps its chunks (in its cache, under its slot's identity): census() calls them
      // held by a process that is not running; they are not lost.
      std::erase_if(cen.violations, [&](const std::string& v) {
        unsigned idx = 0;
        return pub && std::sscanf(v.c_str(), "chunk %u is held by pid", &idx) == 1 && idx < chunks &&
               detail::is_slot_owner(pool.header(idx).owner.load(std::memory_order_acquire));
      });
      if (!cen.violations.empty() || (!pub && cen.free != chunks)) {
        p.note = "census after reclaim: " + std::to_string(cen.free) + "/" + std::to_string(chunks) +
                 " free" + (cen.violations.empty() ? "" : ", " + cen.violations[0]);
      }
    }
    pub.reset();
    (void)client->delete_topic(topic);
    if (!p.skip.empty()) continue;
    p.lat[0] = percentiles(times);
    p.measured = times.size();
    if (p.note.empty())
      p.note = p.mode == Mode::samples
                   ? "the subscriber's slot free, every chunk back with the publisher, no violation after "
                     "every kill"
                   : "census: all " + std::to_string(chunks) + " chunks free after every kill";
    if (!dead_times.empty()) p.note += "; death visible on a pidfd after p50 " + fmt_ns(median(dead_times));
  }
  (void)sched_setaffinity(0, sizeof all, &all);
}

// ---- rows ----

void Orchestrator::report_group(const Group& g) {
  const std::string sc = to_string(g.scenario);
  const std::string floor_name = floor_of(g.scenario);
  const Planned* floor = nullptr;
  const Planned* probe = nullptr;
  for (const Planned& p : g.b) {
    if (p.skip.empty() && p.transport == floor_name) floor = &p;
    if (p.skip.empty() && p.transport == "floor-cacheline") probe = &p;
  }
  const u32 R = g.scenario == Scenario::reclaim ? 1 : o_.rounds;
  // Regime of each round, from the cache-line round trip of that round.
  std::vector<std::optional<bool>> near(R);
  std::string regime_line;
  if (probe != nullptr) {
    for (u32 c = 0; c < R && c < probe->lat.size(); ++c) {
      if (!probe->lat[c]) continue;
      near[c] = probe->lat[c]->p50 < kNearFarNs;
      regime_line += " " + std::to_string(static_cast<int>(probe->lat[c]->p50));
    }
    rep_.notes.push_back("regime " + sc + " " + g.label +
                         ": floor-cacheline p50 per round (ns):" + regime_line);
  }
  std::vector<Row> rows;
  for (const Planned& p : g.b) {
    if (p.hidden) continue;
    Row r;
    r.scenario = sc;
    r.transport = p.transport;
    r.mode = to_string(p.mode);
    r.payload = p.payload;
    r.subscribers = g.scenario == Scenario::fanout ? g.subs : 0;
    r.producers = g.scenario == Scenario::queue ? g.producers : 0;
    r.consumers = g.scenario == Scenario::queue ? g.consumers : 0;
    r.skipped = p.skip;
    r.note = p.note;
    if (!p.skip.empty()) {
      rows.push_back(r);
      continue;
    }
    r.floor = floor_name;
    int n_near = 0, n_known = 0, n_rounds = 0;
    auto count_regime = [&](u32 c) {
      if (c < near.size() && near[c]) {
        ++n_known;
        n_near += *near[c] ? 1 : 0;
      }
    };
    if (p.latency() || p.pattern == Pattern::reclaim) {
      std::vector<double> p50, p90, p99, p999, p9999, s50, s99, ratio;
      double mx = 0;
      for (u32 c = 0; c < p.lat.size(); ++c) {
        if (!p.lat[c]) continue;
        ++n_rounds;
        const Percentiles& q = *p.lat[c];
        p50.push_back(q.p50);
        p90.push_back(q.p90);
        p99.push_back(q.p99);
        p999.push_back(q.p999);
        p9999.push_back(q.p9999);
        mx = std::max(mx, q.max);
        if (c < p.send.size() && p.send[c]) {
          s50.push_back(p.send[c]->p50);
          s99.push_back(p.send[c]->p99);
        }
        if (floor != nullptr && c < floor->lat.size() && floor->lat[c])
          ratio.push_back(q.p50 / floor->lat[c]->p50);
        count_regime(c);
      }
      if (p50.empty()) {
        r.skipped = "no round completed";
        rows.push_back(r);
        continue;
      }
      r.p50 = median(p50);
      r.p90 = median(p90);
      r.p99 = median(p99);
      r.p999 = median(p999);
      r.p9999 = median(p9999);
      r.max = mx;
      if (!s50.empty()) {
        r.send_p50 = median(s50);
        r.send_p99 = median(s99);
      }
      if (!ratio.empty()) r.x_floor = median(ratio);
      if (g.scenario == Scenario::reclaim) r.floor.clear();
    } else {
      std::vector<double> rates, ratio;
      for (u32 c = 0; c < p.rate.size(); ++c) {
        if (!p.rate[c]) continue;
        ++n_rounds;
        rates.push_back(*p.rate[c]);
        if (floor != nullptr && c < floor->rate.size() && floor->rate[c] && *floor->rate[c] > 0)
          ratio.push_back(*p.rate[c] / *floor->rate[c]);
        count_regime(c);
      }
      if (rates.empty()) {
        r.skipped = "no round completed";
        rows.push_back(r);
        continue;
      }
      r.msgs_per_s = median(rates);
      // Zero copy moves references, not bytes: a GB/s figure would only restate msgs/s.
      if (p.mode != Mode::zero_copy) r.gbytes_per_s = *r.msgs_per_s * static_cast<double>(p.payload) / 1e9;
      if (!ratio.empty()) r.x_floor = median(ratio);
    }
    r.rounds = static_cast<u64>(n_rounds);
    r.samples = p.measured;
    if (g.scenario == Scenario::reclaim)
      r.regime = "-";
    else if (n_known == 0)
      r.regime = "?";
    else if (n_near == n_known)
      r.regime = "near";
    else if (n_near == 0)
      r.regime = "far";
    else
      r.regime = std::to_string(n_near) + "/" + std::to_string(n_known) + " near";
    if (p.keep_pooled && !p.pooled.empty()) {
      std::vector<double> v = p.pooled;
      std::sort(v.begin(), v.end());
      Curve cv{sc, p.transport, to_string(p.mode), p.payload, {}};
      for (int i = 0; i <= 100; ++i) cv.points.push_back({i / 100.0, pct(v, i / 100.0)});
      for (double q : {0.995, 0.999, 0.9995, 0.9999, 0.99999})
        if (static_cast<double>(v.size()) * (1 - q) >= 1) cv.points.push_back({q, pct(v, q)});
      std::sort(cv.points.begin(), cv.points.end());
      rep_.curves.push_back(std::move(cv));
    }
    rows.push_back(r);
  }
  // Best peer of the group.
  std::optional<double> best;
  for (const Row& r : rows) {
    if (!r.skipped.empty() || !is_peer(r.transport)) continue;
    if (r.rate_row()) {
      if (r.msgs_per_s && (!best || *r.msgs_per_s > *best)) best = r.msgs_per_s;
    } else if (r.p50 && (!best || *r.p50 < *best)) {
      best = r.p50;
    }
  }
  if (best && *best > 0)
    for (Row& r : rows) {
      if (!r.skipped.empty()) continue;
      if (r.rate_row() && r.msgs_per_s)
        r.x_peer = *r.msgs_per_s / *best;
      else if (!r.rate_row() && r.p50)
        r.x_peer = *r.p50 / *best;
    }
  for (Row& r : rows) rep_.rows.push_back(std::move(r));
}

int Orchestrator::run() {
  t0_ = Clock::now();
  pv_ = preset_values(o_.preset);
  std::string err;
  if (!init(&err)) {
    std::fprintf(stderr, "shmbus-bench: %s\n", err.c_str());
    return 1;
  }
  std::vector<Group> groups = plan();
  groups_total_ = static_cast<int>(groups.size());
  rep_.cpu = cpu_model() + ", " + std::to_string(sysconf(_SC_NPROCESSORS_ONLN)) + " CPUs online";
  rep_.kernel = kernel_release();
  {
    char buf[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %Z", std::localtime(&now));
    rep_.date = buf;
  }
  rep_.command = o_.command;
  char clk[200];
  const double stamp = timestamp_overhead_ns(ctl_->ns_per_tick);
  if (o_.use_tsc)
    std::snprintf(
        clk, sizeof clk,
        "TSC at %.3f GHz (%.1f ns per timestamp, included in every sample); leader CPU %d, follower CPU %d",
        1.0 / ctl_->ns_per_tick, stamp, o_.cpu_a, o_.cpu_b);
  else
    std::snprintf(
        clk, sizeof clk,
        "CLOCK_MONOTONIC (%.1f ns per timestamp, included in every sample); leader CPU %d, follower CPU %d",
        stamp, o_.cpu_a, o_.cpu_b);
  rep_.clock = clk;
  for (std::size_t gi = 0; gi < groups.size(); ++gi) {
    group_now_ = static_cast<int>(gi + 1);
    run_group(groups[gi], static_cast<int>(gi + 1));
  }
  if (tty_) std::fprintf(stderr, "\r\033[K");
  rep_.seconds = std::chrono::duration<double>(Clock::now() - t0_).count();
  rep_.notes.insert(
      rep_.notes.begin(),
      {"latency columns: median over " + std::to_string(o_.rounds) +
           " interleaved rounds of each round's percentile; max: the largest sample of all rounds; p99.99 of "
           "a "
           "round of fewer than 10,000 samples is its largest",
       "round trips per point: " + std::to_string(o_.iters) + " (64 KiB: " + std::to_string(o_.iters / 10) +
           ", 1 MiB: " + std::to_string(o_.iters / 50) + "); 'time-capped' rows ran fewer, to stay within " +
           std::to_string(o_.cap_s).substr(0, 4) + " s per point (n = what was measured)",
       "regime: near = floor-cacheline p50 below " + std::to_string(static_cast<int>(kNearFarNs)) +
           " ns in that round (~120 ns), far otherwise (~450 ns); a row says near, far, or k/n near"});
  cleanup();
  print_tables(rep_, stdout);
  std::string msg;
  const auto files = write_outputs(rep_, o_.out, o_.plots, &msg);
  std::printf("\nwrote:");
  for (const auto& f : files) std::printf(" %s", f.c_str());
  std::printf("\n");
  if (!msg.empty()) std::printf("%s\n", msg.c_str());
  std::printf("total %.0f s\n", rep_.seconds);
  return 0;
}

}  // namespace

void apply_preset(Options& o) {
  const PresetValues v = preset_values(o.preset);
  if (o.iters == 0) o.iters = v.iters;
  if (o.rounds == 0) o.rounds = v.rounds;
  if (o.warmup == 0) o.warmup = v.warmup;
  if (o.cap_s == 0) o.cap_s = v.cap_s;
  if (o.round_s == 0) o.round_s = v.round_s;
  if (o.reclaim_reps == 0) o.reclaim_reps = v.reps;
}

int run_suite(const Options& o) {
  Orchestrator orch(o);
  return orch.run();
}

}  // namespace shmbus::bench
