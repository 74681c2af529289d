// Multi-process stress tests: the parent creates and publishes one segment, then forks producers and
// consumers that each open it by name (Segment::open + attach, as unrelated processes would) and hammer
// one structure at once. Consumers log what they received into a results area in the same segment; the
// parent, once every child has exited, asserts no loss, no duplicate and per-producer FIFO.
//
// Children never use gtest: they report through their exit code (kChild* below) and the parent asserts.
// Every child loop has a deadline, and the parent waits with a timeout, so a wedged ring fails the test
// instead of hanging it.
#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "shmbus/chunk_pool.hpp"
#include "shmbus/mpmc_ring.hpp"
#include "shmbus/spsc_ring.hpp"
#include "test_util.hpp"

namespace shmbus {
namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kChildDeadline = std::chrono::seconds(90);  // a child gives up after this (hangs only)
constexpr auto kWaitTimeout = std::chrono::seconds(100);   // the parent kills a child after this
constexpr std::uint32_t kMaxProcs = 8;

// Child exit codes.
enum : int {
  kChildOk = 0,
  kChildOpenFailed = 10,
  kChildAttachFailed = 11,
  kChildTimedOut = 12,
  kChildBadPayload = 13,
  kChildLogFull = 14,
  kChildOutOfOrder = 15,
};

std::string exit_text(const test::ChildExit& e) {
  if (e.timed_out) return "still running at the parent's timeout (killed)";
  if (!e.exited) return "killed by signal " + std::to_string(e.signal);
  switch (e.code) {
    case kChildOk:
      return "exit 0";
    case kChildOpenFailed:
      return "Segment::open failed";
    case kChildAttachFailed:
      return "attach failed";
    case kChildTimedOut:
      return "gave up at its deadline (no progress)";
    case kChildBadPayload:
      return "saw a torn or foreign payload";
    case kChildLogFull:
      return "received more messages than were sent";
    case kChildOutOfOrder:
      return "received messages out of order";
    default:
      return "exit " + std::to_string(e.code);
  }
}

std::string census_text(const PoolCensus& c) {
  std::string s = "free=" + std::to_string(c.free) + " queued=" + std::to_string(c.queued) +
                  " owned=" + std::to_string(c.owned);
  for (std::size_t i = 0; i < c.violations.size() && i < 10; ++i) s += "\n  " + c.violations[i];
  return s;
}

// The root of the test segment: where the structures are, the start barrier, and the consumers' logs.
struct alignas(kCacheLine) Root {
  Ref<ChunkPoolShared> pool;
  Ref<MpmcRingShared> ring;
  Ref<SpscRingShared> spsc;
  Ref<std::uint64_t> logs;  // consumers * log_capacity entries of (producer << 32 | seq)
  std::uint64_t log_capacity;
  std::uint32_t producers, consumers, per_producer;
  alignas(kCacheLine) std::atomic<std::uint32_t> go;        // set by the parent once every child is forked
  alignas(kCacheLine) std::atomic<std::uint64_t> consumed;  // messages popped by all consumers together
  alignas(kCacheLine) std::atomic<std::uint64_t> log_size[kMaxProcs];  // entries in each consumer's log
};
static_assert(std::is_standard_layout_v<Root>);

struct Layout {
  bool pool = false, ring = false, spsc = false;
  ChunkPoolOptions pool_opts{.chunk_count = 64, .chunk_size = 64, .ring_capacities = {32}};
  MpmcRingOptions ring_opts{.capacity = 64};
  SpscRingOptions spsc_opts{.capacity = 32, .slot_size = 120};
};

// The parent's view: the segment, built and published, with its name removed at the end.
struct Fixture {
  test::ScopedName name;
  Segment seg;
  Root* root = nullptr;

  Fixture(const std::string& tag, const Layout& l, std::uint32_t producers, std::uint32_t consumers,
          std::uint32_t per_producer)
      : name(test::unique_name(tag)) {
    const std::uint64_t log_capacity = std::uint64_t{producers} * per_producer;
    std::size_t size = sizeof(Root) + kCacheLine + consumers * log_capacity * 8 + 4096;
    if (l.pool) size += ChunkPool::footprint(l.pool_opts);
    if (l.ring) size += MpmcRing::footprint(l.ring_opts);
    if (l.spsc) size += SpscRing::footprint(l.spsc_opts);
    seg = Segment::create(name.name, {.size = size, .kind = "mpstress"}).value();
    auto r = seg.allocate<Root>(1, kCacheLine).value();
    root = seg.at(r);
    if (l.pool) root->pool = ChunkPool::place(seg, l.pool_opts).value();
    if (l.ring) root->ring = MpmcRing::place(seg, l.ring_opts).value();
    if (l.spsc) root->spsc = SpscRing::place(seg, l.spsc_opts).value();
    root->logs = seg.allocate<std::uint64_t>(consumers * log_capacity, kCacheLine).value();
    root->log_capacity = log_capacity;
    root->producers = producers;
    root->consumers = consumers;
    root->per_producer = per_producer;
    seg.set_root(r);
    seg.publish();
  }
};

// What a child has after opening the segment by name.
struct ChildView {
  Segment seg;
  Root* root = nullptr;
  std::uint64_t* log(std::uint32_t consumer) const {
    return seg.at(root->logs, root->consumers * root->log_capacity) + consumer * root->log_capacity;
  }
  // Waits for the parent's go; false at the deadline.
  bool wait_go(Clock::time_point deadline) const {
    while (root->go.load(std::memory_order_acquire) == 0) {
      if (Clock::now() > deadline) return false;
      sched_yield();
    }
    return true;
  }
};

int open_view(const std::string& name, ChildView& v) {
  auto seg = Segment::open(name, {.expect_kind = "mpstress"});
  if (!seg) return kChildOpenFailed;
  v.seg = std::move(*seg);
  v.root = v.seg.root<Root>();
  return kChildOk;
}

// Forks the producers and the consumers, releases them together, waits for all and asserts they exited 0.
void run_children(Fixture& f, std::uint32_t producers, std::uint32_t consumers,
                  const std::function<int(std::uint32_t)>& produce,
                  const std::function<int(std::uint32_t)>& consume) {
  std::vector<std::pair<std::string, pid_t>> kids;
  for (std::uint32_t p = 0; p < producers; ++p)
    kids.emplace_back("producer " + std::to_string(p), test::fork_child([&, p] { return produce(p); }));
  for (std::uint32_t c = 0; c < consumers; ++c)
    kids.emplace_back("consumer " + std::to_string(c), test::fork_child([&, c] { return consume(c); }));
  f.root->go.store(1, std::memory_order_release);
  for (auto& [who, pid] : kids) {
    if (pid <= 0) {
      ADD_FAILURE() << "fork failed for " << who;
      continue;
    }
    const auto e = test::wait_child(pid, kWaitTimeout);
    EXPECT_TRUE(e.exited && e.code == kChildOk) << who << ": " << exit_text(e);
  }
}

// Reads the consumers' logs and asserts: every (producer, seq) exactly once, and in each consumer's log
// the sequence of each producer strictly increasing.
void check_logs(const Fixture& f) {
  const Root& r = *f.root;
  const std::uint64_t* logs = f.seg.at(r.logs, r.consumers * r.log_capacity);
  std::vector<std::vector<std::uint8_t>> seen(r.producers, std::vector<std::uint8_t>(r.per_producer, 0));
  std::size_t errors = 0;
  auto report = [&](const std::string& what) {
    if (++errors <= 10) ADD_FAILURE() << what;
  };
  std::uint64_t total = 0;
  for (std::uint32_t c = 0; c < r.consumers; ++c) {
    const std::uint64_t n = r.log_size[c].load(std::memory_order_acquire);
    total += n;
    std::vector<std::int64_t> last(r.producers, -1);
    for (std::uint64_t k = 0; k < n; ++k) {
      const auto p = static_cast<std::uint32_t>(logs[c * r.log_capacity + k] >> 32);
      const auto s = static_cast<std::uint32_t>(logs[c * r.log_capacity + k]);
      if (p >= r.producers || s >= r.per_producer) {
        report("consumer " + std::to_string(c) + " logged a foreign message (" + std::to_string(p) + ", " +
               std::to_string(s) + ")");
        continue;
      }
      if (static_cast<std::int64_t>(s) <= last[p])
        report("consumer " + std::to_string(c) + " got producer " + std::to_string(p) + "'s message " +
               std::to_string(s) + " after " + std::to_string(last[p]) + " (per-producer FIFO broken)");
      last[p] = s;
      if (seen[p][s]++ != 0)
        report("producer " + std::to_string(p) + "'s message " + std::to_string(s) + " was delivered twice");
    }
  }
  for (std::uint32_t p = 0; p < r.producers; ++p)
    for (std::uint32_t s = 0; s < r.per_producer; ++s)
      if (seen[p][s] == 0)
        report("producer " + std::to_string(p) + "'s message " + std::to_string(s) + " was lost");
  EXPECT_EQ(total, std::uint64_t{r.producers} * r.per_producer) << "messages logged by all consumers";
  EXPECT_EQ(errors, 0u) << "delivery errors (the first 10 are listed above)";
}

// A consumer's common loop: pop with `pop(out)` (true when it got one) until all messages are consumed,
// logging each (producer, seq). `pop` returns -1 for nothing, 0 for a message, or a kChild* error.
template <typename Pop>
int consume_loop(ChildView& v, std::uint32_t c, Pop pop) {
  const auto deadline = Clock::now() + kChildDeadline;
  if (!v.wait_go(deadline)) return kChildTimedOut;
  Root& r = *v.root;
  const std::uint64_t total = std::uint64_t{r.producers} * r.per_producer;
  std::uint64_t* log = v.log(c);
  std::uint64_t n = 0;
  int rc = kChildOk;
  while (r.consumed.load(std::memory_order_relaxed) < total) {
    std::uint64_t entry;
    const int got = pop(entry);
    if (got > 0) {
      rc = got;
      break;
    }
    if (got == 0) {
      if (n == r.log_capacity) {
        rc = kChildLogFull;
        break;
      }
      log[n++] = entry;
      r.consumed.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (Clock::now() > deadline) {
      rc = kChildTimedOut;
      break;
    }
    sched_yield();
  }
  // Release: the parent reads the log after waitpid anyway; this just names the hand-over.
  r.log_size[c].store(n, std::memory_order_release);
  return rc;
}

struct Shape {
  std::uint32_t producers, consumers, per_producer;
};
std::string shape_name(const ::testing::TestParamInfo<Shape>& info) {
  return std::to_string(info.param.producers) + "x" + std::to_string(info.param.consumers);
}
// Message counts scale down with the number of processes: the machine may have only two cores.
const auto kShapes =
    ::testing::Values(Shape{1, 1, 1500000}, Shape{2, 2, 500000}, Shape{4, 4, 150000}, Shape{8, 1, 100000});

// ---- ChunkPool queue --------------------------------------------------------------------------------

struct Message {
  std::uint32_t producer;
  std::uint32_t seq;
  std::uint64_t check;
};
constexpr std::uint64_t check_word(std::uint32_t producer, std::uint32_t seq) {
  return (std::uint64_t{producer} << 32 | seq) * 0x9e3779b97f4a7c15ULL ^ 0x5bd1e995ULL;
}

class ChunkPoolStressTest : public ::testing::TestWithParam<Shape> {};

TEST_P(ChunkPoolStressTest, ProcessesShareTheQueueWithoutLossDuplicateOrReorder) {
  const Shape sh = GetParam();
  Layout l;
  l.pool = true;
  l.pool_opts = {.chunk_count = 48, .chunk_size = 96, .ring_capacities = {16}};
  Fixture f("mppool", l, sh.producers, sh.consumers, sh.per_producer);
  const std::string name = f.name.name;

  auto attach = [&](ChildView& v, ChunkPool& pool) {
    if (int rc = open_view(name, v); rc != kChildOk) return rc;
    auto p = ChunkPool::attach(v.seg, v.root->pool);
    if (!p) return static_cast<int>(kChildAttachFailed);
    pool = *p;
    return static_cast<int>(kChildOk);
  };
  run_children(
      f, sh.producers, sh.consumers,
      [&](std::uint32_t p) {
        ChildView v;
        ChunkPool pool;
        if (int rc = attach(v, pool); rc != kChildOk) return rc;
        const auto deadline = Clock::now() + kChildDeadline;
        if (!v.wait_go(deadline)) return static_cast<int>(kChildTimedOut);
        for (std::uint32_t s = 0; s < v.root->per_producer; ++s) {
          std::uint32_t idx;
          while (pool.try_allocate(idx) != RingStatus::ok) {
            if (Clock::now() > deadline) return static_cast<int>(kChildTimedOut);
            sched_yield();
          }
          const Message m{p, s, check_word(p, s)};
          std::memcpy(pool.data(idx), &m, sizeof m);
          std::memset(pool.data(idx) + sizeof m, static_cast<int>(s & 0xff), pool.chunk_size() - sizeof m);
          while (pool.try_push(1, idx) != RingStatus::ok) {
            if (Clock::now() > deadline) return static_cast<int>(kChildTimedOut);
            sched_yield();
          }
        }
        return static_cast<int>(kChildOk);
      },
      [&](std::uint32_t c) {
        ChildView v;
        ChunkPool pool;
        if (int rc = attach(v, pool); rc != kChildOk) return rc;
        return consume_loop(v, c, [&](std::uint64_t& entry) {
          std::uint32_t idx;
          if (pool.try_pop(1, idx) != RingStatus::ok) return -1;
          Message m;
          std::memcpy(&m, pool.data(idx), sizeof m);
          bool ok = m.check == check_word(m.producer, m.seq);
          for (std::size_t k = sizeof m; k < pool.chunk_size(); ++k)
            ok = ok && pool.data(idx)[k] == static_cast<std::byte>(m.seq & 0xff);
          pool.release(idx);
          if (!ok) return static_cast<int>(kChildBadPayload);
          entry = std::uint64_t{m.producer} << 32 | m.seq;
          return 0;
        });
      });
  if (HasFailure()) return;
  check_logs(f);
  ChunkPool pool = ChunkPool::attach(f.seg, f.root->pool).value();
  const PoolCensus c = pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.free, pool.chunk_count()) << census_text(c);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ChunkPoolStressTest, kShapes, shape_name);

// ---- plain MpmcRing -----------------------------------------------------------------------------------

class MpmcRingStressTest : public ::testing::TestWithParam<Shape> {};

// Values carry the producer id in the high 8 bits and the sequence in the low 24.
TEST_P(MpmcRingStressTest, ProcessesShareTheRingWithoutLossDuplicateOrReorder) {
  const Shape sh = GetParam();
  Layout l;
  l.ring = true;
  l.ring_opts = {.capacity = 32};
  Fixture f("mpring", l, sh.producers, sh.consumers, sh.per_producer);
  const std::string name = f.name.name;

  auto attach = [&](ChildView& v, MpmcRing& ring) {
    if (int rc = open_view(name, v); rc != kChildOk) return rc;
    auto r = MpmcRing::attach(v.seg, v.root->ring);
    if (!r) return static_cast<int>(kChildAttachFailed);
    ring = *r;
    return static_cast<int>(kChildOk);
  };
  run_children(
      f, sh.producers, sh.consumers,
      [&](std::uint32_t p) {
        ChildView v;
        MpmcRing ring;
        if (int rc = attach(v, ring); rc != kChildOk) return rc;
        const auto deadline = Clock::now() + kChildDeadline;
        if (!v.wait_go(deadline)) return static_cast<int>(kChildTimedOut);
        for (std::uint32_t s = 0; s < v.root->per_producer; ++s) {
          while (ring.try_push(p << 24 | s) != RingStatus::ok) {
            if (Clock::now() > deadline) return static_cast<int>(kChildTimedOut);
            sched_yield();
          }
        }
        return static_cast<int>(kChildOk);
      },
      [&](std::uint32_t c) {
        ChildView v;
        MpmcRing ring;
        if (int rc = attach(v, ring); rc != kChildOk) return rc;
        return consume_loop(v, c, [&](std::uint64_t& entry) {
          std::uint32_t x;
          if (ring.try_pop(x) != RingStatus::ok) return -1;
          entry = std::uint64_t{x >> 24} << 32 | (x & 0xffffff);
          return 0;
        });
      });
  if (HasFailure()) return;
  check_logs(f);
}

INSTANTIATE_TEST_SUITE_P(Shapes, MpmcRingStressTest, kShapes, shape_name);

// ---- SpscRing -----------------------------------------------------------------------------------------

std::uint32_t message_size(std::uint64_t i, std::size_t slot_size) {
  return static_cast<std::uint32_t>(1 + (i * 7919) % slot_size);
}
std::byte message_byte(std::uint64_t i, std::size_t k) {
  return static_cast<std::byte>((i * 131 + k * 7) & 0xff);
}

// One producer process and one consumer process; messages of varying size. The consumer checks order and
// bytes itself (SPSC order is total) and logs each sequence number for the parent.
TEST(SpscRingStressTest, TwoProcessesVaryingSizesArriveInOrderAndIntact) {
  constexpr std::uint32_t kCount = 3000000;
  Layout l;
  l.spsc = true;
  l.spsc_opts = {.capacity = 32, .slot_size = 120};
  Fixture f("mpspsc", l, 1, 1, kCount);
  const std::string name = f.name.name;

  auto attach = [&](ChildView& v, SpscRing& ring) {
    if (int rc = open_view(name, v); rc != kChildOk) return rc;
    auto r = SpscRing::attach(v.seg, v.root->spsc);
    if (!r) return static_cast<int>(kChildAttachFailed);
    ring = *r;
    return static_cast<int>(kChildOk);
  };
  run_children(
      f, 1, 1,
      [&](std::uint32_t) {
        ChildView v;
        SpscRing ring;
        if (int rc = attach(v, ring); rc != kChildOk) return rc;
        const auto deadline = Clock::now() + kChildDeadline;
        if (!v.wait_go(deadline)) return static_cast<int>(kChildTimedOut);
        for (std::uint64_t i = 0; i < kCount; ++i) {
          const std::uint32_t size = message_size(i, ring.slot_size());
          std::byte* p;
          while ((p = ring.try_claim()) == nullptr) {
            if (Clock::now() > deadline) return static_cast<int>(kChildTimedOut);
            sched_yield();
          }
          for (std::size_t k = 0; k < size; ++k) p[k] = message_byte(i, k);
          ring.commit(size, static_cast<std::uint32_t>(i));
        }
        return static_cast<int>(kChildOk);
      },
      [&](std::uint32_t c) {
        ChildView v;
        SpscRing ring;
        if (int rc = attach(v, ring); rc != kChildOk) return rc;
        std::uint64_t next = 0;
        return consume_loop(v, c, [&](std::uint64_t& entry) {
          SlotView sv;
          if (!ring.try_peek(sv)) return -1;
          const std::uint64_t i = next++;
          bool ok = sv.size == message_size(i, ring.slot_size()) && sv.flags == static_cast<std::uint32_t>(i);
          for (std::size_t k = 0; ok && k < sv.size; ++k) ok = sv.data[k] == message_byte(i, k);
          ring.release();
          if (!ok) return static_cast<int>(kChildBadPayload);
          entry = i;  // producer 0, sequence i
          return 0;
        });
      });
  if (HasFailure()) return;
  check_logs(f);
}

}  // namespace
}  // namespace shmbus
