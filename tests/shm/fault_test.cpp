// Fault tests: real processes die by SIGKILL at named fault points (fault.hpp) and at random moments,
// and the survivors prove that every shared structure is still exact: ChunkPool::reclaim() returns what
// the dead held, census() finds every chunk in exactly one place, and the rings carry traffic again.
//
// Rules these tests keep:
//  - The parent reclaims only a process it has waited for (waitpid): OwnerId liveness reads /proc, and a
//    zombie still "runs" there.
//  - A dead child's OwnerId is read by the parent right after fork (OwnerId::of(pid)): until the parent
//    waits for it, the pid cannot be reused.
//  - Whatever could hang on a wedged ring (draining, traffic checks) runs in a probe child with a
//    timeout, so a wedge fails the test with a message instead of hanging it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "shmbus/chunk_pool.hpp"
#include "shmbus/fault.hpp"
#include "shmbus/mpmc_ring.hpp"
#include "shmbus/owner.hpp"
#include "test_util.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Policy = ChunkPool::Policy;

// Exit code of a child whose armed fault point was never reached (the test's workload is wrong).
constexpr int kNeverFired = 40;

std::string census_text(const PoolCensus& c) {
  std::string s = "free=" + std::to_string(c.free) + " queued=" + std::to_string(c.queued) +
                  " owned=" + std::to_string(c.owned);
  for (std::size_t i = 0; i < c.violations.size() && i < 10; ++i) s += "\n  " + c.violations[i];
  return s;
}

std::string exit_text(const test::ChildExit& e) {
  if (e.timed_out) return "still running at the timeout (killed): wedged?";
  if (e.exited)
    return e.code == kNeverFired ? "exit " + std::to_string(e.code) + " (fault point never reached)"
                                 : "exit " + std::to_string(e.code);
  return "killed by signal " + std::to_string(e.signal) + " (" + strsignal(e.signal) + ")";
}

// ---- probes: a check that runs in a child, bounded by a timeout, reporting through a pipe --------------

struct ProbeResult {
  test::ChildExit exit;
  std::string message;
  bool ok() const { return exit.exited && exit.code == 0; }
  std::string text() const { return exit_text(exit) + (message.empty() ? "" : ": " + message); }
};

// Runs `check` in a forked child; its return value (empty = pass) comes back through a pipe.
ProbeResult probe(const std::function<std::string()>& check, std::chrono::milliseconds timeout = 5s) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return {{}, "pipe failed"};
  const pid_t pid = test::fork_child([&] {
    ::close(fds[0]);
    const std::string m = check();
    if (!m.empty()) (void)!::write(fds[1], m.data(), std::min<std::size_t>(m.size(), 4000));
    return m.empty() ? 0 : 1;
  });
  ::close(fds[1]);
  ProbeResult r;
  r.exit = test::wait_child(pid, timeout);
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) r.message.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  return r;
}

// ---- the test segment: a chunk pool and a plain MPMC ring ---------------------------------------------

struct alignas(kCacheLine) Root {
  Ref<ChunkPoolShared> pool;
  Ref<MpmcRingShared> ring;
  // What a child reports while it works (the parent reads it after waitpid).
  alignas(kCacheLine) std::atomic<std::uint32_t> popped_count;
  std::uint32_t popped[1024];
  // Random-kill workers.
  alignas(kCacheLine) std::atomic<std::uint32_t> stop;
  alignas(kCacheLine) std::atomic<std::uint64_t> produced;
  alignas(kCacheLine) std::atomic<std::uint64_t> consumed;
  std::atomic<std::uint64_t> torn;
  std::atomic<std::uint64_t> redelivered_seen;
};
static_assert(std::is_standard_layout_v<Root>);

// 64 chunks: a power of two, so the free ring has no spare cell (the tightest case for reclaim).
const ChunkPoolOptions kPoolOpts{.chunk_count = 64, .chunk_size = 64, .ring_capacities = {16, 32}};
constexpr std::uint64_t kRingCap = 8;

struct Fixture {
  test::ScopedName name;
  Segment seg;
  Root* root = nullptr;
  ChunkPool pool;
  MpmcRing ring;

  explicit Fixture(const std::string& tag, const ChunkPoolOptions& o = kPoolOpts)
      : name(test::unique_name(tag)) {
    const std::size_t size =
        sizeof(Root) + ChunkPool::footprint(o) + MpmcRing::footprint({.capacity = kRingCap}) + 8192;
    seg = Segment::create(name.name, {.size = size, .kind = "fault"}).value();
    auto r = seg.allocate<Root>(1, kCacheLine).value();
    root = seg.at(r);
    root->pool = ChunkPool::place(seg, o).value();
    root->ring = MpmcRing::place(seg, {.capacity = kRingCap}).value();
    seg.set_root(r);
    seg.publish();
    pool = ChunkPool::attach(seg, root->pool).value();
    ring = MpmcRing::attach(seg, root->ring).value();
  }
};

// What a child has after opening the segment by name, as an unrelated process would.
struct ChildCtx {
  Segment seg;
  Root* root = nullptr;
  ChunkPool pool;
  MpmcRing ring;
};

std::optional<ChildCtx> open_child(const std::string& name) {
  auto seg = Segment::open(name, {.expect_kind = "fault"});
  if (!seg) return std::nullopt;
  ChildCtx c;
  c.seg = std::move(*seg);
  c.root = c.seg.root<Root>();
  auto pool = ChunkPool::attach(c.seg, c.root->pool);
  auto ring = MpmcRing::attach(c.seg, c.root->ring);
  if (!pool || !ring) return std::nullopt;
  c.pool = *pool;
  c.ring = *ring;
  return c;
}
constexpr int kOpenFailed = 41;

// Forks `f` in a child and returns its pid and its OwnerId, read while it certainly exists.
struct Child {
  pid_t pid;
  OwnerId id;
};
Child spawn(const std::function<int()>& f) {
  const pid_t pid = test::fork_child(f);
  const auto id = OwnerId::of(pid);  // the child cannot be reaped before we wait: the id is its own
  SHMBUS_ASSERT(pid > 0 && id.has_value());
  return {pid, *id};
}

// ---- payloads ---------------------------------------------------------------------------------------

struct Message {
  std::uint64_t seq;
  std::uint64_t check;
};
constexpr std::uint64_t check_word(std::uint64_t seq) {
  return seq * 0x9e3779b97f4a7c15ULL ^ 0x5bd1e995ULL;
}
void write_message(const ChunkPool& pool, std::uint32_t idx, std::uint64_t seq) {
  const Message m{seq, check_word(seq)};
  std::memcpy(pool.data(idx), &m, sizeof m);
}
bool message_intact(const ChunkPool& pool, std::uint32_t idx, std::uint64_t* seq = nullptr) {
  Message m;
  std::memcpy(&m, pool.data(idx), sizeof m);
  if (seq != nullptr) *seq = m.seq;
  return m.check == check_word(m.seq);
}

// ---- checks after a death -------------------------------------------------------------------------

// The pool must be exact: no violation, every chunk free, queued or held by a live process.
void expect_exact(const ChunkPool& pool, const std::string& when) {
  const PoolCensus c = pool.census();
  EXPECT_TRUE(c.violations.empty()) << when << ": " << census_text(c);
  EXPECT_EQ(c.free + c.queued + c.owned, pool.chunk_count()) << when << ": " << census_text(c);
}

// In a probe child: drain every message ring (checking payloads), then prove that the free ring hands out
// every chunk exactly once and that each message ring carries laps of traffic in FIFO order and accepts
// exactly its capacity. Leaves every chunk free.
std::string pool_traffic(ChunkPool& pool) {
  const std::uint32_t n = pool.chunk_count();
  std::uint32_t idx;
  for (std::uint32_t r = 1; r < pool.ring_count(); ++r) {
    for (std::uint32_t k = 0; pool.try_pop(r, idx) == RingStatus::ok; ++k) {
      if (k > n) return "ring " + std::to_string(r) + " yields more chunks than the pool has";
      pool.release(idx);
    }
  }
  std::vector<std::uint32_t> all;
  while (pool.try_allocate(idx) == RingStatus::ok) {
    if (all.size() > n) return "the free ring yields more chunks than the pool has";
    all.push_back(idx);
  }
  if (all.size() != n)
    return "after draining, " + std::to_string(all.size()) + " of " + std::to_string(n) +
           " chunks could be allocated";
  if (std::set<std::uint32_t>(all.begin(), all.end()).size() != n)
    return "the free ring handed a chunk out twice";
  for (std::uint32_t r = 1; r < pool.ring_count(); ++r) {
    const auto cap = pool.ring(r).capacity();
    for (int lap = 0; lap < 3; ++lap) {
      std::vector<std::uint32_t> pushed;
      for (std::uint32_t k = 0; k < n; ++k) {
        const std::uint32_t c = all[(k + lap * 5) % n];
        write_message(pool, c, k);
        if (pool.try_push(r, c) != RingStatus::ok) break;
        pushed.push_back(c);
      }
      if (pushed.size() != std::min<std::uint64_t>(cap, n))
        return "ring " + std::to_string(r) + " accepted " + std::to_string(pushed.size()) +
               " chunks; capacity " + std::to_string(cap);
      for (std::size_t k = 0; k < pushed.size(); ++k) {
        std::uint64_t seq;
        if (pool.try_pop(r, idx) != RingStatus::ok) return "ring " + std::to_string(r) + " lost a chunk";
        if (idx != pushed[k]) return "ring " + std::to_string(r) + " is not FIFO";
        if (!message_intact(pool, idx, &seq) || seq != k)
          return "ring " + std::to_string(r) + ": torn payload";
      }
      if (pool.try_pop(r, idx) != RingStatus::empty)
        return "ring " + std::to_string(r) + " not empty after a lap";
    }
  }
  for (auto c : all) pool.release(c);
  return "";
}

// After a child died and was reclaimed: the census is exact, then a probe runs traffic through every ring,
// and afterwards every chunk is free.
void expect_pool_recovers(Fixture& f, const std::string& when) {
  expect_exact(f.pool, when + ", after reclaim");
  const ProbeResult p = probe([&] { return pool_traffic(f.pool); });
  EXPECT_TRUE(p.ok()) << when << ": traffic after reclaim: " << p.text();
  const PoolCensus c = f.pool.census();
  EXPECT_TRUE(c.violations.empty()) << when << ", after traffic: " << census_text(c);
  EXPECT_EQ(c.free, f.pool.chunk_count()) << when << ", after traffic: " << census_text(c);
}

// Waits for `child` (killed at a fault point), reclaims it, and checks that reclaim returned exactly what
// the census found out of place while the child lay dead (less `others`: chunks out of place because of
// other dead processes, not reclaimed yet).
ReclaimReport reclaim_dead(Fixture& f, const Child& child, Policy policy, const std::string& when,
                           std::size_t others = 0) {
  const auto e = test::wait_child(child.pid, 10s);
  EXPECT_FALSE(e.exited || e.timed_out) << when << ": " << exit_text(e);
  EXPECT_EQ(e.signal, SIGKILL) << when << ": " << exit_text(e);
  const std::size_t out_of_place = f.pool.census().violations.size();
  ReclaimReport rep = f.pool.reclaim(child.id, policy);
  EXPECT_EQ(rep.freed + rep.redelivered + rep.held.size() + others, out_of_place)
      << when << ": reclaim returned a different number of chunks than the census found the dead holding";
  for (auto idx : rep.held) f.pool.release(idx);
  return rep;
}

// ---- named fault points in ChunkPool ------------------------------------------------------------------

// A child that works on the pool in random steps (allocate, write, push to ring 1 or 2, pop, release)
// until the armed point kills it.
int pool_worker(const std::string& name, const char* point, std::uint64_t nth, std::uint64_t seed) {
  auto ctx = open_child(name);
  if (!ctx) return kOpenFailed;
  ChunkPool& pool = ctx->pool;
  fault::arm(point, nth, fault::Action::sigkill);
  std::mt19937_64 rng(seed);
  std::vector<std::uint32_t> held;
  std::uint64_t seq = 0;
  for (int step = 0; step < 100000; ++step) {
    std::uint32_t idx;
    const auto ring = static_cast<std::uint32_t>(1 + rng() % 2);
    switch (rng() % 4) {
      case 0:
        if (held.size() < 6 && pool.try_allocate(idx) == RingStatus::ok) {
          write_message(pool, idx, seq++);
          held.push_back(idx);
        }
        break;
      case 1:
        if (!held.empty() && pool.try_push(ring, held.back()) == RingStatus::ok) held.pop_back();
        break;
      case 2:
        if (held.size() < 8 && pool.try_pop(ring, idx) == RingStatus::ok) held.push_back(idx);
        break;
      default:
        if (!held.empty()) {
          pool.release(held.back());
          held.pop_back();
        }
    }
  }
  return kNeverFired;
}

struct PointCase {
  const char* point;
  std::uint64_t nth;
};
std::string point_case_name(const ::testing::TestParamInfo<PointCase>& info) {
  std::string s = info.param.point;
  std::replace(s.begin(), s.end(), '.', '_');
  return s + "_" + std::to_string(info.param.nth);
}

class FaultTest : public ::testing::TestWithParam<PointCase> {};

// A child dies at the point on its nth pass; reclaim (free on even nth, redeliver on odd) returns exactly
// what it held, and the pool is whole and carries traffic again.
TEST_P(FaultTest, PoolSurvivesSigkillAtPoint) {
  const PointCase pc = GetParam();
  Fixture f("faultpool");
  const std::string name = f.name.name;
  const Policy policy = pc.nth % 2 == 1 ? Policy::redeliver : Policy::free;
  const Child child = spawn([&] { return pool_worker(name, pc.point, pc.nth, pc.nth * 7919 + 1); });
  const std::string when = std::string(pc.point) + " nth " + std::to_string(pc.nth);
  reclaim_dead(f, child, policy, when);
  expect_pool_recovers(f, when);
}

INSTANTIATE_TEST_SUITE_P(PoolPoints, FaultTest,
                         ::testing::ValuesIn(std::vector<PointCase>{{"pool.push.after_stamp", 1},
                                                                    {"pool.push.after_stamp", 2},
                                                                    {"pool.push.after_stamp", 5},
                                                                    {"pool.push.after_stamp", 30},
                                                                    {"pool.push.after_stamp", 201},
                                                                    {"pool.push.after_cas", 1},
                                                                    {"pool.push.after_cas", 4},
                                                                    {"pool.push.after_cas", 33},
                                                                    {"pool.push.after_cas", 150},
                                                                    {"pool.pop.before_claim", 1},
                                                                    {"pool.pop.before_claim", 3},
                                                                    {"pool.pop.before_claim", 40},
                                                                    {"pool.pop.before_claim", 177},
                                                                    {"pool.pop.after_claim", 1},
                                                                    {"pool.pop.after_claim", 2},
                                                                    {"pool.pop.after_claim", 9},
                                                                    {"pool.pop.after_claim", 64},
                                                                    {"pool.pop.after_claim", 199}}),
                         point_case_name);

// A consumer that died right after claiming (pool.pop.after_claim) leaves its cell full at the head of a
// ring that is otherwise full. The next pusher must not see a full ring forever, and reclaim must be able
// to put the chunk back.
TEST(FaultTest, ClaimedCellOfDeadConsumerInFullRingIsReusable) {
  for (const Policy policy : {Policy::free, Policy::redeliver}) {
    Fixture f("faultfull");
    const std::string name = f.name.name;
    const std::uint64_t cap = f.pool.ring(1).capacity();
    std::vector<std::uint32_t> queued;
    for (std::uint64_t k = 0; k < cap; ++k) {
      std::uint32_t idx;
      ASSERT_EQ(f.pool.try_allocate(idx), RingStatus::ok);
      write_message(f.pool, idx, k);
      ASSERT_EQ(f.pool.try_push(1, idx), RingStatus::ok);
      queued.push_back(idx);
    }
    const Child child = spawn([&] {
      auto ctx = open_child(name);
      if (!ctx) return kOpenFailed;
      fault::arm("pool.pop.after_claim", 1);
      std::uint32_t idx;
      (void)ctx->pool.try_pop(1, idx);
      return kNeverFired;
    });
    reclaim_dead(f, child, policy, "consumer claimed from a full ring");
    // The ring holds cap - 1 messages (plus the redelivered one): FIFO order is kept for the rest.
    const ProbeResult p = probe([&]() -> std::string {
      std::uint32_t idx;
      std::vector<std::uint32_t> got;
      while (f.pool.try_pop(1, idx) == RingStatus::ok) {
        got.push_back(idx);
        if (got.size() > cap) return "ring 1 yields more than its capacity";
      }
      std::vector<std::uint32_t> want(queued.begin() + 1, queued.end());
      if (policy == Policy::redeliver) want.push_back(queued[0]);
      if (got != want) return "ring 1 order after the death is wrong";
      for (auto i : got) f.pool.release(i);
      return pool_traffic(f.pool);
    });
    EXPECT_TRUE(p.ok()) << p.text();
    expect_exact(f.pool, "after traffic");
    EXPECT_EQ(f.pool.census().free, f.pool.chunk_count());
  }
}

// A consumer killed between emptying its cell and advancing head (ChunkPool::try_pop has no fault point
// there, so the death is simulated by moving head back one position, which is exactly the state it
// leaves). A producer then fills the ring, reusing that cell for the next lap while head still points at
// it: the census must still find every chunk, and consumers must get every message in order.
TEST(FaultTest, PoolPopperKilledBeforeAdvancingHeadOfAFullRing) {
  Fixture f("faulthead");
  const std::uint64_t cap = f.pool.ring(1).capacity();
  std::vector<std::uint32_t> order;
  for (std::uint64_t k = 0; k < cap; ++k) {
    std::uint32_t idx;
    ASSERT_EQ(f.pool.try_allocate(idx), RingStatus::ok);
    ASSERT_EQ(f.pool.try_push(1, idx), RingStatus::ok);
    order.push_back(idx);
  }
  std::uint32_t first;
  ASSERT_EQ(f.pool.try_pop(1, first), RingStatus::ok);
  f.pool.release(first);
  order.erase(order.begin());
  MpmcRingShared* s = f.pool.ring(1).shared();
  s->head.store(s->head.load() - 1);  // the dead popper's view: cell emptied, head not advanced
  std::uint32_t extra;
  ASSERT_EQ(f.pool.try_allocate(extra), RingStatus::ok);
  ASSERT_EQ(f.pool.try_push(1, extra), RingStatus::ok);  // lands in the dead popper's cell, next lap
  order.push_back(extra);
  expect_exact(f.pool, "head lagging behind a full ring");
  EXPECT_EQ(f.pool.census().queued, cap);
  const ProbeResult p = probe([&]() -> std::string {
    std::uint32_t idx;
    for (std::uint64_t k = 0; k < cap; ++k) {
      if (f.pool.try_pop(1, idx) != RingStatus::ok) return "ring 1 lost a chunk";
      if (idx != order[k]) return "ring 1 is out of order";
      f.pool.release(idx);
    }
    if (f.pool.try_pop(1, idx) != RingStatus::empty) return "ring 1 is not empty";
    return pool_traffic(f.pool);
  });
  EXPECT_TRUE(p.ok()) << p.text();
  EXPECT_EQ(f.pool.census().free, f.pool.chunk_count());
}

// pool.reclaim.after_take: the reclaimer is itself killed after taking a chunk of the dead. Reclaiming
// the reclaimer, then the original dead process again, leaves the pool exact; with redeliver, the
// message the first victim had popped (and not acked) is back in ring 1, flagged.
using ReclaimerCase = std::tuple<std::uint64_t, Policy>;
std::string reclaimer_case_name(const ::testing::TestParamInfo<ReclaimerCase>& info) {
  return "take" + std::to_string(std::get<0>(info.param)) +
         (std::get<1>(info.param) == Policy::free ? "_free" : "_redeliver");
}

class ReclaimerFaultTest : public ::testing::TestWithParam<ReclaimerCase> {};

TEST_P(ReclaimerFaultTest, ReclaimerKilledMidwayIsReclaimedInTurn) {
  const auto [nth, policy] = GetParam();
  Fixture f("faultreclaimer");
  const std::string name = f.name.name;
  // Victim A, on a fresh pool (chunks come out as 0, 1, 2, ...): c0 is pushed to ring 1 and popped back
  // (held, last_ring 1: an unacknowledged message); c1 and c2 are pushed (in ring 1); A dies after
  // stamping c3 (pushed but not published); c4 is held. So A holds c0, c3, c4, in that index order.
  const Child a = spawn([&] {
    auto ctx = open_child(name);
    if (!ctx) return kOpenFailed;
    ChunkPool& pool = ctx->pool;
    std::uint32_t c[5];
    if (pool.try_allocate(c[0]) != RingStatus::ok) return 50;
    write_message(pool, c[0], 0);
    if (pool.try_push(1, c[0]) != RingStatus::ok || pool.try_pop(1, c[0]) != RingStatus::ok) return 51;
    for (int k = 1; k < 5; ++k) {
      if (pool.try_allocate(c[k]) != RingStatus::ok) return 52;
      write_message(pool, c[k], static_cast<std::uint64_t>(k));
    }
    fault::arm("pool.push.after_stamp", 3);  // the pushes of c1, c2 pass it once each; c3's is the third
    for (int k = 1; k < 4; ++k)
      if (pool.try_push(1, c[k]) != RingStatus::ok) return 53;
    return kNeverFired;
  });
  const auto ea = test::wait_child(a.pid, 10s);
  ASSERT_EQ(ea.signal, SIGKILL) << exit_text(ea);
  ASSERT_EQ(f.pool.census().violations.size(), 3u) << census_text(f.pool.census());

  // Reclaimer B takes A's chunks and is killed after its nth take.
  const Child b = spawn([&, nth = nth, policy = policy] {
    auto ctx = open_child(name);
    if (!ctx) return kOpenFailed;
    fault::arm("pool.reclaim.after_take", nth);
    (void)ctx->pool.reclaim(a.id, policy);
    return kNeverFired;
  });
  const std::string when = "reclaimer killed after take " + std::to_string(nth);
  // B holds the chunk of its last take; A still holds the 3 - nth that B had not reached.
  const ReclaimReport rb = reclaim_dead(f, b, policy, when, 3 - nth);
  EXPECT_EQ(rb.freed + rb.redelivered + rb.held.size(), 1u) << when;
  const ReclaimReport rest = f.pool.reclaim(a.id, policy);
  EXPECT_EQ(rest.freed + rest.redelivered + rest.held.size(), 3 - nth) << when;
  for (auto idx : rest.held) f.pool.release(idx);
  expect_exact(f.pool, when);
  const PoolCensus c = f.pool.census();
  EXPECT_EQ(c.owned, 0u) << census_text(c);
  if (policy == Policy::free) {
    EXPECT_EQ(c.queued, 2u) << census_text(c);  // c1, c2
  }

  // Ring 1 holds c1 and c2 first, in order; with redeliver also c0, flagged redelivered, with its payload.
  const ProbeResult p = probe([&, policy = policy]() -> std::string {
    std::uint32_t idx;
    std::vector<std::uint32_t> got;
    while (f.pool.try_pop(1, idx) == RingStatus::ok && got.size() <= 5) got.push_back(idx);
    if (got.size() < 2 || got[0] != 1 || got[1] != 2) return "c1, c2 are not first in ring 1";
    const bool has_c0 = std::find(got.begin(), got.end(), 0u) != got.end();
    if (policy == Policy::redeliver) {
      if (!has_c0) return "the unacknowledged c0 was not redelivered";
      if ((f.pool.header(0).flags.load() & kChunkRedelivered) == 0) return "c0 is not flagged redelivered";
      std::uint64_t seq;
      if (!message_intact(f.pool, 0, &seq) || seq != 0) return "c0's payload changed";
    } else if (has_c0) {
      return "c0 was redelivered under Policy::free";
    }
    for (auto i : got) f.pool.release(i);
    return pool_traffic(f.pool);
  });
  EXPECT_TRUE(p.ok()) << when << ": " << p.text();
  EXPECT_EQ(f.pool.census().free, f.pool.chunk_count()) << census_text(f.pool.census());
}

INSTANTIATE_TEST_SUITE_P(Takes, ReclaimerFaultTest,
                         ::testing::Combine(::testing::Values(1, 2, 3),
                                            ::testing::Values(Policy::free, Policy::redeliver)),
                         reclaimer_case_name);

// ---- named fault points in the plain MpmcRing ----------------------------------------------------------

// mpmc.push.after_cas: the child pushes 1, 2, 3, ... (popping and logging the oldest whenever the ring is
// full) and dies right after the cell CAS of its nth push, before advancing tail. Its nth value is in the
// ring: what it popped followed by what is left is exactly 1..nth, and the ring works on.
class MpmcPushFaultTest : public ::testing::TestWithParam<std::uint64_t> {};

std::string ring_traffic(MpmcRing& ring) {
  std::uint32_t v;
  for (std::uint32_t lap = 0; lap < 4; ++lap) {
    std::uint32_t pushed = 0;
    while (ring.try_push(1000 + lap * 100 + pushed) == RingStatus::ok)
      if (++pushed > ring.capacity()) return "ring accepts more than its capacity";
    if (pushed != ring.capacity()) return "ring accepted " + std::to_string(pushed) + " of its capacity";
    for (std::uint32_t k = 0; k < pushed; ++k)
      if (ring.try_pop(v) != RingStatus::ok || v != 1000 + lap * 100 + k) return "ring lost order or a value";
    if (ring.try_pop(v) != RingStatus::empty) return "ring not empty after a lap";
  }
  return "";
}

TEST_P(MpmcPushFaultTest, PusherKilledAfterCellCas) {
  const std::uint64_t nth = GetParam();
  Fixture f("faultmpmcpush");
  const std::string name = f.name.name;
  const Child child = spawn([&] {
    auto ctx = open_child(name);
    if (!ctx) return kOpenFailed;
    fault::arm("mpmc.push.after_cas", nth);
    for (std::uint32_t v = 1; v < 1000; ++v) {
      while (ctx->ring.try_push(v) == RingStatus::full) {
        std::uint32_t x;
        if (ctx->ring.try_pop(x) != RingStatus::ok) return 60;
        ctx->root->popped[ctx->root->popped_count.fetch_add(1)] = x;
      }
    }
    return kNeverFired;
  });
  const auto e = test::wait_child(child.pid, 10s);
  ASSERT_EQ(e.signal, SIGKILL) << exit_text(e);
  const ProbeResult p = probe([&]() -> std::string {
    std::vector<std::uint32_t> all(f.root->popped, f.root->popped + f.root->popped_count.load());
    std::uint32_t v;
    while (f.ring.try_pop(v) == RingStatus::ok) {
      all.push_back(v);
      if (all.size() > 2000) return "the ring yields values forever";
    }
    std::vector<std::uint32_t> want(nth);
    for (std::uint32_t k = 0; k < nth; ++k) want[k] = k + 1;
    if (all != want) return "popped + drained is not 1.." + std::to_string(nth);
    return ring_traffic(f.ring);
  });
  EXPECT_TRUE(p.ok()) << p.text();
}

INSTANTIATE_TEST_SUITE_P(Nth, MpmcPushFaultTest, ::testing::Values(1, 3, kRingCap, kRingCap + 1, 21));

// mpmc.pop.after_cas: the parent fills the ring with `prefill` values; the child pops and dies right after
// the cell CAS of its nth pop, before advancing head (that value is gone with it). Then a pusher fills the
// ring again, which reuses the dead popper's cell while head still points at it, and consumers must
// still get every remaining value in order.
class MpmcPopFaultTest : public ::testing::TestWithParam<std::tuple<std::uint64_t, std::uint64_t>> {};

TEST_P(MpmcPopFaultTest, PopperKilledAfterCellCas) {
  const auto [prefill, nth] = GetParam();
  Fixture f("faultmpmcpop");
  const std::string name = f.name.name;
  for (std::uint32_t k = 1; k <= prefill; ++k) ASSERT_EQ(f.ring.try_push(100 + k), RingStatus::ok);
  const Child child = spawn([&, nth = nth] {
    auto ctx = open_child(name);
    if (!ctx) return kOpenFailed;
    fault::arm("mpmc.pop.after_cas", nth);
    std::uint32_t x;
    while (ctx->ring.try_pop(x) == RingStatus::ok)
      ctx->root->popped[ctx->root->popped_count.fetch_add(1)] = x;
    return kNeverFired;
  });
  const auto e = test::wait_child(child.pid, 10s);
  ASSERT_EQ(e.signal, SIGKILL) << exit_text(e);
  ASSERT_EQ(f.root->popped_count.load(), nth - 1);
  for (std::uint32_t k = 0; k + 1 < nth; ++k) EXPECT_EQ(f.root->popped[k], 101 + k);
  const ProbeResult p = probe([&, prefill = prefill, nth = nth]() -> std::string {
    // Fill: exactly the cells that are free again (the dead popper's included) are accepted.
    const std::uint64_t left = prefill - nth;
    std::uint32_t pushed = 0;
    while (f.ring.try_push(500 + pushed) == RingStatus::ok)
      if (++pushed > kRingCap) return "ring accepts more than its capacity";
    if (pushed != kRingCap - left)
      return "ring accepted " + std::to_string(pushed) + " values, expected " +
             std::to_string(kRingCap - left);
    std::uint32_t v;
    for (std::uint32_t k = 0; k < left; ++k)
      if (f.ring.try_pop(v) != RingStatus::ok || v != 100 + nth + 1 + k)
        return "lost or reordered an old value";
    for (std::uint32_t k = 0; k < pushed; ++k)
      if (f.ring.try_pop(v) != RingStatus::ok || v != 500 + k) return "lost or reordered a new value";
    if (f.ring.try_pop(v) != RingStatus::empty) return "ring not empty";
    return ring_traffic(f.ring);
  });
  EXPECT_TRUE(p.ok()) << "prefill " << prefill << ", nth " << nth << ": " << p.text();
}

INSTANTIATE_TEST_SUITE_P(PrefillNth, MpmcPopFaultTest,
                         ::testing::Values(std::make_tuple(kRingCap, 1), std::make_tuple(kRingCap, 2),
                                           std::make_tuple(kRingCap, kRingCap), std::make_tuple(5, 1),
                                           std::make_tuple(5, 3)));

// ---- named fault points in Segment::create ------------------------------------------------------------

class SegmentFaultTest : public ::testing::TestWithParam<PointCase> {};

// The creator dies while making its nth segment. Its earlier segments open; the half-made one answers
// Errc::incomplete (in a child that must exit normally: no SIGBUS); remove and create again work.
TEST_P(SegmentFaultTest, CreatorKilledLeavesAnIncompleteSegment) {
  const PointCase pc = GetParam();
  const std::string base = test::unique_name("faultseg");
  std::vector<std::unique_ptr<test::ScopedName>> names;
  for (std::uint64_t k = 1; k <= pc.nth; ++k)
    names.push_back(std::make_unique<test::ScopedName>(base + "." + std::to_string(k)));
  const CreateOptions opts{.size = 64 * 1024, .kind = "seg"};
  const pid_t pid = test::fork_child([&] {
    fault::arm(pc.point, pc.nth);
    for (auto& n : names) {
      auto s = Segment::create(n->name, opts);
      if (!s) return 20;
      s->publish();
    }
    return kNeverFired;
  });
  const auto e = test::wait_child(pid, 10s);
  ASSERT_EQ(e.signal, SIGKILL) << exit_text(e);

  const ProbeResult p = probe([&]() -> std::string {
    for (std::size_t k = 0; k + 1 < names.size(); ++k) {
      auto s = Segment::open(names[k]->name);
      if (!s) return "published segment " + names[k]->name + " does not open: " + s.error().message();
    }
    auto s = Segment::open(names.back()->name);
    if (s) return "the half-made segment opened";
    if (s.error().code() != Errc::incomplete)
      return std::string("open answered ") + errc_name(s.error().code()) + ": " + s.error().message();
    return "";
  });
  EXPECT_TRUE(p.ok()) << pc.point << ": open in a child: " << p.text();

  const std::string& last = names.back()->name;
  EXPECT_TRUE(Segment::remove(last));
  auto again = Segment::create(last, opts);
  ASSERT_TRUE(again) << again.error().message();
  again->publish();
  auto opened = Segment::open(last, {.expect_kind = "seg"});
  EXPECT_TRUE(opened) << opened.error().message();
}

INSTANTIATE_TEST_SUITE_P(Points, SegmentFaultTest,
                         ::testing::ValuesIn(std::vector<PointCase>{{"segment.create.before_magic", 1},
                                                                    {"segment.create.before_magic", 3},
                                                                    {"segment.create.after_size", 1},
                                                                    {"segment.create.after_size", 2}}),
                         point_case_name);

// ---- redelivery ---------------------------------------------------------------------------------------

// A consumer pops a message and dies before acknowledging it: reclaim(redeliver) puts the chunk back in
// ring 1, flagged redelivered, payload intact; the next consumer gets it.
TEST(FaultTest, ConsumerKilledHoldingAPoppedChunkGetsItRedelivered) {
  Fixture f("faultredeliver");
  const std::string name = f.name.name;
  std::uint32_t idx;
  ASSERT_EQ(f.pool.try_allocate(idx), RingStatus::ok);
  write_message(f.pool, idx, 4242);
  ASSERT_EQ(f.pool.try_push(1, idx), RingStatus::ok);
  const Child child = spawn([&] {
    auto ctx = open_child(name);
    if (!ctx) return kOpenFailed;
    std::uint32_t got;
    if (ctx->pool.try_pop(1, got) != RingStatus::ok) return 70;
    raise(SIGKILL);
    return kNeverFired;
  });
  const ReclaimReport rep = reclaim_dead(f, child, Policy::redeliver, "consumer holding a message");
  EXPECT_EQ(rep.redelivered, 1u);
  EXPECT_EQ(rep.freed, 0u);
  EXPECT_TRUE(rep.held.empty());
  const PoolCensus c = f.pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.queued, 1u);
  EXPECT_EQ(c.free, f.pool.chunk_count() - 1);

  std::uint32_t again;
  ASSERT_EQ(f.pool.try_pop(1, again), RingStatus::ok);
  EXPECT_EQ(again, idx);
  EXPECT_TRUE(f.pool.header(idx).flags.load() & kChunkRedelivered);
  EXPECT_EQ(f.pool.header(idx).deliveries.load(), 2u);
  std::uint64_t seq;
  EXPECT_TRUE(message_intact(f.pool, idx, &seq));
  EXPECT_EQ(seq, 4242u);
  f.pool.release(idx);
  // Allocation clears the flag for the chunk's next life.
  std::uint32_t next;
  for (std::uint32_t k = 0; k < f.pool.chunk_count(); ++k) {
    ASSERT_EQ(f.pool.try_allocate(next), RingStatus::ok);
    if (next == idx) break;
    f.pool.release(next);
  }
  ASSERT_EQ(next, idx);
  EXPECT_EQ(f.pool.header(idx).flags.load(), 0u);
  f.pool.release(idx);
  EXPECT_EQ(f.pool.census().free, f.pool.chunk_count());
}

// The same death under Policy::free: the message is dropped, the chunk freed.
TEST(FaultTest, ConsumerKilledHoldingAPoppedChunkUnderFreePolicyFreesIt) {
  Fixture f("faultfree");
  const std::string name = f.name.name;
  std::uint32_t idx;
  ASSERT_EQ(f.pool.try_allocate(idx), RingStatus::ok);
  ASSERT_EQ(f.pool.try_push(1, idx), RingStatus::ok);
  const Child child = spawn([&] {
    auto ctx = open_child(name);
    if (!ctx) return kOpenFailed;
    std::uint32_t got;
    if (ctx->pool.try_pop(1, got) != RingStatus::ok) return 70;
    raise(SIGKILL);
    return kNeverFired;
  });
  const ReclaimReport rep = reclaim_dead(f, child, Policy::free, "consumer holding a message");
  EXPECT_EQ(rep.freed, 1u);
  EXPECT_EQ(rep.redelivered, 0u);
  const PoolCensus c = f.pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.free, f.pool.chunk_count());
}

// A consumer killed right after its claim (the owner CAS, pool.pop.after_claim), before it recorded
// anything else about the chunk: the message is still unacknowledged and must be redelivered.
TEST(FaultTest, ConsumerKilledRightAfterClaimGetsTheMessageRedelivered) {
  Fixture f("faultclaim1");
  const std::string name = f.name.name;
  std::uint32_t idx;
  ASSERT_EQ(f.pool.try_allocate(idx), RingStatus::ok);
  write_message(f.pool, idx, 77);
  ASSERT_EQ(f.pool.try_push(1, idx), RingStatus::ok);
  const Child child = spawn([&] {
    auto ctx = open_child(name);
    if (!ctx) return kOpenFailed;
    fault::arm("pool.pop.after_claim", 1);
    std::uint32_t got;
    (void)ctx->pool.try_pop(1, got);
    return kNeverFired;
  });
  const ReclaimReport rep = reclaim_dead(f, child, Policy::redeliver, "consumer killed after claim");
  EXPECT_EQ(rep.redelivered, 1u) << "an unacknowledged message was dropped (freed " << rep.freed << ")";
  const ProbeResult p = probe([&]() -> std::string {
    std::uint32_t got;
    if (f.pool.try_pop(1, got) != RingStatus::ok) return "ring 1 is empty: the message was lost";
    if (got != idx) return "ring 1 holds another chunk";
    std::uint64_t seq;
    if (!message_intact(f.pool, got, &seq) || seq != 77) return "payload changed";
    if ((f.pool.header(got).flags.load() & kChunkRedelivered) == 0) return "not flagged redelivered";
    f.pool.release(got);
    return pool_traffic(f.pool);
  });
  EXPECT_TRUE(p.ok()) << p.text();
}

// An allocator killed right after claiming a chunk from the free ring (pool.pop.after_claim on ring 0)
// must not make reclaim(redeliver) publish the chunk's previous, already acknowledged message again.
TEST(FaultTest, AllocatorKilledRightAfterClaimDoesNotResurrectAnAckedMessage) {
  Fixture f("faultclaim0");
  const std::string name = f.name.name;
  std::vector<std::uint32_t> all(f.pool.chunk_count());
  for (auto& i : all) ASSERT_EQ(f.pool.try_allocate(i), RingStatus::ok);
  // Chunk x carries a message through ring 1 and is acknowledged (released) first, so it heads the free ring.
  const std::uint32_t x = all[5];
  write_message(f.pool, x, 99);
  ASSERT_EQ(f.pool.try_push(1, x), RingStatus::ok);
  std::uint32_t got;
  ASSERT_EQ(f.pool.try_pop(1, got), RingStatus::ok);
  ASSERT_EQ(got, x);
  f.pool.release(x);
  for (auto i : all)
    if (i != x) f.pool.release(i);
  const Child child = spawn([&] {
    auto ctx = open_child(name);
    if (!ctx) return kOpenFailed;
    fault::arm("pool.pop.after_claim", 1);
    std::uint32_t idx;
    (void)ctx->pool.try_allocate(idx);
    return kNeverFired;
  });
  const ReclaimReport rep = reclaim_dead(f, child, Policy::redeliver, "allocator killed after claim");
  EXPECT_EQ(rep.freed, 1u);
  EXPECT_EQ(rep.redelivered, 0u) << "reclaim re-published chunk " << x << "'s acknowledged message";
  const PoolCensus c = f.pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.queued, 0u) << census_text(c);
  EXPECT_EQ(c.free, f.pool.chunk_count()) << census_text(c);
}

// Redelivery to a ring that filled up meanwhile: the chunk is held by the reclaimer (never lost), and
// counts as owned by a live process.
TEST(FaultTest, RedeliveryToAFullRingIsHeldByTheReclaimer) {
  Fixture f("faultheld");
  const std::string name = f.name.name;
  const std::uint64_t cap = f.pool.ring(1).capacity();
  for (std::uint64_t k = 0; k < cap; ++k) {
    std::uint32_t idx;
    ASSERT_EQ(f.pool.try_allocate(idx), RingStatus::ok);
    ASSERT_EQ(f.pool.try_push(1, idx), RingStatus::ok);
  }
  std::atomic<std::uint32_t>& popped = f.root->popped_count;
  const Child child = spawn([&] {
    auto ctx = open_child(name);
    if (!ctx) return kOpenFailed;
    std::uint32_t got;
    if (ctx->pool.try_pop(1, got) != RingStatus::ok) return 70;
    ctx->root->popped[0] = got;
    ctx->root->popped_count.store(1);
    raise(SIGKILL);
    return kNeverFired;
  });
  const auto e = test::wait_child(child.pid, 10s);
  ASSERT_EQ(e.signal, SIGKILL) << exit_text(e);
  ASSERT_EQ(popped.load(), 1u);
  std::uint32_t filler;  // refill ring 1 to capacity
  ASSERT_EQ(f.pool.try_allocate(filler), RingStatus::ok);
  ASSERT_EQ(f.pool.try_push(1, filler), RingStatus::ok);
  const ReclaimReport rep = f.pool.reclaim(child.id, Policy::redeliver);
  ASSERT_EQ(rep.held.size(), 1u);
  EXPECT_EQ(rep.held[0], f.root->popped[0]);
  EXPECT_EQ(f.pool.header(rep.held[0]).owner.load(), OwnerId::self().value);
  PoolCensus c = f.pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.owned, 1u);
  EXPECT_EQ(c.free + c.queued + c.owned, f.pool.chunk_count());
  f.pool.release(rep.held[0]);
  expect_pool_recovers(f, "held redelivery");
}

// ---- random kills -------------------------------------------------------------------------------------

// Producers and consumers work continuously on ring 1; the parent SIGKILLs one at a random moment, waits
// for it, reclaims it with Policy::redeliver and starts a replacement, 200+ times. Consumers check every
// payload (a torn message would show). At the end everyone stops cleanly, ring 1 is drained, and every
// chunk is back.
TEST(FaultTest, RandomKillsOfProducersAndConsumersLoseNoChunk) {
  constexpr int kKills = 3000;
  constexpr std::uint32_t kProducers = 2, kConsumers = 2;
  // The kill loop stops early (it needs only 200 kills) rather than run past this.
  constexpr auto kBudget = 20s;
  Fixture f("faultrandom");
  const std::string name = f.name.name;
  Root& root = *f.root;

  const std::function<int()> producer = [name] {
    auto ctx = open_child(name);
    if (!ctx) return kOpenFailed;
    ChunkPool& pool = ctx->pool;
    Root& r = *ctx->root;
    const auto deadline = Clock::now() + 60s;
    while (r.stop.load(std::memory_order_relaxed) == 0) {
      if (Clock::now() > deadline) return 80;
      std::uint32_t idx;
      if (pool.try_allocate(idx) != RingStatus::ok) {
        sched_yield();
        continue;
      }
      write_message(pool, idx, r.produced.fetch_add(1, std::memory_order_relaxed));
      while (pool.try_push(1, idx) != RingStatus::ok) {
        if (r.stop.load(std::memory_order_relaxed) != 0) {
          pool.release(idx);
          return 0;
        }
        sched_yield();
      }
    }
    return 0;
  };
  const std::function<int()> consumer = [name] {
    auto ctx = open_child(name);
    if (!ctx) return kOpenFailed;
    ChunkPool& pool = ctx->pool;
    Root& r = *ctx->root;
    const auto deadline = Clock::now() + 60s;
    while (r.stop.load(std::memory_order_relaxed) == 0) {
      if (Clock::now() > deadline) return 81;
      std::uint32_t idx;
      if (pool.try_pop(1, idx) != RingStatus::ok) {
        sched_yield();
        continue;
      }
      if (!message_intact(pool, idx)) r.torn.fetch_add(1, std::memory_order_relaxed);
      if (pool.header(idx).flags.load(std::memory_order_relaxed) & kChunkRedelivered)
        r.redelivered_seen.fetch_add(1, std::memory_order_relaxed);
      r.consumed.fetch_add(1, std::memory_order_relaxed);
      pool.release(idx);
    }
    return 0;
  };

  std::vector<Child> workers;
  // An assertion that returns early must not leave workers spinning on the segment: kill and reap every
  // worker not reaped yet (pid -1 marks a reaped one, whose pid may already be reused).
  struct Reaper {
    std::vector<Child>& w;
    ~Reaper() {
      for (auto& c : w)
        if (c.pid > 0) {
          ::kill(c.pid, SIGKILL);
          ::waitpid(c.pid, nullptr, 0);
        }
    }
  } reaper{workers};
  for (std::uint32_t k = 0; k < kProducers + kConsumers; ++k)
    workers.push_back(spawn(k < kProducers ? producer : consumer));

  std::mt19937 rng(12345);
  const auto start = Clock::now();
  int kills = 0;
  std::uint64_t reclaimed = 0, redelivered = 0, unpushed = 0;
  for (; kills < kKills && Clock::now() - start < kBudget; ++kills) {
    const std::uint32_t slot = rng() % workers.size();
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    ::kill(workers[slot].pid, SIGKILL);
    const auto e = test::wait_child(workers[slot].pid, 10s);
    workers[slot].pid = -1;
    ASSERT_FALSE(e.exited) << "worker " << slot << " ended by itself: " << exit_text(e);
    const ReclaimReport rep = f.pool.reclaim(workers[slot].id, Policy::redeliver);
    reclaimed += rep.freed + rep.redelivered + rep.held.size();
    redelivered += rep.redelivered;
    unpushed += rep.unpushed;
    for (auto idx : rep.held) f.pool.release(idx);  // ring 1 was full: drop that message
    workers[slot] = spawn(slot < kProducers ? producer : consumer);
  }
  EXPECT_GE(kills, 200) << "only " << kills << " kills fit in " << kBudget.count() << " s";

  root.stop.store(1);
  for (std::size_t k = 0; k < workers.size(); ++k) {
    const auto e = test::wait_child(workers[k].pid, 10s);
    workers[k].pid = -1;
    EXPECT_TRUE(e.exited && e.code == 0) << "worker " << k << " at stop: " << exit_text(e);
  }
  EXPECT_EQ(root.torn.load(), 0u) << "consumers saw torn payloads";
  EXPECT_GT(root.consumed.load(), 0u);
  RecordProperty("kills", kills);
  RecordProperty("consumed", static_cast<int>(root.consumed.load()));
  RecordProperty("reclaimed", static_cast<int>(reclaimed));
  RecordProperty("redelivered", static_cast<int>(redelivered));
  RecordProperty("unpushed", static_cast<int>(unpushed));
  expect_exact(f.pool, "after stop");

  const ProbeResult p = probe([&]() -> std::string {
    std::uint32_t idx;
    for (std::uint32_t k = 0; f.pool.try_pop(1, idx) == RingStatus::ok; ++k) {
      if (k > f.pool.chunk_count()) return "ring 1 yields more chunks than the pool has";
      if (!message_intact(f.pool, idx)) return "a queued message is torn";
      f.pool.release(idx);
    }
    return "";
  });
  ASSERT_TRUE(p.ok()) << "drain: " << p.text();
  const PoolCensus c = f.pool.census();
  EXPECT_TRUE(c.violations.empty()) << census_text(c);
  EXPECT_EQ(c.free, f.pool.chunk_count()) << census_text(c);
  const ProbeResult t = probe([&] { return pool_traffic(f.pool); });
  EXPECT_TRUE(t.ok()) << "traffic after the kills: " << t.text();
  std::printf(
      "[          ] %d kills, %llu consumed (%llu flagged redelivered), %llu chunks reclaimed (%llu "
      "redelivered, %llu unpushed)\n",
      kills, static_cast<unsigned long long>(root.consumed.load()),
      static_cast<unsigned long long>(root.redelivered_seen.load()),
      static_cast<unsigned long long>(reclaimed), static_cast<unsigned long long>(redelivered),
      static_cast<unsigned long long>(unpushed));
}

}  // namespace
}  // namespace shmbus
