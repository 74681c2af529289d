// Micro benchmarks of libshmbus's hot paths: SpscRing (copy, zero copy, two-thread throughput), MpmcRing,
// ChunkPool, the topic layer (a message through TopicHandle as the client API drives it), the clock reads
// of the client API, and EventCount, each on structures placed in a real shared-memory Segment.
//
// Build from the release preset (no fault points, -march=native) and run pinned where it matters:
//   cmake --preset release && cmake --build build/release -j2 && build/release/bench/shmbus-core-bench
//
// Every benchmark reports wall-clock time (UseRealTime) and items/s; an "item" is one message (push + pop),
// one allocate + release, or one notify. The two-thread benchmarks pin the benchmark thread to CPU 0 and
// its partner to CPU 1; when pinning is refused they run unpinned and say so in their label. On a 2-vCPU
// guest the /threads:4 runs are oversubscribed on purpose: they show what preemption in the middle of an
// operation costs a lock-free structure, not scaling. With threads, "Time" is wall time over the
// iterations of all threads together (1 / items_per_second).
//
// The host of this 2-vCPU KVM guest takes CPU time away from busy vCPUs (after a few seconds of both being
// busy each may get a third to a half of a CPU), so the two-thread numbers vary up to 10x between runs. The
// CPU column tells: the throughput benchmarks report the benchmark thread's CPU time, which falls well below
// Real when throttled; the /threads:N benchmarks report the sum over threads, which is min(N, 2) x Real only
// when the threads really ran at the same time (near 1 x Real, they took turns and measured the uncontended
// path). Compare variants only within one run, with repetitions interleaved (one command line):
//   shmbus-core-bench --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true
//                     --benchmark_min_time=0.2 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "shmbus/chunk_pool.hpp"
#include "shmbus/detail/stream_port.hpp"
#include "shmbus/detail/stream_supervisor.hpp"
#include "shmbus/eventcount.hpp"
#include "shmbus/mpmc_ring.hpp"
#include "shmbus/segment.hpp"
#include "shmbus/spsc_ring.hpp"
#include "shmbus/topic.hpp"

namespace {

using shmbus::ChunkPool;
using shmbus::EventCount;
using shmbus::EventCountShared;
using shmbus::kCacheLine;
using shmbus::MpmcRing;
using shmbus::RingStatus;
using shmbus::Segment;
using shmbus::SlotView;
using shmbus::SpscRing;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "shmbus-core-bench: %s\n", what.c_str());
  std::exit(1);
}

// A uniquely named segment that is unlinked (and unmapped) when the benchmark ends, so an aborted run
// leaves at most one file in /dev/shm and a normal run none.
class BenchSegment {
 public:
  explicit BenchSegment(std::size_t bytes) {
    static std::atomic<unsigned> counter{0};
    name_ = "bench-core-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1));
    auto seg = Segment::create(name_, {.size = bytes + 64 * 1024, .kind = "bench"});
    if (!seg) die(seg.error().message());
    seg_ = std::move(*seg);
  }
  BenchSegment(const BenchSegment&) = delete;
  BenchSegment& operator=(const BenchSegment&) = delete;
  ~BenchSegment() {
    seg_.unmap();
    if (auto st = Segment::remove(name_); !st) std::fprintf(stderr, "%s\n", st.error().message().c_str());
  }
  Segment& get() { return seg_; }

 private:
  std::string name_;
  Segment seg_;
};

template <typename T>
T must(shmbus::Result<T> r) {
  if (!r) die(r.error().message());
  return std::move(*r);
}

SpscRing place_spsc(BenchSegment& seg, std::uint64_t slot_size, std::uint64_t capacity,
                    shmbus::Ref<shmbus::SpscRingShared>* ref_out = nullptr) {
  auto ref = must(SpscRing::place(seg.get(), {.capacity = capacity, .slot_size = slot_size}));
  if (ref_out != nullptr) *ref_out = ref;
  return must(SpscRing::attach(seg.get(), ref));
}

inline void cpu_relax() {
  __builtin_ia32_pause();
}

// Pins the calling thread to one CPU for its lifetime and restores the previous mask at scope exit (the
// benchmark thread is reused by the next benchmark).
class ScopedPin {
 public:
  explicit ScopedPin(int cpu) {
    saved_ok_ = pthread_getaffinity_np(pthread_self(), sizeof saved_, &saved_) == 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pinned_ = pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
  }
  ScopedPin(const ScopedPin&) = delete;
  ScopedPin& operator=(const ScopedPin&) = delete;
  ~ScopedPin() {
    if (pinned_ && saved_ok_) pthread_setaffinity_np(pthread_self(), sizeof saved_, &saved_);
  }
  bool pinned() const { return pinned_; }

 private:
  cpu_set_t saved_{};
  bool saved_ok_ = false;
  bool pinned_ = false;
};

// ---- SpscRing, one thread ---------------------------------------------------------------------------

// try_push + try_pop of one N-byte message: the cost of the two copies and the index bookkeeping, with
// every line in this core's cache (nothing crosses cores).
void BM_SpscRing_PushPop(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  BenchSegment seg(SpscRing::footprint({.capacity = 1024, .slot_size = n}));
  SpscRing ring = place_spsc(seg, n, 1024);
  std::vector<std::byte> in(n, std::byte{0x5a}), out(n);
  std::size_t size = 0;
  std::uint64_t failures = 0;
  for (auto _ : state) {
    failures += ring.try_push(in.data(), n) != RingStatus::ok;
    failures += ring.try_pop(out.data(), out.size(), &size) != RingStatus::ok;
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  if (failures != 0) state.SkipWithError("a push or pop failed on a ring that can neither fill nor empty");
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_SpscRing_PushPop)->Arg(8)->Arg(64)->Arg(1024)->UseRealTime();

// try_claim + commit / try_peek + release: the producer writes all N bytes in place and the consumer reads
// the first and the last 8 of them in place (no copy out).
void BM_SpscRing_ZeroCopy(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  BenchSegment seg(SpscRing::footprint({.capacity = 1024, .slot_size = n}));
  SpscRing ring = place_spsc(seg, n, 1024);
  std::uint64_t failures = 0;
  std::uint64_t i = 0;
  for (auto _ : state) {
    std::byte* p = ring.try_claim();
    if (p == nullptr) {
      ++failures;
      continue;
    }
    std::memset(p, static_cast<int>(i & 0xff), n);
    ring.commit(static_cast<std::uint32_t>(n));
    SlotView v;
    if (!ring.try_peek(v)) {
      ++failures;
      continue;
    }
    std::uint64_t first = 0, last = 0;
    std::memcpy(&first, v.data, sizeof first);
    std::memcpy(&last, v.data + v.size - sizeof last, sizeof last);
    benchmark::DoNotOptimize(first);
    benchmark::DoNotOptimize(last);
    ring.release();
    ++i;
  }
  if (failures != 0) state.SkipWithError("a claim or peek failed on a ring that can neither fill nor empty");
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_SpscRing_ZeroCopy)->Arg(8)->Arg(64)->Arg(1024)->UseRealTime();

// ---- SpscRing, two threads ----------------------------------------------------------------------------

// One iteration = kThroughputBatch messages pushed by the benchmark thread (CPU 0) and popped with
// pop_batch by a consumer thread (CPU 1), timed until the consumer has seen the last one. The consumer
// checks the sequence stamp of every message. Each thread attaches its own SpscRing handle: a handle keeps
// the producer's and the consumer's local indices side by side, so one handle shared by both threads would
// put a falsely shared line in the middle of the hot path (see BM_SpscRing_Throughput_SharedHandle).
constexpr std::uint64_t kThroughputBatch = 1 << 20;

void run_throughput(benchmark::State& state, bool shared_handle) {
  const auto n = static_cast<std::size_t>(state.range(0));
  BenchSegment seg(SpscRing::footprint({.capacity = 1024, .slot_size = n}));
  shmbus::Ref<shmbus::SpscRingShared> ref;
  SpscRing producer = place_spsc(seg, n, 1024, &ref);

  // The consumer's progress, alone on its line: written once per batch, read by the producer only at the
  // end of an iteration. Release/acquire: the producer's wait ends after the consumer's reads.
  struct alignas(kCacheLine) Progress {
    std::atomic<std::uint64_t> consumed{0};
    std::atomic<bool> stop{false};
  } progress;
  std::uint64_t errors = 0;
  bool consumer_pinned = false;

  std::thread consumer([&] {
    ScopedPin pin(1);
    consumer_pinned = pin.pinned();
    // The consumer's own handle lives on the consumer's stack: two handles side by side on one stack
    // would share a line just as one shared handle does.
    SpscRing own = must(SpscRing::attach(seg.get(), ref));
    SpscRing& consumer_ring = shared_handle ? producer : own;
    std::uint64_t expect = 0;
    std::uint64_t bad = 0;
    alignas(64) std::byte out[64];
    auto on_message = [&](const SlotView& v) {
      std::memcpy(out, v.data, v.size);
      std::uint64_t stamp;
      std::memcpy(&stamp, out, sizeof stamp);
      bad += stamp != expect;
      ++expect;
    };
    // Relaxed stop: it only ends the loop; the final count was already acknowledged through `consumed`.
    while (!progress.stop.load(std::memory_order_relaxed)) {
      if (consumer_ring.pop_batch(on_message, 256) != 0)
        progress.consumed.store(expect, std::memory_order_release);
      else
        cpu_relax();
    }
    errors = bad;
  });

  bool producer_pinned = false;
  {
    ScopedPin pin(0);
    producer_pinned = pin.pinned();
    alignas(64) std::byte msg[64] = {};
    std::uint64_t sent = 0;
    for (auto _ : state) {
      for (std::uint64_t k = 0; k < kThroughputBatch; ++k, ++sent) {
        std::memcpy(msg, &sent, sizeof sent);
        while (producer.try_push(msg, n) != RingStatus::ok) cpu_relax();
      }
      while (progress.consumed.load(std::memory_order_acquire) != sent) cpu_relax();
    }
  }
  progress.stop.store(true, std::memory_order_relaxed);
  consumer.join();

  if (errors != 0) state.SkipWithError("the consumer saw messages out of order");
  state.SetLabel(producer_pinned && consumer_pinned ? "cpu0->cpu1" : "unpinned");
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kThroughputBatch));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(kThroughputBatch * n));
}

void BM_SpscRing_Throughput(benchmark::State& state) {
  run_throughput(state, false);
}
BENCHMARK(BM_SpscRing_Throughput)->Arg(8)->Arg(64)->UseRealTime();

// The same with one SpscRing handle used by both threads: a measurement of the false sharing in the
// process-local handle (head_ / cached_tail_ / tail_ and the geometry the consumer reads share a line).
void BM_SpscRing_Throughput_SharedHandle(benchmark::State& state) {
  run_throughput(state, true);
}
BENCHMARK(BM_SpscRing_Throughput_SharedHandle)->Arg(8)->UseRealTime();

// ---- MpmcRing and ChunkPool, 1..4 threads -------------------------------------------------------------

// Shared between the benchmark threads of one run. Thread 0 builds it before the loop and tears it down
// after; Google Benchmark's start and stop barriers order that against the other threads' loops.
struct SharedFixture {
  std::optional<BenchSegment> seg;
  MpmcRing ring;
  ChunkPool pool;
};
SharedFixture g_fixture;

// Each thread pushes its id then pops one value on a single shared ring. A pop never finds the ring empty
// (every popper pushed first), so any failure is a bug and fails the benchmark.
void BM_MpmcRing_PushPop(benchmark::State& state) {
  if (state.thread_index() == 0) {
    g_fixture.seg.emplace(MpmcRing::footprint({.capacity = 1024}));
    auto ref = must(MpmcRing::place(g_fixture.seg->get(), {.capacity = 1024}));
    g_fixture.ring = must(MpmcRing::attach(g_fixture.seg->get(), ref));
  }
  const auto id = static_cast<std::uint32_t>(state.thread_index());
  std::uint64_t failures = 0;
  for (auto _ : state) {
    failures += g_fixture.ring.try_push(id) != RingStatus::ok;
    std::uint32_t v = 0;
    failures += g_fixture.ring.try_pop(v) != RingStatus::ok;
    benchmark::DoNotOptimize(v);
  }
  if (failures != 0)
    state.SkipWithError("try_push or try_pop failed on a ring that can neither fill nor empty");
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) g_fixture.seg.reset();
}
BENCHMARK(BM_MpmcRing_PushPop)->ThreadRange(1, 4)->UseRealTime();

void setup_pool(std::vector<std::uint64_t> rings) {
  shmbus::ChunkPoolOptions o{.chunk_count = 256, .chunk_size = 64, .ring_capacities = std::move(rings)};
  g_fixture.seg.emplace(ChunkPool::footprint(o));
  auto ref = must(ChunkPool::place(g_fixture.seg->get(), o));
  g_fixture.pool = must(ChunkPool::attach(g_fixture.seg->get(), ref));
  (void)shmbus::OwnerId::self();  // the first call reads /proc; keep it out of the timed loop
}

// try_allocate + release of one 64-byte chunk: two owner-word hand-overs and two free-ring operations.
void BM_ChunkPool_AllocRelease(benchmark::State& state) {
  if (state.thread_index() == 0) setup_pool({});
  (void)shmbus::OwnerId::self();
  std::uint64_t failures = 0;
  for (auto _ : state) {
    std::uint32_t idx = 0;
    if (g_fixture.pool.try_allocate(idx) != RingStatus::ok) {
      ++failures;
      continue;
    }
    benchmark::DoNotOptimize(idx);
    g_fixture.pool.release(idx);
  }
  if (failures != 0) state.SkipWithError("try_allocate found no free chunk in a pool of 256");
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) g_fixture.seg.reset();
}
BENCHMARK(BM_ChunkPool_AllocRelease)->ThreadRange(1, 4)->UseRealTime();

// The whole life of a message chunk in one thread: allocate, hand to message ring 1, take it back, free it.
void BM_ChunkPool_QueueRoundTrip(benchmark::State& state) {
  setup_pool({256});
  std::uint64_t failures = 0;
  for (auto _ : state) {
    std::uint32_t idx = 0, got = 0;
    if (g_fixture.pool.try_allocate(idx) != RingStatus::ok) {
      ++failures;
      continue;
    }
    failures += g_fixture.pool.try_push(1, idx) != RingStatus::ok;
    failures += g_fixture.pool.try_pop(1, got) != RingStatus::ok;
    failures += got != idx;
    g_fixture.pool.release(got);
  }
  if (failures != 0) state.SkipWithError("a pool operation failed or returned the wrong chunk");
  state.SetItemsProcessed(state.iterations());
  g_fixture.seg.reset();
}
BENCHMARK(BM_ChunkPool_QueueRoundTrip)->UseRealTime();

// ---- the topic layer: what Publisher::publish(bytes) and Subscriber::try_receive() drive ----------------

// One stream topic (depth 8, 64-byte messages) with one publisher and one subscriber slot of this
// process connected, its segment unlinked at once.
struct TopicFixture {
  std::shared_ptr<shmbus::TopicHandle> t;
  std::unique_ptr<shmbus::detail::StreamPublisher> pub;
  std::unique_ptr<shmbus::detail::StreamSubscriber> sub;
  explicit TopicFixture(std::size_t max_size) {
    static std::atomic<std::uint64_t> id{1};
    const std::string domain = "bt" + std::to_string(::getpid());
    shmbus::TopicOptions o;
    o.depth = 8;
    o.max_size = max_size;
    o.max_subscribers = 1;
    o.max_publishers = 1;
    const std::uint64_t my = id.fetch_add(1);
    t = std::make_shared<shmbus::TopicHandle>(
        must(shmbus::TopicHandle::create(domain, my, "bench.topic", o)));
    (void)shmbus::TopicHandle::remove(domain, my);
    shmbus::detail::StreamSupervisor sup(*t);
    const std::uint32_t s = must(sup.attach_subscriber(shmbus::OwnerId::self(), 1));
    const std::uint32_t p = must(sup.attach_publisher(shmbus::OwnerId::self(), 2, 7));
    sub = must(shmbus::detail::StreamSubscriber::attach(t, s));
    pub = must(shmbus::detail::StreamPublisher::attach(t, p, false));
  }
};

// One message through a stream connection in one thread, as Publisher::try_publish and
// Subscriber::try_receive move it: publish into the connection's slot, then take it out. Arg: payload
// bytes (64 travels inline in the slot; 1024 through a chunk that comes back on the completion ring).
void BM_Stream_PublishReceive(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  TopicFixture f(n);
  std::vector<std::byte> msg(n, std::byte{1});
  shmbus::detail::Received r;
  std::uint64_t failures = 0;
  for (auto _ : state) {
    if (f.pub->publish(msg.data(), n, {}, shmbus::Deadline::now()) != shmbus::detail::SendStatus::ok)
      ++failures;
    if (!f.sub->try_receive(r)) {
      ++failures;
      continue;
    }
    benchmark::DoNotOptimize(r.bytes[0]);
    if (r.is_chunk) f.sub->release(r.conn, r.chunk);
  }
  if (failures != 0) state.SkipWithError("a stream operation failed");
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Stream_PublishReceive)->Arg(64)->Arg(1024)->UseRealTime();

std::uint64_t realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<std::uint64_t>(ts.tv_nsec);
}

// The clock reads a publisher makes per message when asked for timestamps.
void BM_Clock_Realtime(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(realtime_ns());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Clock_Realtime)->UseRealTime();

void BM_Clock_SteadyNow(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(std::chrono::steady_clock::now());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Clock_SteadyNow)->UseRealTime();

// Cheaper stamps a publisher could take instead: the coarse real-time clock (jiffy resolution) and the TSC.
void BM_Clock_RealtimeCoarse(benchmark::State& state) {
  for (auto _ : state) {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    benchmark::DoNotOptimize(ts);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Clock_RealtimeCoarse)->UseRealTime();

void BM_Clock_Rdtsc(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(__builtin_ia32_rdtsc());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Clock_Rdtsc)->UseRealTime();

// ---- EventCount and the futex -------------------------------------------------------------------------

struct EventCountFixture {
  BenchSegment seg{sizeof(EventCountShared) + kCacheLine};
  EventCountShared* shared = nullptr;
  EventCountFixture() {
    auto ref = must(seg.get().allocate<EventCountShared>(1, kCacheLine));
    shared = seg.get().at(ref);
    EventCount::init(shared);
  }
};

// notify() with nobody waiting: a seq_cst fence and one load, no syscall.
void BM_EventCount_Notify_NoSleeper(benchmark::State& state) {
  EventCountFixture f;
  EventCount ec(f.shared);
  for (auto _ : state) ec.notify();
  state.counters["syscalls/notify"] = static_cast<double>(f.shared->wakes.load(std::memory_order_relaxed)) /
                                      static_cast<double>(state.iterations());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EventCount_Notify_NoSleeper)->UseRealTime();

// notify() while a thread on the other CPU sits in FUTEX_WAIT (prepare_wait + wait, in a loop): a notify
// that finds it counted and armed clears the bit, bumps seq and calls FUTEX_WAKE; the notifies that follow
// before it re-arms make no syscall ("Armed" in eventcount.hpp). syscalls/notify says how many notifies
// woke it.
void BM_EventCount_Notify_WithSleeper(benchmark::State& state) {
  EventCountFixture f;
  EventCount ec(f.shared);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> wakeups{0};
  bool sleeper_pinned = false;
  std::thread sleeper([&] {
    ScopedPin pin(1);
    sleeper_pinned = pin.pinned();
    EventCount w(f.shared);
    std::uint64_t n = 0;
    for (;;) {
      const std::uint32_t key = w.prepare_wait();  // W1, W2
      // W3, seq_cst: ordered after W1, so a stop published before the notifier's fence (N2) is seen here
      // or the notifier sees this sleeper and wakes it.
      if (stop.load(std::memory_order_seq_cst)) {
        w.cancel_wait();
        break;
      }
      (void)w.wait(key, std::chrono::seconds(1));  // W4
      ++n;
    }
    wakeups.store(n, std::memory_order_relaxed);
  });
  // Start timing only once the sleeper is counted.
  while (f.shared->futex_sleepers.load(std::memory_order_acquire) == 0) cpu_relax();

  bool notifier_pinned = false;
  std::uint32_t wakes_before = 0;
  {
    ScopedPin pin(0);
    notifier_pinned = pin.pinned();
    wakes_before = f.shared->wakes.load(std::memory_order_relaxed);
    for (auto _ : state) ec.notify();
  }
  const std::uint32_t wakes = f.shared->wakes.load(std::memory_order_relaxed) - wakes_before;
  stop.store(true, std::memory_order_seq_cst);
  ec.notify();
  sleeper.join();

  const auto iters = static_cast<double>(state.iterations());
  state.counters["syscalls/notify"] = wakes / iters;
  state.counters["wakeups/notify"] = static_cast<double>(wakeups.load(std::memory_order_relaxed)) / iters;
  state.SetLabel(notifier_pinned && sleeper_pinned ? "cpu0, sleeper cpu1" : "unpinned");
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EventCount_Notify_WithSleeper)->UseRealTime();

// await() on a condition that is already true, with spin = 0 (the blocking subscriber's call). The ready()
// check itself is a load; anything above ~1 ns is await's own bookkeeping before its first check.
void BM_EventCount_Await_Ready(benchmark::State& state) {
  EventCountFixture f;
  EventCount ec(f.shared);
  std::uint64_t calls = 0;
  for (auto _ : state) {
    const bool ok = ec.await(
        [&] {
          ++calls;
          return true;
        },
        std::chrono::seconds(1), 0);
    benchmark::DoNotOptimize(ok);
  }
  benchmark::DoNotOptimize(calls);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EventCount_Await_Ready)->UseRealTime();

// Reference: FUTEX_WAKE (shared, as EventCount issues it) on a word in the segment with nobody waiting.
// This is what notify() would cost on every call if it did not check the sleeper count first.
void BM_Baseline_FutexWake(benchmark::State& state) {
  EventCountFixture f;
  for (auto _ : state) benchmark::DoNotOptimize(shmbus::futex_wake(&f.shared->seq, 1));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Baseline_FutexWake)->UseRealTime();

// Reference: the cheapest syscall (getppid), to separate the kernel entry from the futex hash lookup.
void BM_Baseline_Syscall(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(::syscall(SYS_getppid));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Baseline_Syscall)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
