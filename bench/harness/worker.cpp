// A worker process: maps the orchestrator's control block, pins itself, and executes commands until quit.
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstring>

#include "common/timing.hpp"
#include "harness/harness.hpp"
#include "harness/transports/transports.hpp"
#include "shmbus/eventcount.hpp"

namespace shmbus::bench {

namespace {
WorkerSlot* g_slot = nullptr;
int g_index = -1;

void put_error(WorkerSlot& w, const std::string& e) {
  const std::size_t n = std::min(e.size(), sizeof w.error - 1);
  std::memcpy(w.error, e.data(), n);
  w.error[n] = '\0';
}

// Wait for a command after `last`: spin briefly (the next command usually follows at once), then sleep.
u32 wait_command(WorkerSlot& w, u32 last) {
  for (int i = 0; i < 20000; ++i) {
    const u32 s = w.cmd_seq.load(std::memory_order_acquire);  // A-CMD
    if (s != last) return s;
    _mm_pause();
  }
  for (;;) {
    const u32 s = w.cmd_seq.load(std::memory_order_acquire);  // A-CMD
    if (s != last) return s;
    (void)futex_wait(&w.cmd_seq, last, std::chrono::milliseconds(200));
    if (::getppid() == 1) std::exit(4);  // the orchestrator is gone
  }
}
}  // namespace

// A hot-path failure inside a transport: record it where the orchestrator looks, then leave through exit()
// (iceoryx deregisters in its static destructors).
[[noreturn]] void fatal(const std::string& what) {
  if (g_slot != nullptr) {
    g_slot->status = 2;
    put_error(*g_slot, what);
  }
  std::fprintf(stderr, "shmbus-bench worker %d: %s\n", g_index, what.c_str());
  std::exit(3);
}

int worker_main(int fd, int index, int cpu) {
  void* p = ::mmap(nullptr, kRegionBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    std::perror("shmbus-bench worker: mmap");
    return 1;
  }
  ::close(fd);
  auto* ctl = static_cast<Control*>(p);
  if (ctl->magic != kControlMagic || index < 0 || index >= kMaxWorkers) {
    std::fprintf(stderr, "shmbus-bench worker: bad control block or index\n");
    return 1;
  }
  g_use_tsc = ctl->use_tsc != 0;
  g_index = index;
  if (cpu >= 0 && !pin_self(cpu))
    std::fprintf(stderr, "shmbus-bench worker %d: cannot pin to CPU %d\n", index, cpu);
  // POSIX message queues of large messages need more than the default 800 KiB (root may raise it).
  rlimit rl{RLIM_INFINITY, RLIM_INFINITY};
  (void)::setrlimit(RLIMIT_MSGQUEUE, &rl);

  WorkerSlot& w = ctl->w[index];
  g_slot = &w;
  auto* base = static_cast<std::byte*>(p);
  RunIo io{ctl, &w, reinterpret_cast<u64*>(base + kControlBytes),
           reinterpret_cast<u64*>(base + kControlBytes + kMaxSamples * sizeof(u64))};
  std::unique_ptr<Bench> benches[kMaxBenches];

  u32 last = 0;
  for (;;) {
    const u32 seq = wait_command(w, last);
    last = seq;
    const auto cmd = static_cast<Cmd>(w.cmd);
    const u32 b = w.bench;
    std::string err;
    bool quit = false;
    w.status = 0;
    w.error[0] = '\0';
    if (b >= kMaxBenches) {
      err = "bench index out of range";
    } else {
      switch (cmd) {
        case Cmd::setup:
          if (!benches[b]) {
            const BenchDesc& d = ctl->benches[b];
            benches[b] = make_bench(d, part_of(d, index), *ctl, &err);
          }
          if (benches[b]) err = benches[b]->setup(static_cast<int>(w.phase));
          break;
        case Cmd::run:
          err = benches[b] ? benches[b]->run(w.count, io) : "run: not set up";
          break;
        case Cmd::pill:
          err = benches[b] ? benches[b]->pill(w.count) : "pill: not set up";
          break;
        case Cmd::teardown:
          if (benches[b]) {
            benches[b]->teardown(static_cast<int>(w.phase));
            if (w.phase == 1) benches[b].reset();
          }
          break;
        case Cmd::quit:
          for (auto& x : benches) x.reset();
          shmbus_client_shutdown();
          quit = true;
          break;
        case Cmd::none:
          break;
      }
    }
    w.status = err.empty() ? 0 : 1;
    put_error(w, err);
    w.done_seq.store(seq, std::memory_order_release);  // R-DONE
    (void)futex_wake(&w.done_seq, INT_MAX);
    if (quit) std::exit(0);  // exit(), not _exit(): iceoryx deregisters from RouDi in static destructors
  }
}

}  // namespace shmbus::bench
