#include "shmbus/eventcount.hpp"

#include <gtest/gtest.h>
#include <sys/epoll.h>

#include <thread>

#include "test_util.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;

struct Shared {
  EventCountShared ec[2];
  std::atomic<std::uint32_t> flag[2];
  std::atomic<std::uint32_t> child_ready;
};

struct EcFixture {
  test::ScopedName name{test::unique_name("ec")};
  Segment seg;
  Shared* s = nullptr;
  EcFixture() {
    seg = Segment::create(name.name, {.size = 4096}).value();
    auto ref = seg.allocate<Shared>(1, kCacheLine).value();
    s = seg.at(ref);
    EventCount::init(&s->ec[0]);
    EventCount::init(&s->ec[1]);
    seg.set_root(ref);
    seg.publish();
  }
};

TEST(EventCountTest, NotifyWithoutSleeperMakesNoSyscall) {
  EcFixture f;
  EventCount ec(&f.s->ec[0]);
  for (int i = 0; i < 1000; ++i) ec.notify();
  EXPECT_EQ(f.s->ec[0].seq.load(), 0u);    // never bumped
  EXPECT_EQ(f.s->ec[0].wakes.load(), 0u);  // never entered the slow path
}

TEST(EventCountTest, NotifyWithSleeperBumpsAndWakes) {
  EcFixture f;
  EventCount ec(&f.s->ec[0]);
  const std::uint32_t key = ec.prepare_wait();
  ec.notify();
  EXPECT_EQ(f.s->ec[0].seq.load(), key + 1);
  EXPECT_EQ(f.s->ec[0].wakes.load(), 1u);
  EXPECT_TRUE(ec.wait(key, 1s));  // seq moved: returns at once
  EXPECT_EQ(f.s->ec[0].futex_sleepers.load(), 0u);
}

// "Armed": once a notifier woke the sleepers, later notifiers make no syscall until a waiter takes a new
// key, although the woken waiter is still counted (it has not left W4 yet). Before, each of them woke it
// again: a futex syscall per message while a woken subscriber or consumer was on its way back to a CPU.
TEST(EventCountTest, OneWakePerArmedWait) {
  EcFixture f;
  EventCount ec(&f.s->ec[0]);
  const std::uint32_t key = ec.prepare_wait();
  EXPECT_EQ(key & kArmed, kArmed);
  for (int i = 0; i < 100; ++i) ec.notify();
  EXPECT_EQ(f.s->ec[0].wakes.load(), 1u);
  EXPECT_EQ(f.s->ec[0].futex_sleepers.load(), 1u);  // still counted: only the bit stopped the syscalls
  EXPECT_TRUE(ec.wait(key, 1s));                    // its key is stale: returns at once
  // Waiting again arms again: the next notify wakes.
  const std::uint32_t key2 = ec.prepare_wait();
  EXPECT_NE(key2, key);
  ec.notify();
  ec.notify();
  EXPECT_EQ(f.s->ec[0].wakes.load(), 2u);
  EXPECT_TRUE(ec.wait(key2, 1s));
  EXPECT_EQ(f.s->ec[0].futex_sleepers.load(), 0u);
}

// A woken waiter that finds nothing and sleeps again (W2 after the clearing notifier's N4) is woken by the
// next notify: the bit does not lose a wake-up across rounds. Two threads, many rounds, bounded waits.
TEST(EventCountTest, ArmedRoundsLoseNoWakeUp) {
  EcFixture f;
  std::atomic<std::uint32_t>& flag = f.s->flag[0];
  std::atomic<std::uint32_t>& ack = f.s->flag[1];
  constexpr std::uint32_t kRounds = 20000;
  std::atomic<bool> stuck{false};
  std::thread waiter([&] {
    EventCount ec(&f.s->ec[0]);
    for (std::uint32_t r = 1; r <= kRounds; ++r) {
      // Each round the notifier sets flag = r; a lost wake-up shows as a 2 s timeout.
      if (!ec.await([&] { return flag.load(std::memory_order_acquire) >= r; }, 2s)) {
        stuck = true;
        return;
      }
      ack.store(r, std::memory_order_release);
    }
  });
  EventCount ec(&f.s->ec[0]);
  for (std::uint32_t r = 1; r <= kRounds && !stuck; ++r) {
    flag.store(r, std::memory_order_release);  // N1
    ec.notify();
    ec.notify();  // usually skipped (bit clear): must not matter
    // Ping-pong: the next round starts once the waiter saw this one, so that it is often asleep by then.
    while (ack.load(std::memory_order_acquire) < r && !stuck) std::this_thread::yield();
  }
  waiter.join();
  EXPECT_FALSE(stuck);
}

TEST(EventCountTest, AwaitTimesOutWhenNothingHappens) {
  EcFixture f;
  EventCount ec(&f.s->ec[0]);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(ec.await([] { return false; }, 20ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 20ms);
  EXPECT_EQ(f.s->ec[0].futex_sleepers.load(), 0u);
}

TEST(EventCountTest, CancelWaitWithdraws) {
  EcFixture f;
  EventCount ec(&f.s->ec[0]);
  (void)ec.prepare_wait();
  ec.cancel_wait();
  ec.notify();
  EXPECT_EQ(f.s->ec[0].wakes.load(), 0u);
}

TEST(EventCountTest, WakesASleeperInAnotherProcess) {
  EcFixture f;
  const std::string name = f.name.name;
  const pid_t pid = test::fork_child([&] {
    auto seg = Segment::open(name);
    if (!seg) return 2;
    auto* s = seg->root<Shared>();
    EventCount ec(&s->ec[0]);
    s->child_ready.store(1);
    // Park (no spin) until the parent's flag is set; 10 s bound.
    const bool ok = ec.await([&] { return s->flag[0].load(std::memory_order_acquire) == 1; }, 10s);
    return ok ? 0 : 3;
  });
  while (f.s->child_ready.load() == 0) std::this_thread::sleep_for(1ms);
  // Give the child time to actually sleep in FUTEX_WAIT, so the wake is the real path.
  for (int i = 0; i < 200 && f.s->ec[0].futex_sleepers.load() == 0; ++i) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(20ms);
  f.s->flag[0].store(1, std::memory_order_release);
  EventCount(&f.s->ec[0]).notify();
  auto r = test::wait_child(pid, 15s);
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.code, 0);
  EXPECT_GE(f.s->ec[0].wakes.load(), 1u);
}

TEST(EventCountStressTest, BlockingPingPongLosesNoWakeUp) {
  EcFixture f;
  constexpr std::uint32_t kRounds = 20000;
  std::thread t([&] {
    EventCount in(&f.s->ec[0]), out(&f.s->ec[1]);
    for (std::uint32_t i = 1; i <= kRounds; ++i) {
      if (!in.await([&] { return f.s->flag[0].load(std::memory_order_acquire) >= i; }, 10s)) return;
      f.s->flag[1].store(i, std::memory_order_release);
      out.notify();
    }
  });
  EventCount in(&f.s->ec[1]), out(&f.s->ec[0]);
  std::uint32_t done = 0;
  for (std::uint32_t i = 1; i <= kRounds; ++i) {
    f.s->flag[0].store(i, std::memory_order_release);
    out.notify();
    if (!in.await([&] { return f.s->flag[1].load(std::memory_order_acquire) >= i; }, 10s)) break;
    done = i;
  }
  t.join();
  EXPECT_EQ(done, kRounds);  // a lost wake-up would stall one side until the 10 s timeout
}

TEST(EventFdWaiterTest, OneFdWaitsOnTwoSourcesWithEpoll) {
  EcFixture f;
  auto w = EventFdWaiter::create();
  ASSERT_TRUE(w);
  EventCount a(&f.s->ec[0]), b(&f.s->ec[1]);
  a.set_notify_fd(w->fd());
  b.set_notify_fd(w->fd());
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  ASSERT_GE(ep, 0);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ASSERT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, w->fd(), &ev), 0);

  for (int source = 0; source < 2; ++source) {
    w->arm(a);
    w->arm(b);
    // Nothing ready yet: the fd stays quiet.
    epoll_event out{};
    EXPECT_EQ(epoll_wait(ep, &out, 1, 10), 0);
    std::thread t([&] {
      std::this_thread::sleep_for(5ms);
      f.s->flag[source].store(1, std::memory_order_release);
      (source == 0 ? a : b).notify();
    });
    EXPECT_EQ(epoll_wait(ep, &out, 1, 5000), 1);
    t.join();
    EXPECT_GE(w->consume(), 1u);
    w->disarm(a);
    w->disarm(b);
    EXPECT_EQ(f.s->flag[source].load(), 1u);
  }
  // Disarmed: notifications make no syscall and leave the fd quiet.
  const auto wakes = f.s->ec[0].wakes.load();
  a.notify();
  EXPECT_EQ(f.s->ec[0].wakes.load(), wakes);
  EXPECT_FALSE(w->wait(5ms));
  close(ep);
}

TEST(EventFdWaiterTest, NotifierWithoutFdDoesNotWriteIt) {
  EcFixture f;
  auto w = EventFdWaiter::create();
  ASSERT_TRUE(w);
  EventCount a(&f.s->ec[0]);  // no set_notify_fd
  w->arm(a);
  a.notify();
  EXPECT_FALSE(w->wait(5ms));
  w->disarm(a);
}

}  // namespace
}  // namespace shmbus
