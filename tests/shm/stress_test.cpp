// Thread-level stress tests: several threads of one process hammer one structure in one segment. They
// check what the rings promise under contention (no loss, no duplicate, per-producer FIFO, intact
// payloads) and are also built and run under ThreadSanitizer, so they create no processes.
//
// Every wait has a deadline: a thread that cannot make progress within it gives up, and the test fails
// naming what was still missing instead of hanging.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "shmbus/chunk_pool.hpp"
#include "shmbus/mpmc_ring.hpp"
#include "shmbus/spsc_ring.hpp"
#include "test_util.hpp"

namespace shmbus {
namespace {

using Clock = std::chrono::steady_clock;

// ThreadSanitizer slows these loops by an order of magnitude; keep the same shapes with fewer messages.
#if defined(SHMBUS_TEST_TSAN)
constexpr std::uint32_t kSlowdown = 10;
#else
constexpr std::uint32_t kSlowdown = 1;
#endif

// How long any one thread may wait for progress before the test fails.
constexpr auto kDeadline = std::chrono::seconds(90);  // hang detection only: generous for loaded CI hosts

std::string census_text(const PoolCensus& c) {
  std::string s = "free=" + std::to_string(c.free) + " queued=" + std::to_string(c.queued) +
                  " owned=" + std::to_string(c.owned);
  for (std::size_t i = 0; i < c.violations.size() && i < 10; ++i) s += "\n  " + c.violations[i];
  return s;
}

// A segment that holds one structure, removed when the test ends.
struct SegmentFixture {
  test::ScopedName name;
  Segment seg;

  SegmentFixture(const std::string& tag, std::size_t size) : name(test::unique_name(tag)) {
    seg = Segment::create(name.name, {.size = size + 4096, .kind = "test"}).value();
  }
};

// What the consumers of a multi-producer test received: one log per consumer, in pop order, each entry
// (producer, sequence). check() asserts that every message arrived exactly once and that each consumer
// saw every producer's messages in increasing sequence order (which a linearizable FIFO guarantees).
struct Received {
  std::vector<std::vector<std::pair<std::uint32_t, std::uint32_t>>> logs;

  explicit Received(std::size_t consumers) : logs(consumers) {}

  void check(std::uint32_t producers, std::uint32_t per_producer) const {
    std::vector<std::vector<std::uint8_t>> seen(producers, std::vector<std::uint8_t>(per_producer, 0));
    std::size_t errors = 0;
    auto report = [&](const std::string& what) {
      if (++errors <= 10) ADD_FAILURE() << what;
    };
    for (std::size_t c = 0; c < logs.size(); ++c) {
      std::vector<std::int64_t> last(producers, -1);
      for (auto [p, s] : logs[c]) {
        if (p >= producers || s >= per_producer) {
          report("consumer " + std::to_string(c) + " got a foreign message (" + std::to_string(p) + ", " +
                 std::to_string(s) + ")");
          continue;
        }
        if (static_cast<std::int64_t>(s) <= last[p])
          report("consumer " + std::to_string(c) + " got producer " + std::to_string(p) + "'s message " +
                 std::to_string(s) + " after " + std::to_string(last[p]) + " (per-producer FIFO broken)");
        last[p] = s;
        if (seen[p][s]++ != 0)
          report("producer " + std::to_string(p) + "'s message " + std::to_string(s) +
                 " was delivered twice");
      }
    }
    for (std::uint32_t p = 0; p < producers; ++p)
      for (std::uint32_t s = 0; s < per_producer; ++s)
        if (seen[p][s] == 0)
          report("producer " + std::to_string(p) + "'s message " + std::to_string(s) + " was lost");
    EXPECT_EQ(errors, 0u) << "delivery errors (the first 10 are listed above)";
  }
};

// Runs producers and consumers, each a thread, and joins them all. A thread that hits the deadline sets
// `timed_out` and returns.
template <typename Producer, typename Consumer>
void run_threads(std::uint32_t producers, std::uint32_t consumers, Producer produce, Consumer consume) {
  std::vector<std::thread> threads;
  std::atomic<bool> go{false};
  for (std::uint32_t p = 0; p < producers; ++p)
    threads.emplace_back([&, p] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      produce(p);
    });
  for (std::uint32_t c = 0; c < consumers; ++c)
    threads.emplace_back([&, c] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      consume(c);
    });
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
}

// ---- MpmcRing -------------------------------------------------------------------------------------

// Value layout of the plain-ring tests: producer id in the high 8 bits, sequence in the low 24.
constexpr std::uint32_t pack(std::uint32_t producer, std::uint32_t seq) {
  return producer << 24 | seq;
}

class MpmcRingStressTest : public ::testing::TestWithParam<std::uint64_t> {};

// 4 producers and 4 consumers on a small ring (so it is often full and often empty), starting at
// positions where the lap counter or the 64-bit position wraps during the run.
TEST_P(MpmcRingStressTest, FourByFourLosesNothingAndKeepsPerProducerOrder) {
  constexpr std::uint32_t kProducers = 4, kConsumers = 4;
  const std::uint32_t per_producer = 1000000 / kSlowdown;
  const MpmcRingOptions opts{.capacity = 64, .initial_pos = GetParam()};
  SegmentFixture f("mpmcstress", MpmcRing::footprint(opts));
  auto ref = MpmcRing::place(f.seg, opts).value();
  f.seg.publish();
  MpmcRing ring = MpmcRing::attach(f.seg, ref).value();

  const std::uint64_t total = std::uint64_t{kProducers} * per_producer;
  std::atomic<std::uint64_t> consumed{0};
  std::atomic<bool> timed_out{false};
  Received got(kConsumers);
  const auto deadline = Clock::now() + kDeadline;

  run_threads(
      kProducers, kConsumers,
      [&](std::uint32_t p) {
        for (std::uint32_t s = 0; s < per_producer; ++s) {
          while (ring.try_push(pack(p, s)) != RingStatus::ok) {
            if (Clock::now() > deadline) return timed_out.store(true);
            std::this_thread::yield();
          }
        }
      },
      [&](std::uint32_t c) {
        auto& log = got.logs[c];
        log.reserve(total / 2);
        while (consumed.load(std::memory_order_relaxed) < total) {
          std::uint32_t v;
          if (ring.try_pop(v) == RingStatus::ok) {
            log.emplace_back(v >> 24, v & 0xffffff);
            consumed.fetch_add(1, std::memory_order_relaxed);
          } else {
            if (Clock::now() > deadline) return timed_out.store(true);
            std::this_thread::yield();
          }
        }
      });

  ASSERT_FALSE(timed_out.load()) << "no progress within " << kDeadline.count() << " s; consumed "
                                 << consumed.load() << " of " << total;
  got.check(kProducers, per_producer);
  std::uint32_t v;
  EXPECT_EQ(ring.try_pop(v), RingStatus::empty);
  EXPECT_EQ(ring.size_approx(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Positions, MpmcRingStressTest,
                         ::testing::Values(std::uint64_t{0},
                                           // the 31-bit lap counter wraps (capacity 64: 2^37 positions)
                                           (std::uint64_t{1} << 37) - 1000,
                                           // the 64-bit position wraps
                                           ~std::uint64_t{0} - 1000));

// ---- ChunkPool ------------------------------------------------------------------------------------

// The payload a producer writes into a chunk: who, which, and a check word over both, so a consumer can
// tell an intact message from a torn or stale one.
struct Message {
  std::uint32_t producer;
  std::uint32_t seq;
  std::uint64_t check;
};
constexpr std::uint64_t check_word(std::uint32_t producer, std::uint32_t seq) {
  return (std::uint64_t{producer} << 32 | seq) * 0x9e3779b97f4a7c15ULL ^ 0x5bd1e995ULL;
}

struct PoolFixture : SegmentFixture {
  ChunkPool pool;
  explicit PoolFixture(const ChunkPoolOptions& o) : SegmentFixture("poolstress", ChunkPool::footprint(o)) {
    auto ref = ChunkPool::place(seg, o).value();
    seg.set_root(ref);
    seg.publish();
    pool = ChunkPool::attach(seg, ref).value();
  }
};

// Producers allocate a chunk, write (producer, seq) into it and push it to message ring 1; consumers pop,
// check and release. Fewer chunks than threads could hold and a ring smaller than the pool, so both
// "no free chunk" and "ring full" happen all the time.
TEST(ChunkPoolStressTest, FourByFourQueueLosesNothingAndKeepsPerProducerOrder) {
  constexpr std::uint32_t kProducers = 4, kConsumers = 4;
  const std::uint32_t per_producer = 500000 / kSlowdown;
  PoolFixture f({.chunk_count = 32, .chunk_size = 64, .ring_capacities = {16}});
  ChunkPool& pool = f.pool;

  const std::uint64_t total = std::uint64_t{kProducers} * per_producer;
  std::atomic<std::uint64_t> consumed{0};
  std::atomic<bool> timed_out{false};
  std::atomic<std::uint64_t> bad_payload{0}, bad_flags{0};
  Received got(kConsumers);
  const auto deadline = Clock::now() + kDeadline;

  run_threads(
      kProducers, kConsumers,
      [&](std::uint32_t p) {
        for (std::uint32_t s = 0; s < per_producer; ++s) {
          std::uint32_t idx;
          while (pool.try_allocate(idx) != RingStatus::ok) {
            if (Clock::now() > deadline) return timed_out.store(true);
            std::this_thread::yield();
          }
          const Message m{p, s, check_word(p, s)};
          std::memcpy(pool.data(idx), &m, sizeof m);
          // Fill the rest of the chunk too, so a torn copy would show in the check below.
          std::memset(pool.data(idx) + sizeof m, static_cast<int>(s & 0xff), pool.chunk_size() - sizeof m);
          while (pool.try_push(1, idx) != RingStatus::ok) {
            if (Clock::now() > deadline) return timed_out.store(true);
            std::this_thread::yield();
          }
        }
      },
      [&](std::uint32_t c) {
        auto& log = got.logs[c];
        log.reserve(total / 2);
        while (consumed.load(std::memory_order_relaxed) < total) {
          std::uint32_t idx;
          if (pool.try_pop(1, idx) != RingStatus::ok) {
            if (Clock::now() > deadline) return timed_out.store(true);
            std::this_thread::yield();
            continue;
          }
          Message m;
          std::memcpy(&m, pool.data(idx), sizeof m);
          bool ok = m.check == check_word(m.producer, m.seq);
          for (std::size_t k = sizeof m; k < pool.chunk_size(); ++k)
            ok = ok && pool.data(idx)[k] == static_cast<std::byte>(m.seq & 0xff);
          if (!ok) bad_payload.fetch_add(1);
          const ChunkHeader& h = pool.header(idx);
          if (h.flags.load(std::memory_order_relaxed) != 0 ||
              h.last_ring.load(std::memory_order_relaxed) != 1 ||
              h.deliveries.load(std::memory_order_relaxed) != 1)
            bad_flags.fetch_add(1);
          log.emplace_back(m.producer, m.seq);
          pool.release(idx);
          consumed.fetch_add(1, std::memory_order_relaxed);
        }
      });

  ASSERT_FALSE(timed_out.load()) << "no progress within " << kDeadline.count() << " s; consumed "
                                 << consumed.load() << " of " << total;
  EXPECT_EQ(bad_payload.load(), 0u) << "consumers saw torn or stale payloads";
  EXPECT_EQ(bad_flags.load(), 0u) << "popped chunks with wrong flags/last_ring/deliveries";
  got.check(kProducers, per_producer);
  const PoolCensus c = pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.free, pool.chunk_count()) << census_text(c);
  EXPECT_EQ(c.queued, 0u);
  EXPECT_EQ(c.owned, 0u);
}

// Threads that only allocate and release (the free ring as a shared free list, popped and pushed by
// everyone) never get the same chunk twice at once, and end with every chunk free.
TEST(ChunkPoolStressTest, ConcurrentAllocateReleaseNeverSharesAChunk) {
  constexpr std::uint32_t kThreads = 4;
  const std::uint32_t rounds = 600000 / kSlowdown;
  PoolFixture f({.chunk_count = 8, .chunk_size = 64, .ring_capacities = {}});
  ChunkPool& pool = f.pool;
  // One flag per chunk: set by the thread that holds it. Two holders at once is a double allocation.
  std::vector<std::atomic<std::uint32_t>> holder(pool.chunk_count());
  std::atomic<std::uint64_t> doubles{0};
  std::atomic<bool> timed_out{false};
  const auto deadline = Clock::now() + kDeadline;

  run_threads(
      kThreads, 0,
      [&](std::uint32_t t) {
        // At most 2 held per thread: 4 threads x 2 = 8 chunks, so holding and waiting cannot deadlock.
        std::uint32_t held[2];
        for (std::uint32_t r = 0; r < rounds; ++r) {
          const std::uint32_t n = 1 + (r + t) % 2;
          for (std::uint32_t k = 0; k < n; ++k) {
            while (pool.try_allocate(held[k]) != RingStatus::ok) {
              if (Clock::now() > deadline) {
                for (std::uint32_t j = 0; j < k; ++j) pool.release(held[j]);
                return timed_out.store(true);
              }
              std::this_thread::yield();
            }
            std::uint32_t expect = 0;
            if (!holder[held[k]].compare_exchange_strong(expect, t + 1)) doubles.fetch_add(1);
          }
          for (std::uint32_t k = 0; k < n; ++k) {
            holder[held[k]].store(0);
            pool.release(held[k]);
          }
        }
      },
      [](std::uint32_t) {});

  ASSERT_FALSE(timed_out.load());
  EXPECT_EQ(doubles.load(), 0u) << "a chunk was handed to two holders at once";
  const PoolCensus c = pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.free, pool.chunk_count()) << census_text(c);
}

// ---- SpscRing -------------------------------------------------------------------------------------

// The bytes of message i: its size varies from 1 to slot_size, and every byte depends on i and its offset.
std::uint32_t message_size(std::uint64_t i, std::size_t slot_size) {
  return static_cast<std::uint32_t>(1 + (i * 7919) % slot_size);
}
std::byte message_byte(std::uint64_t i, std::size_t k) {
  return static_cast<std::byte>((i * 131 + k * 7) & 0xff);
}

class SpscRingStressTest : public ::testing::TestWithParam<std::uint64_t> {};

// One producer thread, one consumer thread; the producer alternates copy pushes and claim/commit, the
// consumer alternates copy pops, peek/release and batches. Every message arrives once, in order, with its
// size, flags and bytes.
TEST_P(SpscRingStressTest, OneByOneVaryingSizesArriveInOrderAndIntact) {
  const std::uint64_t count = 4000000 / kSlowdown;
  const SpscRingOptions opts{.capacity = 16, .slot_size = 200, .initial_pos = GetParam()};
  SegmentFixture f("spscstress", SpscRing::footprint(opts));
  auto ref = SpscRing::place(f.seg, opts).value();
  f.seg.publish();
  SpscRing prod = SpscRing::attach(f.seg, ref).value();
  SpscRing cons = SpscRing::attach(f.seg, ref).value();
  const std::size_t slot = prod.slot_size();

  std::atomic<bool> timed_out{false};
  std::uint64_t received = 0, errors = 0;
  std::string first_error;
  const auto deadline = Clock::now() + kDeadline;
  auto fail = [&](const std::string& what) {
    if (errors++ == 0) first_error = what;
  };
  auto check = [&](const std::byte* data, std::uint32_t size, std::uint32_t flags) {
    const std::uint64_t i = received++;
    if (size != message_size(i, slot) || flags != static_cast<std::uint32_t>(i & 0xffff)) {
      fail("message " + std::to_string(i) + ": size " + std::to_string(size) + " flags " +
           std::to_string(flags) + ", expected size " + std::to_string(message_size(i, slot)));
      return;
    }
    for (std::size_t k = 0; k < size; ++k)
      if (data[k] != message_byte(i, k))
        return fail("message " + std::to_string(i) + ": byte " + std::to_string(k));
  };

  run_threads(
      1, 1,
      [&](std::uint32_t) {
        std::byte buf[256];
        for (std::uint64_t i = 0; i < count; ++i) {
          const std::uint32_t size = message_size(i, slot);
          const auto flags = static_cast<std::uint32_t>(i & 0xffff);
          for (;;) {
            if (i % 2 == 0) {
              for (std::size_t k = 0; k < size; ++k) buf[k] = message_byte(i, k);
              if (prod.try_push(buf, size, flags) == RingStatus::ok) break;
            } else if (std::byte* p = prod.try_claim(); p != nullptr) {
              for (std::size_t k = 0; k < size; ++k) p[k] = message_byte(i, k);
              prod.commit(size, flags);
              break;
            }
            if (Clock::now() > deadline) return timed_out.store(true);
            std::this_thread::yield();
          }
        }
      },
      [&](std::uint32_t) {
        std::byte buf[256];
        while (received < count) {
          bool progressed = false;
          switch (received % 3) {
            case 0: {
              std::size_t size;
              std::uint32_t flags;
              if (cons.try_pop(buf, sizeof buf, &size, &flags) == RingStatus::ok) {
                check(buf, static_cast<std::uint32_t>(size), flags);
                progressed = true;
              }
              break;
            }
            case 1: {
              SlotView v;
              if (cons.try_peek(v)) {
                check(v.data, v.size, v.flags);
                cons.release();
                progressed = true;
              }
              break;
            }
            default:
              progressed = cons.pop_batch([&](const SlotView& v) { check(v.data, v.size, v.flags); },
                                          std::min<std::uint64_t>(7, count - received)) != 0;
          }
          if (!progressed) {
            if (Clock::now() > deadline) return timed_out.store(true);
            std::this_thread::yield();
          }
        }
      });

  ASSERT_FALSE(timed_out.load()) << "no progress within " << kDeadline.count() << " s; received " << received
                                 << " of " << count;
  EXPECT_EQ(received, count);
  EXPECT_EQ(errors, 0u) << "first: " << first_error;
  SlotView v;
  EXPECT_FALSE(cons.try_peek(v));
}

INSTANTIATE_TEST_SUITE_P(Positions, SpscRingStressTest,
                         ::testing::Values(std::uint64_t{0}, (std::uint64_t{1} << 32) - 1000,
                                           ~std::uint64_t{0} - 1000));

}  // namespace
}  // namespace shmbus
