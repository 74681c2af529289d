#include "shmbus/chunk_pool.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "test_util.hpp"

namespace shmbus {
namespace {

struct PoolFixture {
  test::ScopedName name{test::unique_name("pool")};
  Segment seg;
  Ref<ChunkPoolShared> ref;
  ChunkPool pool;

  explicit PoolFixture(ChunkPoolOptions o) {
    seg = Segment::create(name.name, {.size = ChunkPool::footprint(o) + 4096, .kind = "pool"}).value();
    ref = ChunkPool::place(seg, o).value();
    seg.set_root(ref);
    seg.publish();
    pool = ChunkPool::attach(seg, ref).value();
  }
};

std::string census_text(const PoolCensus& c) {
  std::string s = "free=" + std::to_string(c.free) + " queued=" + std::to_string(c.queued) +
                  " owned=" + std::to_string(c.owned);
  for (auto& v : c.violations) s += "\n  " + v;
  return s;
}

// An OwnerId that is certainly not running: our pid with another start time.
OwnerId dead_id() {
  return OwnerId::make(getpid(), OwnerId::self().start() + 1);
}

TEST(ChunkPoolTest, FreshPoolHasEveryChunkFree) {
  PoolFixture f({.chunk_count = 10, .chunk_size = 100, .ring_capacities = {8}});
  auto c = f.pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.free, 10u);
  EXPECT_EQ(f.pool.chunk_count(), 10u);
  EXPECT_EQ(f.pool.ring_count(), 2u);
}

TEST(ChunkPoolTest, AllocateAllThenEmptyThenReleaseOne) {
  PoolFixture f({.chunk_count = 5, .chunk_size = 64});
  std::set<std::uint32_t> got;
  std::uint32_t idx;
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(f.pool.try_allocate(idx), RingStatus::ok);
    EXPECT_EQ(f.pool.header(idx).owner.load(), OwnerId::self().value);
    got.insert(idx);
  }
  EXPECT_EQ(got.size(), 5u);
  EXPECT_EQ(f.pool.try_allocate(idx), RingStatus::empty);
  auto c = f.pool.census();
  EXPECT_EQ(c.owned, 5u);
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  f.pool.release(*got.begin());
  ASSERT_EQ(f.pool.try_allocate(idx), RingStatus::ok);
  EXPECT_EQ(idx, *got.begin());
}

TEST(ChunkPoolTest, ChunkDataIsDistinctAndAligned) {
  PoolFixture f({.chunk_count = 4, .chunk_size = 100});
  for (std::uint32_t i = 0; i < 4; ++i) {
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f.pool.data(i)) % kHwLine, 0u);
    if (i > 0) {
      EXPECT_GE(f.pool.data(i) - f.pool.data(i - 1), 100);
    }
  }
  EXPECT_EQ(f.pool.chunk_size(), 100u);
}

TEST(ChunkPoolTest, PushPopHandsOverOwnershipAndPayload) {
  PoolFixture f({.chunk_count = 4, .chunk_size = 64, .ring_capacities = {4}});
  std::uint32_t a;
  ASSERT_EQ(f.pool.try_allocate(a), RingStatus::ok);
  std::memcpy(f.pool.data(a), "payload", 8);
  ASSERT_EQ(f.pool.try_push(1, a), RingStatus::ok);
  EXPECT_TRUE(ChunkPool::is_queued(f.pool.header(a).owner.load()));
  auto c = f.pool.census();
  EXPECT_EQ(c.queued, 1u);
  std::uint32_t b;
  ASSERT_EQ(f.pool.try_pop(1, b), RingStatus::ok);
  EXPECT_EQ(a, b);
  EXPECT_STREQ(reinterpret_cast<char*>(f.pool.data(b)), "payload");
  EXPECT_EQ(f.pool.header(b).last_ring.load(), 1u);
  EXPECT_EQ(f.pool.header(b).deliveries.load(), 1u);
  EXPECT_EQ(f.pool.try_pop(1, b), RingStatus::empty);
  f.pool.release(a);
  c = f.pool.census();
  EXPECT_EQ(c.free, 4u);
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
}

TEST(ChunkPoolTest, AllocateResetsTheBookkeeping) {
  PoolFixture f({.chunk_count = 1, .chunk_size = 8, .ring_capacities = {2}});
  std::uint32_t a;
  ASSERT_EQ(f.pool.try_allocate(a), RingStatus::ok);
  f.pool.header(a).flags.store(kChunkRedelivered);
  ASSERT_EQ(f.pool.try_push(1, a), RingStatus::ok);
  ASSERT_EQ(f.pool.try_pop(1, a), RingStatus::ok);
  f.pool.release(a);
  ASSERT_EQ(f.pool.try_allocate(a), RingStatus::ok);
  EXPECT_EQ(f.pool.header(a).flags.load(), 0u);
  EXPECT_EQ(f.pool.header(a).last_ring.load(), kNoRing);
  EXPECT_EQ(f.pool.header(a).deliveries.load(), 0u);
}

TEST(ChunkPoolTest, PushToFullRingKeepsOwnership) {
  PoolFixture f({.chunk_count = 4, .chunk_size = 8, .ring_capacities = {2}});
  std::uint32_t idx[3];
  for (auto& i : idx) ASSERT_EQ(f.pool.try_allocate(i), RingStatus::ok);
  ASSERT_EQ(f.pool.try_push(1, idx[0]), RingStatus::ok);
  ASSERT_EQ(f.pool.try_push(1, idx[1]), RingStatus::ok);
  EXPECT_EQ(f.pool.try_push(1, idx[2]), RingStatus::full);
  EXPECT_EQ(f.pool.header(idx[2]).owner.load(), OwnerId::self().value);
  auto c = f.pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.queued, 2u);
  EXPECT_EQ(c.owned, 1u);
}

TEST(ChunkPoolTest, QueueIsFifoAcrossManyLaps) {
  PoolFixture f({.chunk_count = 8, .chunk_size = 8, .ring_capacities = {4}});
  std::uint64_t in = 0, out = 0;
  for (int round = 0; round < 500; ++round) {
    for (int k = 0; k < 3; ++k, ++in) {
      std::uint32_t i;
      ASSERT_EQ(f.pool.try_allocate(i), RingStatus::ok);
      std::memcpy(f.pool.data(i), &in, 8);
      ASSERT_EQ(f.pool.try_push(1, i), RingStatus::ok);
    }
    for (int k = 0; k < 3; ++k, ++out) {
      std::uint32_t i;
      ASSERT_EQ(f.pool.try_pop(1, i), RingStatus::ok);
      std::uint64_t v;
      std::memcpy(&v, f.pool.data(i), 8);
      ASSERT_EQ(v, out);
      f.pool.release(i);
    }
  }
  EXPECT_EQ(f.pool.census().free, 8u);
}

// ---- reclaim, with the shared state put straight into what a killed process leaves ----

TEST(ChunkPoolReclaimTest, ChunksHeldByTheDeadAreFreed) {
  PoolFixture f({.chunk_count = 4, .chunk_size = 8});
  std::uint32_t a, b;
  ASSERT_EQ(f.pool.try_allocate(a), RingStatus::ok);
  ASSERT_EQ(f.pool.try_allocate(b), RingStatus::ok);
  const OwnerId dead = dead_id();
  f.pool.header(a).owner.store(dead.value);
  EXPECT_FALSE(f.pool.census().violations.empty());  // held by a process that is not running
  auto rep = f.pool.reclaim(dead);
  EXPECT_EQ(rep.freed, 1u);
  auto c = f.pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.free, 3u);
  EXPECT_EQ(c.owned, 1u);  // b is still ours
  EXPECT_EQ(f.pool.shared()->reclaimed.load(), 1u);
}

TEST(ChunkPoolReclaimTest, StampWrittenButCellNotSwappedIsFreed) {
  PoolFixture f({.chunk_count = 4, .chunk_size = 8, .ring_capacities = {4}});
  std::uint32_t a;
  ASSERT_EQ(f.pool.try_allocate(a), RingStatus::ok);
  const OwnerId dead = dead_id();
  // The dead pusher stamped QUEUED(1, 0) and died before its cell CAS.
  auto& h = f.pool.header(a);
  h.pusher.store(dead.value);
  h.queued_pos.store(0);
  h.owner.store(ChunkPool::queued(1, 0));
  EXPECT_FALSE(f.pool.census().violations.empty());
  auto rep = f.pool.reclaim(dead);
  EXPECT_EQ(rep.freed, 1u);
  EXPECT_EQ(rep.unpushed, 1u);
  auto c = f.pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.free, 4u);
}

TEST(ChunkPoolReclaimTest, StampWithStaleQueuedPosIsFreed) {
  PoolFixture f({.chunk_count = 4, .chunk_size = 8, .ring_capacities = {4}});
  std::uint32_t a;
  ASSERT_EQ(f.pool.try_allocate(a), RingStatus::ok);
  const OwnerId dead = dead_id();
  // Died between writing queued_pos for a retry (position 1) and rewriting the stamp (still position 0).
  auto& h = f.pool.header(a);
  h.pusher.store(dead.value);
  h.queued_pos.store(1);
  h.owner.store(ChunkPool::queued(1, 0));
  auto rep = f.pool.reclaim(dead);
  EXPECT_EQ(rep.freed, 1u);
  EXPECT_TRUE(f.pool.census().violations.empty());
}

TEST(ChunkPoolReclaimTest, CompletedPushOfTheDeadStaysQueued) {
  PoolFixture f({.chunk_count = 4, .chunk_size = 8, .ring_capacities = {4}});
  std::uint32_t a;
  ASSERT_EQ(f.pool.try_allocate(a), RingStatus::ok);
  ASSERT_EQ(f.pool.try_push(1, a), RingStatus::ok);
  const OwnerId dead = dead_id();
  f.pool.header(a).pusher.store(dead.value);  // as if the dead process had pushed it
  auto rep = f.pool.reclaim(dead);
  EXPECT_EQ(rep.freed + rep.redelivered, 0u);
  std::uint32_t b;
  ASSERT_EQ(f.pool.try_pop(1, b), RingStatus::ok);
  EXPECT_EQ(a, b);
}

TEST(ChunkPoolReclaimTest, ClaimedButNotEmptiedCellIsCleanedAndRedelivered) {
  PoolFixture f({.chunk_count = 4, .chunk_size = 8, .ring_capacities = {4}});
  std::uint32_t a, b;
  ASSERT_EQ(f.pool.try_allocate(a), RingStatus::ok);
  ASSERT_EQ(f.pool.try_allocate(b), RingStatus::ok);
  ASSERT_EQ(f.pool.try_push(1, a), RingStatus::ok);
  ASSERT_EQ(f.pool.try_push(1, b), RingStatus::ok);
  // A consumer claimed a (owner CAS) and died before emptying the cell and moving head.
  const OwnerId dead = dead_id();
  f.pool.header(a).owner.store(dead.value);
  f.pool.header(a).last_ring.store(1);
  auto rep = f.pool.reclaim(dead, ChunkPool::Policy::redeliver);
  EXPECT_EQ(rep.redelivered, 1u);
  EXPECT_TRUE(rep.held.empty());
  // The next pop cleans the stale cell, then sees b, then the redelivered a.
  std::uint32_t x;
  ASSERT_EQ(f.pool.try_pop(1, x), RingStatus::ok);
  EXPECT_EQ(x, b);
  ASSERT_EQ(f.pool.try_pop(1, x), RingStatus::ok);
  EXPECT_EQ(x, a);
  EXPECT_TRUE(f.pool.header(a).flags.load() & kChunkRedelivered);
  EXPECT_EQ(f.pool.header(a).deliveries.load(), 1u);  // the simulated dead pop did not count
  f.pool.release(a);
  f.pool.release(b);
  auto c = f.pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.free, 4u);
}

TEST(ChunkPoolReclaimTest, RedeliveryToAFullRingIsHeldNotLost) {
  PoolFixture f({.chunk_count = 4, .chunk_size = 8, .ring_capacities = {2}});
  std::uint32_t a, b, c;
  ASSERT_EQ(f.pool.try_allocate(a), RingStatus::ok);
  ASSERT_EQ(f.pool.try_push(1, a), RingStatus::ok);
  ASSERT_EQ(f.pool.try_pop(1, a), RingStatus::ok);  // a now held, last_ring 1
  ASSERT_EQ(f.pool.try_allocate(b), RingStatus::ok);
  ASSERT_EQ(f.pool.try_allocate(c), RingStatus::ok);
  ASSERT_EQ(f.pool.try_push(1, b), RingStatus::ok);
  ASSERT_EQ(f.pool.try_push(1, c), RingStatus::ok);  // ring 1 full
  const OwnerId dead = dead_id();
  f.pool.header(a).owner.store(dead.value);
  auto rep = f.pool.reclaim(dead, ChunkPool::Policy::redeliver);
  ASSERT_EQ(rep.held.size(), 1u);
  EXPECT_EQ(rep.held[0], a);
  EXPECT_EQ(f.pool.header(a).owner.load(), OwnerId::self().value);
}

TEST(ChunkPoolReclaimTest, RealChildThatExitsHoldingChunksIsReclaimed) {
  PoolFixture f({.chunk_count = 16, .chunk_size = 8, .ring_capacities = {8}});
  const std::string name = f.name.name;
  const pid_t pid = test::fork_child([&] {
    auto seg = Segment::open(name);
    if (!seg) return 2;
    auto pool = ChunkPool::attach(*seg, Ref<ChunkPoolShared>{seg->header().root_offset});
    if (!pool) return 3;
    std::uint32_t i;
    for (int k = 0; k < 5; ++k)
      if (pool->try_allocate(i) != RingStatus::ok) return 4;
    for (int k = 0; k < 3; ++k) {
      if (pool->try_allocate(i) != RingStatus::ok) return 5;
      if (pool->try_push(1, i) != RingStatus::ok) return 6;
    }
    return 0;
  });
  const auto child = OwnerId::of(pid);
  auto r = test::wait_child(pid);
  ASSERT_TRUE(r.exited);
  ASSERT_EQ(r.code, 0);
  ASSERT_TRUE(child);
  EXPECT_FALSE(f.pool.census().violations.empty());
  auto rep = f.pool.reclaim(*child);
  EXPECT_EQ(rep.freed, 5u);
  auto c = f.pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.free, 13u);
  EXPECT_EQ(c.queued, 3u);  // what it pushed stays for a consumer
}

TEST(ChunkPoolTest, PlaceRejectsBadOptions) {
  test::ScopedName n(test::unique_name("poolbad"));
  auto seg = Segment::create(n.name, {.size = 1 << 16}).value();
  EXPECT_EQ(ChunkPool::place(seg, {.chunk_count = 0}).error().code(), Errc::invalid_argument);
  EXPECT_EQ(ChunkPool::place(seg, {.chunk_count = 4, .chunk_size = 0}).error().code(),
            Errc::invalid_argument);
  EXPECT_EQ(ChunkPool::place(seg, {.chunk_count = 4, .chunk_size = 8, .ring_capacities = {3}}).error().code(),
            Errc::invalid_argument);
  EXPECT_EQ(ChunkPool::place(seg, {.chunk_count = 1000, .chunk_size = 4096}).error().code(), Errc::no_space);
}

}  // namespace
}  // namespace shmbus
