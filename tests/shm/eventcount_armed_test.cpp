// Stress and fault tests for EventCount's "Armed" bit (eventcount.hpp: "Memory ordering", "Armed", "Dead
// waiters"): bit 0 of `seq` is set by each futex waiter's W2 and cleared by the one notifier that makes
// the FUTEX_WAKE; a notifier that finds waiters counted but the bit clear makes no syscall.
//
// What could go wrong with that, and what these tests drive at:
//  - several waiters with different keys, waiters that time out or cancel (W3 true) and leave the bit
//    set, notifiers that clear the bit without publishing anything (noise), notify() and the fan-out's
//    one fence + notify_fenced(), in ping-pong rounds where every waiter must see every round;
//  - eventfd waiters next to futex waiters on the same EventCount, and alone;
//  - processes killed at random points of a wait (forget() by the "supervisor") while others go on;
//  - notifiers stopped or killed between the CAS that clears the bit (N4) and their FUTEX_WAKE, stopped
//    exactly there with ptrace: the waiters they were about to wake must still be woken by the next
//    notify of another notifier;
//  - processes killed at random points of a notify;
//  - seq wrapping around.
//
// Every wait is bounded (a few seconds), so a lost wake-up shows as a failure naming the round, never as
// a hang. The thread tests also run under ThreadSanitizer (with fewer rounds).
#include <gtest/gtest.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "shmbus/eventcount.hpp"
#include "test_util.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

#if defined(SHMBUS_TEST_TSAN)
constexpr std::uint32_t kSlowdown = 2;  // same shapes, fewer rounds
#else
constexpr std::uint32_t kSlowdown = 1;
#endif

// A waiter that must see a round waits this long at most: far above any scheduling delay on a loaded
// 2-core host, far below ctest's timeout.
constexpr auto kLostWakeUp = 3s;

constexpr std::uint32_t kEcs = 4;
constexpr std::uint32_t kRecords = 16;
constexpr std::uint32_t kMaxWaiters = 16;

struct alignas(kCacheLine) Shared {
  EventCountShared ec[kEcs];
  WaiterRecord records[kRecords];
  alignas(kCacheLine) std::atomic<std::uint32_t> hwm;
  alignas(kCacheLine) std::atomic<std::uint32_t> round[kEcs];  // the data (N1): one word per EventCount
  alignas(kCacheLine) std::atomic<std::uint32_t> ack[kMaxWaiters];
  alignas(kCacheLine) std::atomic<std::uint32_t> stop;
  std::atomic<std::uint32_t> failed_round;  // first round a waiter gave up on (0: none)
  std::atomic<std::uint32_t> failed_waiter;
  std::atomic<std::uint64_t> waits;     // waits that ended in W4 (slept or found the key stale)
  std::atomic<std::uint64_t> timeouts;  // short waits that timed out and re-armed
};

// One segment holding Shared, removed at the end; children inherit the mapping over fork().
struct Rig {
  test::ScopedName name{test::unique_name("eca")};
  Segment seg;
  Shared* s = nullptr;
  WaiterTable table;

  Rig() {
    seg = Segment::create(name.name, {.size = sizeof(Shared) + 8192}).value();
    auto ref = seg.allocate<Shared>(1, alignof(Shared)).value();
    s = new (seg.at(ref)) Shared();
    for (auto& e : s->ec) EventCount::init(&e);
    for (auto& r : s->records) {
      r.owner.store(0);
      for (auto& l : r.waiting) l.store(0);
    }
    s->hwm.store(0);
    for (auto& r : s->round) r.store(0);
    for (auto& a : s->ack) a.store(0);
    s->stop.store(0);
    s->failed_round.store(0);
    s->failed_waiter.store(0);
    s->waits.store(0);
    s->timeouts.store(0);
    seg.set_root(ref);
    seg.publish();
    table.records = s->records;
    table.capacity = kRecords;
    table.hwm = &s->hwm;
  }

  // A waiter's EventCount on ec[k]: counted in futex_sleepers (one waiting process, a subscriber's wake
  // word), or in the record of `me` (a queue's not_empty: many processes).
  EventCount waiter(std::uint32_t k, bool table_mode, std::uint64_t me) {
    if (!table_mode) return EventCount(&s->ec[k]);
    std::uint32_t index = 0;
    WaiterRecord* mine = table.claim(me, &index);
    EXPECT_NE(mine, nullptr);
    return EventCount(&s->ec[k], &table, 0, mine);
  }
  EventCount notifier(std::uint32_t k, bool table_mode) {
    return table_mode ? EventCount(&s->ec[k], &table, 0) : EventCount(&s->ec[k]);
  }
  std::uint32_t lane_total() const {
    std::uint32_t n = 0;
    for (const auto& r : s->records) n += r.waiting[0].load() + r.waiting[1].load();
    return n;
  }
  void forget(pid_t pid) {
    for (auto& r : s->records)
      if (r.owner.load() == static_cast<std::uint64_t>(pid)) EventCount::forget(r);
    (void)table.lower();
  }
  void fail(std::uint32_t round, std::uint32_t waiter) {
    std::uint32_t zero = 0;
    if (s->failed_round.compare_exchange_strong(zero, round)) s->failed_waiter.store(waiter);
    s->stop.store(1);
  }
};

// Wait until ready() in slices of `slice` (each a full prepare_wait / wait, re-armed after a timeout), for
// `total` at most. Returns ready()'s last value.
template <typename Ready>
bool await_sliced(EventCount& ec, Ready&& ready, std::chrono::nanoseconds total,
                  std::chrono::nanoseconds slice, Shared* s) {
  const auto deadline = Clock::now() + total;
  for (;;) {
    if (ready()) return true;
    const auto left = deadline - Clock::now();
    if (left <= 0ns) return ready();
    if (ec.await(ready, std::min<std::chrono::nanoseconds>(left, slice))) return true;
    s->timeouts.fetch_add(1, std::memory_order_relaxed);
  }
}

// The same for the eventfd waiter: arm (W1), re-check (W3), poll (W4), consume, disarm.
template <typename Ready>
bool fd_await(EventFdWaiter& w, EventCount& ec, Ready&& ready, std::chrono::nanoseconds total,
              std::chrono::nanoseconds slice) {
  const auto deadline = Clock::now() + total;
  for (;;) {
    if (ready()) return true;
    w.arm(ec);
    if (ready()) {
      w.disarm(ec);
      return true;
    }
    const auto left = deadline - Clock::now();
    if (left <= 0ns) {
      w.disarm(ec);
      return ready();
    }
    (void)w.wait(std::min<std::chrono::nanoseconds>(left, slice));
    (void)w.consume();
    w.disarm(ec);
  }
}

std::uint32_t min_ack(const Shared* s, std::uint32_t from, std::uint32_t to) {
  std::uint32_t m = UINT32_MAX;
  for (std::uint32_t i = from; i < to; ++i) m = std::min(m, s->ack[i].load(std::memory_order_acquire));
  return m;
}

// ---- threads: many waiters, many notifiers ---------------------------------------------------------------

// Rounds on ec[0]: the driver publishes round r (N1) and notifies, alternating notify() with the fan-out's
// fence + notify_fenced(); noise notifiers notify without publishing, so that the driver often finds the bit
// cleared by someone else. Waiters: "long" ones sleep up to kLostWakeUp per round (they detect a lost
// wake-up); "churn" ones time out every 10-300 us and re-arm, or arm and cancel, leaving the bit set.
void many_waiters_many_notifiers(bool table_mode) {
  Rig rig;
  Shared* s = rig.s;
  constexpr std::uint32_t kLong = 3, kChurn = 2, kNoise = 2;
  const std::uint32_t rounds = 30000 / kSlowdown;
  std::vector<std::thread> threads;
  for (std::uint32_t i = 0; i < kLong + kChurn; ++i)
    threads.emplace_back([&, i] {
      EventCount ec = rig.waiter(0, table_mode, 100 + i);
      std::mt19937 rng(i);
      const bool churn = i >= kLong;
      for (std::uint32_t r = 1; r <= rounds && s->stop.load() == 0; ++r) {
        auto ready = [&] { return s->round[0].load(std::memory_order_acquire) >= r || s->stop.load() != 0; };
        if (churn && rng() % 4 == 0) {  // armed, then the condition "came true": the bit stays set
          (void)ec.prepare_wait();
          ec.cancel_wait();
        }
        const auto slice = churn ? std::chrono::microseconds(10 + rng() % 290) : kLostWakeUp;
        if (!await_sliced(ec, ready, kLostWakeUp, slice, s)) {
          rig.fail(r, i);
          return;
        }
        s->ack[i].store(r, std::memory_order_release);
      }
    });
  for (std::uint32_t n = 0; n < kNoise; ++n)
    threads.emplace_back([&, n] {
      EventCount ec = rig.notifier(0, table_mode);
      std::mt19937 rng(1000 + n);
      while (s->stop.load(std::memory_order_relaxed) == 0) {
        ec.notify();
        if (rng() % 2 == 0)
          std::this_thread::yield();
        else
          std::this_thread::sleep_for(std::chrono::microseconds(rng() % 100));
      }
    });
  EventCount ec = rig.notifier(0, table_mode);
  std::mt19937 rng(77);
  const auto t0 = Clock::now();
  std::uint32_t done = 0;
  for (std::uint32_t r = 1; r <= rounds && s->stop.load() == 0; ++r) {
    if (rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 50));  // let them sleep
    s->round[0].store(r, std::memory_order_release);                                         // N1
    if (r % 2 == 0) {
      ec.notify();
    } else {
      std::atomic_thread_fence(std::memory_order_seq_cst);  // N2, as StreamPublisher::fan_out
      ec.notify_fenced();
    }
    const auto until = Clock::now() + kLostWakeUp + 2s;
    while (min_ack(s, 0, kLong + kChurn) < r && s->stop.load() == 0 && Clock::now() < until)
      std::this_thread::yield();
    if (min_ack(s, 0, kLong + kChurn) < r) break;
    done = r;
  }
  s->stop.store(1);
  s->round[0].store(UINT32_MAX, std::memory_order_release);
  ec.notify();
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_EQ(s->failed_round.load(), 0u)
      << "waiter " << s->failed_waiter.load() << " was not woken for round " << s->failed_round.load()
      << " within " << kLostWakeUp.count() << " s";
  EXPECT_EQ(done, rounds);
  EXPECT_EQ(rig.lane_total() + s->ec[0].futex_sleepers.load(), 0u) << "a waiter left its count behind";
  std::printf(
      "[ rounds ] %u rounds x %u waiters, %u noise notifiers, %s mode: %.2f s, %u syscalls, %llu "
      "short-wait timeouts\n",
      done, kLong + kChurn, kNoise, table_mode ? "table" : "single-count", secs, s->ec[0].wakes.load(),
      static_cast<unsigned long long>(s->timeouts.load()));
}

TEST(EventCountArmedTest, ManyWaitersManyNotifiersCountedOnce) {
  many_waiters_many_notifiers(false);
}
TEST(EventCountArmedTest, ManyWaitersManyNotifiersInWaiterRecords) {
  many_waiters_many_notifiers(true);
}

// A publisher's fan-out: one fence, then notify_fenced() on each subscriber's wake word (stream_port.cpp).
// One waiter per EventCount, as subscribers; a noise notifier clears bits at random.
TEST(EventCountArmedTest, FanOutWithOneFenceLosesNoWakeUp) {
  Rig rig;
  Shared* s = rig.s;
  const std::uint32_t rounds = 20000 / kSlowdown;
  std::vector<std::thread> threads;
  for (std::uint32_t k = 0; k < kEcs; ++k)
    threads.emplace_back([&, k] {
      EventCount ec(&s->ec[k]);
      for (std::uint32_t r = 1; r <= rounds && s->stop.load() == 0; ++r) {
        if (!ec.await([&] { return s->round[k].load(std::memory_order_acquire) >= r || s->stop.load() != 0; },
                      kLostWakeUp)) {
          rig.fail(r, k);
          return;
        }
        s->ack[k].store(r, std::memory_order_release);
      }
    });
  threads.emplace_back([&] {
    std::mt19937 rng(7);
    while (s->stop.load(std::memory_order_relaxed) == 0) {
      EventCount(&s->ec[rng() % kEcs]).notify();
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 50));
    }
  });
  std::mt19937 rng(78);
  const auto t0 = Clock::now();
  std::uint32_t done = 0;
  for (std::uint32_t r = 1; r <= rounds && s->stop.load() == 0; ++r) {
    if (rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 50));
    for (std::uint32_t k = 0; k < kEcs; ++k) s->round[k].store(r, std::memory_order_release);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    for (std::uint32_t k = 0; k < kEcs; ++k) EventCount(&s->ec[k]).notify_fenced();
    const auto until = Clock::now() + kLostWakeUp + 2s;
    while (min_ack(s, 0, kEcs) < r && s->stop.load() == 0 && Clock::now() < until) std::this_thread::yield();
    if (min_ack(s, 0, kEcs) < r) break;
    done = r;
  }
  s->stop.store(1);
  for (std::uint32_t k = 0; k < kEcs; ++k) {
    s->round[k].store(UINT32_MAX, std::memory_order_release);
    EventCount(&s->ec[k]).notify();
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(s->failed_round.load(), 0u)
      << "subscriber " << s->failed_waiter.load() << " missed round " << s->failed_round.load();
  EXPECT_EQ(done, rounds);
  std::uint32_t syscalls = 0;
  for (const auto& e : s->ec) syscalls += e.wakes.load();
  std::printf("[ rounds ] %u rounds x %u subscribers (one fence, notify_fenced): %.2f s, %u syscalls\n", done,
              kEcs, std::chrono::duration<double>(Clock::now() - t0).count(), syscalls);
}

// Futex waiters and the eventfd waiter on one EventCount (ec[0]), and the eventfd waiter alone on another
// (ec[1], where a futex waiter only ever arms and cancels, so that the bit is set but nobody sleeps on the
// futex). The eventfd waiter must see every round on both, whatever the bit says.
TEST(EventCountArmedTest, EventFdAndFutexWaitersMixed) {
  Rig rig;
  Shared* s = rig.s;
  auto fdw = EventFdWaiter::create();
  ASSERT_TRUE(fdw);
  const std::uint32_t rounds = 20000 / kSlowdown;
  std::vector<std::thread> threads;
  // ack[0], ack[1]: futex waiters on ec[0] (one long, one churning). ack[2]: the eventfd waiter (both).
  for (std::uint32_t i = 0; i < 2; ++i)
    threads.emplace_back([&, i] {
      EventCount ec(&s->ec[0]);
      for (std::uint32_t r = 1; r <= rounds && s->stop.load() == 0; ++r) {
        auto ready = [&] { return s->round[0].load(std::memory_order_acquire) >= r || s->stop.load() != 0; };
        if (!await_sliced(ec, ready, kLostWakeUp, i == 0 ? kLostWakeUp : std::chrono::nanoseconds(50us), s)) {
          rig.fail(r, i);
          return;
        }
        s->ack[i].store(r, std::memory_order_release);
      }
    });
  threads.emplace_back([&] {
    EventCount a(&s->ec[0]), b(&s->ec[1]);
    for (std::uint32_t r = 1; r <= rounds && s->stop.load() == 0; ++r) {
      // Alternate: wait on ec[0] (shared with the futex waiters), then on ec[1] (alone).
      EventCount& ec = r % 2 == 0 ? a : b;
      const std::uint32_t k = r % 2 == 0 ? 0 : 1;
      auto ready = [&] { return s->round[k].load(std::memory_order_acquire) >= r || s->stop.load() != 0; };
      if (!fd_await(*fdw, ec, ready, kLostWakeUp, kLostWakeUp)) {
        rig.fail(r, 2);
        return;
      }
      s->ack[2].store(r, std::memory_order_release);
    }
  });
  threads.emplace_back([&] {  // on ec[1]: arms and cancels (the bit stays set), never sleeps
    EventCount ec(&s->ec[1]);
    while (s->stop.load(std::memory_order_relaxed) == 0) {
      (void)ec.prepare_wait();
      ec.cancel_wait();
      std::this_thread::sleep_for(20us);
    }
  });
  EventCount n0(&s->ec[0]), n1(&s->ec[1]);
  n0.set_notify_fd(fdw->fd());
  n1.set_notify_fd(fdw->fd());
  std::mt19937 rng(79);
  const auto t0 = Clock::now();
  std::uint32_t done = 0;
  for (std::uint32_t r = 1; r <= rounds && s->stop.load() == 0; ++r) {
    if (rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 50));
    s->round[0].store(r, std::memory_order_release);
    s->round[1].store(r, std::memory_order_release);
    n0.notify();
    n1.notify();
    const auto until = Clock::now() + kLostWakeUp + 2s;
    while (min_ack(s, 0, 3) < r && s->stop.load() == 0 && Clock::now() < until) std::this_thread::yield();
    if (min_ack(s, 0, 3) < r) break;
    done = r;
  }
  s->stop.store(1);
  s->round[0].store(UINT32_MAX, std::memory_order_release);
  s->round[1].store(UINT32_MAX, std::memory_order_release);
  n0.notify();
  n1.notify();
  for (auto& t : threads) t.join();
  EXPECT_EQ(s->failed_round.load(), 0u)
      << "waiter " << s->failed_waiter.load() << " (2: eventfd) missed round " << s->failed_round.load();
  EXPECT_EQ(done, rounds);
  EXPECT_EQ(s->ec[0].fd_sleepers.load() + s->ec[1].fd_sleepers.load(), 0u);
  std::printf("[ rounds ] %u rounds, 2 futex waiters + 1 eventfd waiter: %.2f s, %u + %u wakes\n", done,
              std::chrono::duration<double>(Clock::now() - t0).count(), s->ec[0].wakes.load(),
              s->ec[1].wakes.load());
}

// The bit and the eventfd: an eventfd waiter is woken although a futex waiter armed and left (the bit is
// set, futex_sleepers is 0), and although a notifier cleared the bit just before (the bit is clear while
// the fd waiter is counted).
TEST(EventCountArmedTest, EventFdWaiterIgnoresTheBit) {
  Rig rig;
  auto fdw = EventFdWaiter::create();
  ASSERT_TRUE(fdw);
  EventCount waiter(&rig.s->ec[0]);
  EventCount notifier(&rig.s->ec[0]);
  notifier.set_notify_fd(fdw->fd());
  (void)waiter.prepare_wait();
  waiter.cancel_wait();  // bit set, nobody on the futex
  fdw->arm(waiter);
  notifier.notify();
  EXPECT_TRUE(fdw->wait(1s));
  EXPECT_GE(fdw->consume(), 1u);
  // Bit set by a sleeper-to-be, cleared by a notify; the fd waiter arms after: the next notify reaches it.
  const std::uint32_t key = waiter.prepare_wait();
  notifier.notify();
  EXPECT_EQ(rig.s->ec[0].seq.load() & kArmed, 0u);
  (void)fdw->consume();
  notifier.notify();
  EXPECT_TRUE(fdw->wait(1s)) << "the eventfd waiter was skipped because the bit was clear";
  fdw->disarm(waiter);
  EXPECT_TRUE(waiter.wait(key, 1s));  // stale key: returns at once
}

// seq wraps after 2^31 armed waits: ping-pong across the wrap (both directions of the CAS arithmetic).
TEST(EventCountArmedTest, SeqWrapAroundLosesNoWakeUp) {
  Rig rig;
  Shared* s = rig.s;
  for (const std::uint32_t start : {0xFFFFFFF0u, 0xFFFFFFF1u}) {
    s->ec[0].seq.store(start);
    s->round[0].store(0);
    s->ack[0].store(0);
    s->stop.store(0);
    constexpr std::uint32_t kRounds = 1000;
    std::thread t([&] {
      EventCount ec(&s->ec[0]);
      for (std::uint32_t r = 1; r <= kRounds; ++r) {
        if (!ec.await([&] { return s->round[0].load(std::memory_order_acquire) >= r; }, kLostWakeUp)) {
          rig.fail(r, 0);
          return;
        }
        s->ack[0].store(r, std::memory_order_release);
      }
    });
    EventCount ec(&s->ec[0]);
    for (std::uint32_t r = 1; r <= kRounds && s->stop.load() == 0; ++r) {
      s->round[0].store(r, std::memory_order_release);
      ec.notify();
      while (s->ack[0].load(std::memory_order_acquire) < r && s->stop.load() == 0) std::this_thread::yield();
    }
    t.join();
    EXPECT_EQ(s->failed_round.load(), 0u) << "from seq " << start;
    EXPECT_LT(s->ec[0].seq.load(), start) << "seq did not wrap";
  }
}

// ---- processes: waiters killed at random --------------------------------------------------------------

// Live waiter processes (counted in their waiter records, as a queue's consumers) must see every round
// while other processes that wait and notify on the same EventCount are SIGKILLed at random points
// (between W1 and W2, W2 and FUTEX_WAIT, in it, in cancel, in a notify), and the parent, as the
// supervisor, forget()s their records.
TEST(EventCountArmedProcessTest, LiveWaitersSeeEveryRoundWhileOthersAreKilled) {
  Rig rig;
  Shared* s = rig.s;
  constexpr std::uint32_t kLive = 2, kDoomed = 3;
  const std::uint32_t rounds = 6000 / kSlowdown;
  std::vector<pid_t> live;
  for (std::uint32_t i = 0; i < kLive; ++i)
    live.push_back(test::fork_child([&, i] {
      EventCount ec = rig.waiter(0, true, static_cast<std::uint64_t>(getpid()));
      for (std::uint32_t r = 1; r <= rounds; ++r) {
        if (!ec.await([&] { return s->round[0].load(std::memory_order_acquire) >= r || s->stop.load() != 0; },
                      kLostWakeUp)) {
          rig.fail(r, i);
          return 3;
        }
        if (s->stop.load() != 0) return 0;
        s->ack[i].store(r, std::memory_order_release);
      }
      return 0;
    }));
  auto spawn_doomed = [&](std::uint32_t seed) {
    return test::fork_child([&, seed] {
      EventCount ec = rig.waiter(0, true, static_cast<std::uint64_t>(getpid()));
      EventCount n = rig.notifier(0, true);
      std::mt19937 rng(seed);
      for (;;) {
        switch (rng() % 4) {
          case 0: {  // arm and cancel: leaves the bit set
            (void)ec.prepare_wait();
            ec.cancel_wait();
            break;
          }
          case 1: {  // a short sleep that times out
            const std::uint32_t key = ec.prepare_wait();
            (void)ec.wait(key, std::chrono::microseconds(rng() % 300));
            break;
          }
          case 2:  // a notify with nothing new: clears the bit, wakes everyone
            n.notify();
            break;
          default:
            (void)ec.await([] { return false; }, std::chrono::microseconds(rng() % 500));
        }
      }
      return 0;
    });
  };
  std::vector<pid_t> doomed;
  for (std::uint32_t i = 0; i < kDoomed; ++i) doomed.push_back(spawn_doomed(i + 1));
  std::mt19937 rng(4242);
  std::uint32_t kills = 0, done = 0;
  EventCount ec = rig.notifier(0, true);
  const auto t0 = Clock::now();
  for (std::uint32_t r = 1; r <= rounds && s->stop.load() == 0; ++r) {
    s->round[0].store(r, std::memory_order_release);
    ec.notify();
    if (rng() % 4 == 0) {  // kill one while the live waiters wake up
      const std::size_t v = rng() % doomed.size();
      if (rng() % 2 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
      kill(doomed[v], SIGKILL);
      const auto ex = test::wait_child(doomed[v], 10s);
      EXPECT_EQ(ex.signal, SIGKILL);
      rig.forget(doomed[v]);
      doomed[v] = spawn_doomed(static_cast<std::uint32_t>(rng()));
      ++kills;
    }
    const auto until = Clock::now() + kLostWakeUp + 2s;
    while (min_ack(s, 0, kLive) < r && s->stop.load() == 0 && Clock::now() < until) std::this_thread::yield();
    if (min_ack(s, 0, kLive) < r) break;
    done = r;
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  s->stop.store(1);
  s->round[0].store(UINT32_MAX, std::memory_order_release);
  ec.notify();
  for (pid_t p : live) {
    const auto ex = test::wait_child(p, 10s);
    EXPECT_TRUE(ex.exited && ex.code == 0) << "live waiter: code " << ex.code << ", signal " << ex.signal;
    rig.forget(p);
  }
  for (pid_t p : doomed) {
    kill(p, SIGKILL);
    (void)test::wait_child(p, 10s);
    rig.forget(p);
  }
  EXPECT_EQ(s->failed_round.load(), 0u)
      << "live waiter " << s->failed_waiter.load() << " was not woken for round " << s->failed_round.load();
  EXPECT_EQ(done, rounds);
  EXPECT_EQ(rig.lane_total(), 0u);
  EXPECT_EQ(s->hwm.load(), 0u);
  // Nobody counted: a notify makes no syscall, whatever the bit.
  const auto wakes = s->ec[0].wakes.load();
  ec.notify();
  EXPECT_EQ(s->ec[0].wakes.load(), wakes);
  std::printf(
      "[ rounds ] %u rounds, 2 live waiter processes, %u kills of waiting/notifying processes: %.2f s\n",
      done, kills, secs);
}

// ---- processes: notifiers stopped or killed between clearing the bit and waking ---------------------------

// Wait until `pid` sleeps in a futex syscall (/proc/<pid>/syscall starts with its number), for 3 s at most.
// Where that file cannot be read, settle for the sleeper count (`counted`) and 50 ms more.
bool asleep_in_futex(pid_t pid, const std::function<bool()>& counted) {
  const std::string path = "/proc/" + std::to_string(pid) + "/syscall";
  const std::string want = std::to_string(SYS_futex) + " ";
  bool readable = true;
  const bool asleep = test::wait_until(
      [&] {
        FILE* f = std::fopen(path.c_str(), "r");
        char buf[64] = {};
        const std::size_t n = f != nullptr ? std::fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f != nullptr) std::fclose(f);
        if (n == 0) {
          readable = false;
          return true;
        }
        return counted() && std::string(buf, n).rfind(want, 0) == 0;
      },
      3000ms);
  if (readable) return asleep;
  if (!test::wait_until(counted, 3000ms)) return false;
  std::this_thread::sleep_for(50ms);
  return true;
}

enum class Fate { stopped, killed };

#if defined(__x86_64__)
// Fork a child that runs `body` under ptrace, and stop it at the entry of its first FUTEX_WAKE on `word`:
// it has done everything before that syscall (N4's CAS included), and not the syscall. Returns its pid
// (stopped, traced: it dies with us); -1 if the child ended without making that syscall; -2 if ptrace
// is not available here.
pid_t stop_at_futex_wake(const std::atomic<std::uint32_t>* word, const std::function<void()>& body) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) _exit(10);
    raise(SIGSTOP);
    body();
    _exit(0);
  }
  int st = 0;
  if (waitpid(pid, &st, 0) != pid) return -2;
  if (!WIFSTOPPED(st)) return -2;  // PTRACE_TRACEME failed (exit 10)
  if (ptrace(PTRACE_SETOPTIONS, pid, nullptr, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL) != 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -2;
  }
  long sig = 0;
  for (;;) {
    if (ptrace(PTRACE_SYSCALL, pid, nullptr, reinterpret_cast<void*>(sig)) != 0) return -2;
    sig = 0;
    if (waitpid(pid, &st, 0) != pid || !WIFSTOPPED(st)) return -1;  // ended: never made the syscall
    if (WSTOPSIG(st) != (SIGTRAP | 0x80)) {
      if (WSTOPSIG(st) != SIGSTOP) sig = WSTOPSIG(st);  // pass real signals on
      continue;
    }
    user_regs_struct regs{};
    if (ptrace(PTRACE_GETREGS, pid, nullptr, &regs) != 0) return -2;
    // At a syscall-entry stop rax holds -ENOSYS; FUTEX_WAKE never returns it.
    if (regs.orig_rax == SYS_futex && regs.rax == static_cast<unsigned long long>(-ENOSYS) &&
        regs.rdi == reinterpret_cast<std::uintptr_t>(word) && (regs.rsi & FUTEX_CMD_MASK) == FUTEX_WAKE)
      return pid;
  }
}
#endif

// Waiter processes asleep on ec[0] for round >= 2 (one counted in futex_sleepers, a subscriber's wake word
// with several publishers; or two in waiter records, a queue's consumers). A notifier publishes round 1
// and is stopped by ptrace after its CAS cleared the bit and before its FUTEX_WAKE; then it stays stopped
// (a process preempted or SIGSTOPped there) or is SIGKILLed. Another notifier then publishes round 2 and
// notifies: every waiter must wake. (Before the "Armed" bit, every notify that saw a waiter counted made a
// FUTEX_WAKE, so the second notifier's did; a notifier that finds the bit clear must not assume that the
// clearer's FUTEX_WAKE was made.)
void interrupted_notifier(bool table_mode, Fate fate) {
#if !defined(__x86_64__)
  GTEST_SKIP() << "ptrace register layout: x86-64 only";
#else
  Rig rig;
  Shared* s = rig.s;
  const std::uint32_t nwaiters = table_mode ? 2 : 1;
  std::vector<pid_t> waiters;
  for (std::uint32_t i = 0; i < nwaiters; ++i)
    waiters.push_back(test::fork_child([&] {
      EventCount ec = rig.waiter(0, table_mode, static_cast<std::uint64_t>(getpid()));
      // 10 s: the parent gives up after kLostWakeUp, so this bound only keeps a failure from lingering.
      return ec.await([&] { return s->round[0].load(std::memory_order_acquire) >= 2; }, 10s) ? 0 : 3;
    }));
  auto kill_all = [&] {
    for (pid_t p : waiters) {
      kill(p, SIGKILL);
      (void)test::wait_child(p, 5s);
    }
  };
  auto counted = [&] { return (table_mode ? rig.lane_total() : s->ec[0].futex_sleepers.load()) == nwaiters; };
  for (pid_t p : waiters)
    if (!asleep_in_futex(p, counted)) {
      kill_all();
      FAIL() << "waiter " << p << " did not go to sleep";
    }
  ASSERT_NE(s->ec[0].seq.load() & kArmed, 0u);
  const pid_t stuck = stop_at_futex_wake(&s->ec[0].seq, [&] {
    s->round[0].store(1, std::memory_order_release);
    rig.notifier(0, table_mode).notify();
  });
  if (stuck < 0) {
    kill_all();
    if (stuck == -2) GTEST_SKIP() << "ptrace is not available here";
    FAIL() << "the notifier made no FUTEX_WAKE although its waiters were armed and asleep";
  }
  // The stuck notifier took the bit: every later notifier finds it clear.
  EXPECT_EQ(s->ec[0].seq.load() & kArmed, 0u);
  int st = 0;
  if (fate == Fate::killed) {
    kill(stuck, SIGKILL);
    waitpid(stuck, &st, 0);
  }
  const auto t0 = Clock::now();
  s->round[0].store(2, std::memory_order_release);  // N1
  rig.notifier(0, table_mode).notify();
  for (pid_t p : waiters) {
    const auto ex = test::wait_child(p, std::chrono::duration_cast<std::chrono::milliseconds>(kLostWakeUp));
    EXPECT_TRUE(ex.exited && ex.code == 0)
        << "lost wake-up: a waiter still asleep " << kLostWakeUp.count()
        << " s after round 2 was published and "
        << "notified, because the notifier " << (fate == Fate::killed ? "killed" : "stopped")
        << " between clearing kArmed and its FUTEX_WAKE left the bit clear";
  }
  std::printf("[ woken  ] %s mode, notifier %s: waiters woke after %.1f ms\n",
              table_mode ? "table" : "single-count", fate == Fate::killed ? "killed" : "stopped",
              std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  if (fate == Fate::stopped) {
    kill(stuck, SIGKILL);
    waitpid(stuck, &st, 0);
  }
#endif
}

TEST(EventCountArmedProcessTest, NotifierStoppedBeforeItsWakeHoldsNoWaiterHostage) {
  interrupted_notifier(false, Fate::stopped);
}
TEST(EventCountArmedProcessTest, NotifierKilledBeforeItsWakeLosesNoWakeUp) {
  interrupted_notifier(false, Fate::killed);
}
TEST(EventCountArmedProcessTest, QueueNotifierStoppedBeforeItsWakeHoldsNoWaiterHostage) {
  interrupted_notifier(true, Fate::stopped);
}
TEST(EventCountArmedProcessTest, QueueNotifierKilledBeforeItsWakeLosesNoWakeUp) {
  interrupted_notifier(true, Fate::killed);
}

// Notifier processes publish (a counter per EventCount) and notify ec[0] (one waiter counted in
// futex_sleepers) and ec[1] (two waiters in records) with the fan-out's one fence, and are SIGKILLed at
// random moments, some of them inside notify(). The waiters must keep seeing the counters move: a lost
// wake-up shows as a waiter that saw nothing new for kLostWakeUp while notifiers went on publishing.
// (The window between N4's CAS and the FUTEX_WAKE is a few instructions: random kills rarely land in it,
// which is why the tests above stop a notifier there with ptrace.)
TEST(EventCountArmedProcessTest, RandomKillsOfNotifiersLoseNoWakeUp) {
  Rig rig;
  Shared* s = rig.s;
  constexpr std::uint32_t kNotifiers = 3;
  std::vector<pid_t> waiters;
  for (std::uint32_t i = 0; i < 3; ++i)
    waiters.push_back(test::fork_child([&, i] {
      const std::uint32_t k = i == 0 ? 0 : 1;
      EventCount ec = rig.waiter(k, k == 1, static_cast<std::uint64_t>(getpid()));
      std::uint32_t seen = 0;
      while (s->stop.load() == 0) {
        const std::uint32_t last = seen;
        if (!ec.await(
                [&] {
                  seen = s->round[k].load(std::memory_order_acquire);
                  return seen != last || s->stop.load() != 0;
                },
                kLostWakeUp)) {
          rig.fail(last, i);
          return 3;
        }
        s->ack[i].fetch_add(1, std::memory_order_relaxed);
      }
      return 0;
    }));
  auto spawn_notifier = [&](std::uint32_t seed) {
    return test::fork_child([&, seed] {
      std::mt19937 rng(seed);
      EventCount a = rig.notifier(0, false), b = rig.notifier(1, true);
      for (;;) {
        s->round[0].fetch_add(1, std::memory_order_release);
        s->round[1].fetch_add(1, std::memory_order_release);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        a.notify_fenced();
        b.notify_fenced();
        if (rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
      }
      return 0;
    });
  };
  std::vector<pid_t> notifiers;
  for (std::uint32_t i = 0; i < kNotifiers; ++i) notifiers.push_back(spawn_notifier(i + 11));
  std::mt19937 rng(99);
  std::uint32_t kills = 0;
  const auto end = Clock::now() + (kSlowdown > 1 ? 3s : 5s);
  while (Clock::now() < end && s->stop.load() == 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(200 + rng() % 3000));
    const std::size_t v = rng() % notifiers.size();
    kill(notifiers[v], SIGKILL);
    (void)test::wait_child(notifiers[v], 10s);
    notifiers[v] = spawn_notifier(static_cast<std::uint32_t>(rng()));
    ++kills;
  }
  for (pid_t p : notifiers) {
    kill(p, SIGKILL);
    (void)test::wait_child(p, 10s);
  }
  s->stop.store(1);
  for (std::uint32_t k = 0; k < 2; ++k) {
    s->round[k].fetch_add(1, std::memory_order_release);
    rig.notifier(k, k == 1).notify();
  }
  for (pid_t p : waiters) {
    const auto ex = test::wait_child(p, 10s);
    EXPECT_TRUE(ex.exited && ex.code == 0) << "waiter: code " << ex.code << ", signal " << ex.signal;
  }
  EXPECT_EQ(s->failed_round.load() + s->failed_waiter.load(), 0u)
      << "waiter " << s->failed_waiter.load() << " saw nothing new for " << kLostWakeUp.count()
      << " s after round " << s->failed_round.load();
  std::printf("[ kills  ] %u notifier kills; waiters woke %u / %u / %u times\n", kills, s->ack[0].load(),
              s->ack[1].load(), s->ack[2].load());
}

}  // namespace
}  // namespace shmbus
