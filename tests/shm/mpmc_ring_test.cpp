#include "shmbus/mpmc_ring.hpp"

#include <gtest/gtest.h>

#include "test_util.hpp"

namespace shmbus {
namespace {

struct MpmcFixture {
  test::ScopedName name{test::unique_name("mpmc")};
  Segment seg;
  Ref<MpmcRingShared> ref;
  MpmcRing ring;

  explicit MpmcFixture(MpmcRingOptions o) {
    seg = Segment::create(name.name, {.size = MpmcRing::footprint(o) + 4096}).value();
    ref = MpmcRing::place(seg, o).value();
    seg.publish();
    ring = MpmcRing::attach(seg, ref).value();
  }
};

TEST(MpmcRingTest, PopsInPushOrder) {
  MpmcFixture f({.capacity = 8});
  for (std::uint32_t i = 0; i < 8; ++i) ASSERT_EQ(f.ring.try_push(i * 10), RingStatus::ok);
  for (std::uint32_t i = 0; i < 8; ++i) {
    std::uint32_t v = 0;
    ASSERT_EQ(f.ring.try_pop(v), RingStatus::ok);
    EXPECT_EQ(v, i * 10);
  }
}

TEST(MpmcRingTest, FullAndEmptyAreReported) {
  MpmcFixture f({.capacity = 4});
  std::uint32_t v;
  EXPECT_EQ(f.ring.try_pop(v), RingStatus::empty);
  for (std::uint32_t i = 0; i < 4; ++i) ASSERT_EQ(f.ring.try_push(i), RingStatus::ok);
  EXPECT_EQ(f.ring.try_push(99), RingStatus::full);
  EXPECT_EQ(f.ring.size_approx(), 4u);
  ASSERT_EQ(f.ring.try_pop(v), RingStatus::ok);
  EXPECT_EQ(f.ring.try_push(99), RingStatus::ok);
}

TEST(MpmcRingTest, CarriesEveryThirtyTwoBitValue) {
  MpmcFixture f({.capacity = 4});
  for (std::uint32_t x : {0u, 1u, 0x7fffffffu, 0xffffffffu}) {
    ASSERT_EQ(f.ring.try_push(x), RingStatus::ok);
    std::uint32_t v = 0;
    ASSERT_EQ(f.ring.try_pop(v), RingStatus::ok);
    EXPECT_EQ(v, x);
  }
}

class MpmcRingPositionTest : public ::testing::TestWithParam<std::uint64_t> {};

TEST_P(MpmcRingPositionTest, WrapsAcrossTheBoundary) {
  MpmcFixture f({.capacity = 4, .initial_pos = GetParam()});
  std::uint32_t next_out = 0;
  for (std::uint32_t i = 0; i < 64; ++i) {
    ASSERT_EQ(f.ring.try_push(i), RingStatus::ok) << i;
    if (i % 4 == 3) {
      EXPECT_EQ(f.ring.try_push(1000), RingStatus::full);
      for (int k = 0; k < 4; ++k) {
        std::uint32_t v;
        ASSERT_EQ(f.ring.try_pop(v), RingStatus::ok);
        ASSERT_EQ(v, next_out++);
      }
      std::uint32_t v;
      EXPECT_EQ(f.ring.try_pop(v), RingStatus::empty);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Boundaries, MpmcRingPositionTest,
                         ::testing::Values(0ULL, (1ULL << 32) - 6, (1ULL << 33) - 3, ~0ULL - 6, ~0ULL));

// Aeron-style edge states: put the shared structure straight into the state a killed process leaves.

TEST(MpmcRingTest, PusherKilledAfterCellCasBeforeTailIsHelped) {
  MpmcFixture f({.capacity = 4});
  auto* s = f.ring.shared();
  // A pusher wrote position 0 and died before advancing tail.
  f.ring.cell(0).store(MpmcRing::full(0, 77));
  EXPECT_EQ(s->tail.load(), 0u);
  ASSERT_EQ(f.ring.try_push(78), RingStatus::ok);  // helps tail to 1, then pushes at 1
  EXPECT_EQ(s->tail.load(), 2u);
  std::uint32_t v;
  ASSERT_EQ(f.ring.try_pop(v), RingStatus::ok);
  EXPECT_EQ(v, 77u);
  ASSERT_EQ(f.ring.try_pop(v), RingStatus::ok);
  EXPECT_EQ(v, 78u);
}

TEST(MpmcRingTest, PopperKilledAfterCellCasBeforeHeadIsHelped) {
  MpmcFixture f({.capacity = 4});
  ASSERT_EQ(f.ring.try_push(1), RingStatus::ok);
  ASSERT_EQ(f.ring.try_push(2), RingStatus::ok);
  // A popper took position 0 (its value is gone with it) and died before advancing head.
  f.ring.cell(0).store(MpmcRing::empty(1));
  std::uint32_t v;
  ASSERT_EQ(f.ring.try_pop(v), RingStatus::ok);
  EXPECT_EQ(v, 2u);
  EXPECT_EQ(f.ring.try_pop(v), RingStatus::empty);
  // And a full lap later nothing is wedged.
  for (std::uint32_t i = 0; i < 4; ++i) ASSERT_EQ(f.ring.try_push(i), RingStatus::ok);
  EXPECT_EQ(f.ring.try_push(9), RingStatus::full);
}

TEST(MpmcRingTest, BothIndicesLaggingStillWork) {
  MpmcFixture f({.capacity = 2});
  // Position 0 pushed and popped by processes that both died before moving the indices.
  f.ring.cell(0).store(MpmcRing::empty(1));
  std::uint32_t v;
  EXPECT_EQ(f.ring.try_pop(v), RingStatus::empty);
  ASSERT_EQ(f.ring.try_push(5), RingStatus::ok);
  ASSERT_EQ(f.ring.try_pop(v), RingStatus::ok);
  EXPECT_EQ(v, 5u);
}

TEST(MpmcRingTest, PlaceRejectsBadCapacity) {
  test::ScopedName n(test::unique_name("mpmcbad"));
  auto seg = Segment::create(n.name, {.size = 1 << 16}).value();
  EXPECT_EQ(MpmcRing::place(seg, {.capacity = 6}).error().code(), Errc::invalid_argument);
  EXPECT_EQ(MpmcRing::place(seg, {.capacity = 1}).error().code(), Errc::invalid_argument);
  EXPECT_EQ(MpmcRing::place(seg, {.capacity = 1 << 20}).error().code(), Errc::no_space);
}

TEST(MpmcRingTest, AttachRefusesCellsOutsideTheMapping) {
  MpmcFixture f({.capacity = 4});
  f.seg.at(f.ref)->cells_offset = f.seg.size() - 8;
  EXPECT_EQ(MpmcRing::attach(f.seg, f.ref).error().code(), Errc::truncated);
}

}  // namespace
}  // namespace shmbus
