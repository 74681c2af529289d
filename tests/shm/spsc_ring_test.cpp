#include "shmbus/spsc_ring.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace shmbus {
namespace {

struct RingFixture {
  test::ScopedName name{test::unique_name("spsc")};
  Segment seg;
  Ref<SpscRingShared> ref;
  SpscRing prod, cons;

  explicit RingFixture(SpscRingOptions o) {
    auto s = Segment::create(name.name, {.size = SpscRing::footprint(o) + 4096});
    EXPECT_TRUE(s) << s.error().message();
    seg = std::move(s).value();
    auto r = SpscRing::place(seg, o);
    EXPECT_TRUE(r) << r.error().message();
    ref = *r;
    seg.set_root(ref);
    seg.publish();
    prod = SpscRing::attach(seg, ref).value();
    cons = SpscRing::attach(seg, ref).value();
  }
};

std::string pop_string(SpscRing& r) {
  char buf[4096];
  std::size_t n = 0;
  if (r.try_pop(buf, sizeof buf, &n) != RingStatus::ok) return "<none>";
  return std::string(buf, n);
}

TEST(SpscRingTest, PushThenPopReturnsTheBytes) {
  RingFixture f({.capacity = 4, .slot_size = 64});
  ASSERT_EQ(f.prod.try_push("hello", 5, 7), RingStatus::ok);
  char buf[64];
  std::size_t n = 0;
  std::uint32_t flags = 0;
  ASSERT_EQ(f.cons.try_pop(buf, sizeof buf, &n, &flags), RingStatus::ok);
  EXPECT_EQ(std::string(buf, n), "hello");
  EXPECT_EQ(flags, 7u);
}

TEST(SpscRingTest, TryPopOnEmptyIsEmpty) {
  RingFixture f({.capacity = 4, .slot_size = 8});
  char buf[8];
  std::size_t n;
  EXPECT_EQ(f.cons.try_pop(buf, sizeof buf, &n), RingStatus::empty);
  SlotView v;
  EXPECT_FALSE(f.cons.try_peek(v));
}

TEST(SpscRingTest, TryPushFailsWhenFullAndSucceedsAfterOnePop) {
  RingFixture f({.capacity = 4, .slot_size = 8});
  for (int i = 0; i < 4; ++i) ASSERT_EQ(f.prod.try_push(&i, sizeof i), RingStatus::ok);
  int x = 9;
  EXPECT_EQ(f.prod.try_push(&x, sizeof x), RingStatus::full);
  EXPECT_EQ(f.prod.try_claim(), nullptr);
  int out;
  std::size_t n;
  ASSERT_EQ(f.cons.try_pop(&out, sizeof out, &n), RingStatus::ok);
  EXPECT_EQ(out, 0);
  EXPECT_EQ(f.prod.try_push(&x, sizeof x), RingStatus::ok);
}

TEST(SpscRingTest, OversizeMessageIsTooBigAndNotWritten) {
  RingFixture f({.capacity = 4, .slot_size = 8});
  char big[9] = {};
  EXPECT_EQ(f.prod.try_push(big, sizeof big), RingStatus::too_big);
  EXPECT_EQ(pop_string(f.cons), "<none>");
}

TEST(SpscRingTest, PopIntoSmallBufferIsTooBigAndLeavesTheMessage) {
  RingFixture f({.capacity = 4, .slot_size = 64});
  ASSERT_EQ(f.prod.try_push("abcdef", 6), RingStatus::ok);
  char small[3];
  std::size_t n;
  EXPECT_EQ(f.cons.try_pop(small, sizeof small, &n), RingStatus::too_big);
  EXPECT_EQ(pop_string(f.cons), "abcdef");
}

TEST(SpscRingTest, WrapsAroundManyLapsInOrder) {
  RingFixture f({.capacity = 8, .slot_size = 16});
  std::uint64_t next_in = 0, next_out = 0;
  for (int round = 0; round < 1000; ++round) {
    for (int k = 0; k < 5; ++k, ++next_in) ASSERT_EQ(f.prod.try_push(&next_in, 8), RingStatus::ok);
    for (int k = 0; k < 5; ++k, ++next_out) {
      std::uint64_t v;
      std::size_t n;
      ASSERT_EQ(f.cons.try_pop(&v, 8, &n), RingStatus::ok);
      ASSERT_EQ(v, next_out);
    }
  }
  EXPECT_EQ(f.prod.size_approx(), 0u);
}

class SpscRingPositionTest : public ::testing::TestWithParam<std::uint64_t> {};

TEST_P(SpscRingPositionTest, CrossesTheBoundaryInOrder) {
  RingFixture f({.capacity = 4, .slot_size = 8, .initial_pos = GetParam()});
  for (std::uint64_t i = 0; i < 40; ++i) {
    ASSERT_EQ(f.prod.try_push(&i, 8), RingStatus::ok) << i;
    if (i % 3 == 2) {
      // Keep 3 in flight so the ring is near full at the crossing.
      for (int k = 0; k < 3; ++k) {
        std::uint64_t v;
        std::size_t n;
        ASSERT_EQ(f.cons.try_pop(&v, 8, &n), RingStatus::ok);
        ASSERT_EQ(v, i - 2 + static_cast<std::uint64_t>(k));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Boundaries, SpscRingPositionTest,
                         ::testing::Values(0ULL, (1ULL << 32) - 5, ~0ULL - 5, ~0ULL - 1, ~0ULL));

TEST(SpscRingTest, ClaimWithoutCommitIsInvisibleAndReclaimsTheSameSlot) {
  RingFixture f({.capacity = 4, .slot_size = 16});
  std::byte* a = f.prod.try_claim();
  ASSERT_NE(a, nullptr);
  std::memcpy(a, "xx", 2);
  SlotView v;
  EXPECT_FALSE(f.cons.try_peek(v));
  std::byte* b = f.prod.try_claim();
  EXPECT_EQ(a, b);
  std::memcpy(b, "yz", 2);
  f.prod.commit(2);
  EXPECT_EQ(pop_string(f.cons), "yz");
}

TEST(SpscRingTest, ZeroCopyPeekReadsInPlaceUntilRelease) {
  RingFixture f({.capacity = 4, .slot_size = 32});
  std::byte* p = f.prod.try_claim();
  ASSERT_NE(p, nullptr);
  std::memcpy(p, "in place", 8);
  f.prod.commit(8, 3);
  SlotView v1, v2;
  ASSERT_TRUE(f.cons.try_peek(v1));
  ASSERT_TRUE(f.cons.try_peek(v2));  // peeking twice sees the same slot
  EXPECT_EQ(v1.data, v2.data);
  EXPECT_EQ(v1.data, p);  // the very bytes the producer wrote
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(v1.data), v1.size), "in place");
  EXPECT_EQ(v1.flags, 3u);
  f.cons.release();
  EXPECT_FALSE(f.cons.try_peek(v1));
}

TEST(SpscRingTest, PopBatchDeliversInOrderUpToMax) {
  RingFixture f({.capacity = 16, .slot_size = 8});
  for (std::uint64_t i = 0; i < 10; ++i) ASSERT_EQ(f.prod.try_push(&i, 8), RingStatus::ok);
  std::vector<std::uint64_t> got;
  auto take = [&](const SlotView& v) {
    std::uint64_t x;
    std::memcpy(&x, v.data, 8);
    got.push_back(x);
  };
  EXPECT_EQ(f.cons.pop_batch(take, 4), 4u);
  EXPECT_EQ(f.cons.pop_batch(take, 100), 6u);
  EXPECT_EQ(f.cons.pop_batch(take, 100), 0u);
  ASSERT_EQ(got.size(), 10u);
  for (std::uint64_t i = 0; i < 10; ++i) EXPECT_EQ(got[i], i);
  // The producer sees the batch's single tail store: the ring is empty again.
  for (std::uint64_t i = 0; i < 16; ++i) ASSERT_EQ(f.prod.try_push(&i, 8), RingStatus::ok);
}

TEST(SpscRingTest, ReattachedProducerResumesAtHead) {
  RingFixture f({.capacity = 8, .slot_size = 8});
  std::uint64_t a = 1, b = 2;
  ASSERT_EQ(f.prod.try_push(&a, 8), RingStatus::ok);
  SpscRing again = SpscRing::attach(f.seg, f.ref).value();
  ASSERT_EQ(again.try_push(&b, 8), RingStatus::ok);
  std::uint64_t v;
  std::size_t n;
  ASSERT_EQ(f.cons.try_pop(&v, 8, &n), RingStatus::ok);
  EXPECT_EQ(v, 1u);
  ASSERT_EQ(f.cons.try_pop(&v, 8, &n), RingStatus::ok);
  EXPECT_EQ(v, 2u);
}

TEST(SpscRingTest, PlaceRejectsBadGeometry) {
  test::ScopedName n(test::unique_name("spscbad"));
  auto seg = Segment::create(n.name, {.size = 1 << 16});
  ASSERT_TRUE(seg);
  EXPECT_EQ(SpscRing::place(*seg, {.capacity = 3}).error().code(), Errc::invalid_argument);
  EXPECT_EQ(SpscRing::place(*seg, {.capacity = 4, .slot_size = 0}).error().code(), Errc::invalid_argument);
  EXPECT_EQ(SpscRing::place(*seg, {.capacity = 1 << 20, .slot_size = 64}).error().code(), Errc::no_space);
}

TEST(SpscRingTest, AttachRefusesDamagedGeometryWithoutFault) {
  RingFixture f({.capacity = 4, .slot_size = 8});
  f.seg.at(f.ref)->capacity = 1ULL << 30;  // slots would run far past the mapping
  auto r = SpscRing::attach(f.seg, f.ref);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::truncated);
  f.seg.at(f.ref)->capacity = 5;
  EXPECT_FALSE(SpscRing::attach(f.seg, f.ref));
  EXPECT_FALSE(SpscRing::attach(f.seg, Ref<SpscRingShared>{1ULL << 40}));
}

TEST(SpscRingTest, DamagedSizeIsClampedToTheSlot) {
  RingFixture f({.capacity = 4, .slot_size = 8});
  ASSERT_EQ(f.prod.try_push("12345678", 8), RingStatus::ok);
  // A misbehaving writer scribbles the size word: the reader must stay inside the slot.
  auto* slot = reinterpret_cast<SpscSlotHeader*>(f.seg.base() + f.seg.at(f.ref)->slots_offset);
  slot->size = 1u << 30;
  SlotView v;
  ASSERT_TRUE(f.cons.try_peek(v));
  EXPECT_EQ(v.size, 8u);
}

}  // namespace
}  // namespace shmbus

namespace shmbus {
namespace {

TEST(SpscRingTest, ProducerKilledBeforeHeadStoreResumesAfterItsLastCommit) {
  RingFixture f({.capacity = 4, .slot_size = 8});
  std::uint64_t a = 1;
  ASSERT_EQ(f.prod.try_push(&a, 8), RingStatus::ok);
  // The edge state a producer killed between R1 and its head store leaves: seq written, head not.
  f.seg.at(f.ref)->head.store(0);
  SpscRing again = SpscRing::attach(f.seg, f.ref).value();
  std::uint64_t b = 2;
  ASSERT_EQ(again.try_push(&b, 8), RingStatus::ok);  // must not overwrite message 1
  std::uint64_t v;
  std::size_t n;
  ASSERT_EQ(f.cons.try_pop(&v, 8, &n), RingStatus::ok);
  EXPECT_EQ(v, 1u);
  ASSERT_EQ(f.cons.try_pop(&v, 8, &n), RingStatus::ok);
  EXPECT_EQ(v, 2u);
}

TEST(SpscRingTest, ProducerKilledBeforeHeadStoreAfterConsumerReadItIsNotWedged) {
  RingFixture f({.capacity = 4, .slot_size = 8});
  std::uint64_t a = 1, v;
  std::size_t n;
  ASSERT_EQ(f.prod.try_push(&a, 8), RingStatus::ok);
  ASSERT_EQ(f.cons.try_pop(&v, 8, &n), RingStatus::ok);
  f.seg.at(f.ref)->head.store(0);  // head behind tail
  SpscRing again = SpscRing::attach(f.seg, f.ref).value();
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_EQ(again.try_push(&i, 8), RingStatus::ok) << i;
  for (std::uint64_t i = 0; i < 4; ++i) {
    ASSERT_EQ(f.cons.try_pop(&v, 8, &n), RingStatus::ok);
    EXPECT_EQ(v, i);
  }
}

}  // namespace
}  // namespace shmbus
