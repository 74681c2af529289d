// Waiter records under random SIGKILLs: processes enter and leave waits on a topic's not_empty and space
// as fast as they can and are killed at random moments; after each death the supervisor's reclaim must
// leave no count behind (a leaked count makes every later notify a FUTEX_WAKE syscall), and a live waiter
// must never lose its count (that would be a lost wake-up).
#include <gtest/gtest.h>

#include <sys/mman.h>

#include <random>
#include <thread>
#include <vector>

#include "shmbus/topic.hpp"
#include "test_util.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;

std::uint32_t waiting(const TopicHandle& t, std::uint32_t lane) {
  const TopicShared* sh = t.shared();
  const WaiterRecord* recs = t.segment().at(Ref<WaiterRecord>{sh->waiters_offset}, sh->waiter_count);
  std::uint32_t n = 0;
  for (std::uint32_t i = 0; i < sh->waiter_count; ++i) n += recs[i].waiting[lane].load();
  return n;
}

std::uint32_t claimed(const TopicHandle& t) {
  const TopicShared* sh = t.shared();
  const WaiterRecord* recs = t.segment().at(Ref<WaiterRecord>{sh->waiters_offset}, sh->waiter_count);
  std::uint32_t n = 0;
  for (std::uint32_t i = 0; i < sh->waiter_count; ++i) n += recs[i].owner.load() != 0 ? 1 : 0;
  return n;
}

TEST(WaiterFaultTest, RandomKillsOfWaitersLeaveNoCountBehind) {
  const std::string domain = "wf" + std::to_string(getpid());
  auto created = TopicHandle::create(domain, 1, "w", {.kind = TopicKind::queue, .depth = 4, .max_size = 8});
  ASSERT_TRUE(created) << created.error().message();
  TopicHandle t = std::move(created).value();
  // Each child enters and leaves waits in a loop: short timed waits on both lanes, with two threads, so
  // that deaths land anywhere in prepare_wait / wait / cancel_wait.
  auto spawn = [&] {
    return test::fork_child([&] {
      auto h = TopicHandle::open(domain, 1);
      if (!h) return 2;
      auto loop = [&](TopicHandle::WaitOn on) {
        for (;;)
          (void)h->wait_for(
              on, [] { return false; }, Deadline::after(std::chrono::microseconds(50)));
      };
      std::thread other([&] { loop(TopicHandle::WaitOn::space); });
      loop(TopicHandle::WaitOn::not_empty);
      return 0;
    });
  };
  std::mt19937 rng(12345);
  std::vector<std::pair<pid_t, OwnerId>> live;
  for (int i = 0; i < 4; ++i) {
    const pid_t p = spawn();
    live.emplace_back(p, OwnerId::of(p).value());
  }
  for (int kill_no = 0; kill_no < 300; ++kill_no) {
    std::this_thread::sleep_for(std::chrono::microseconds(200 + rng() % 3000));
    const std::size_t v = rng() % live.size();
    kill(live[v].first, SIGKILL);
    ASSERT_EQ(test::wait_child(live[v].first).signal, SIGKILL);
    t.reclaim(live[v].second);
    const pid_t p = spawn();
    live[v] = {p, OwnerId::of(p).value()};
  }
  for (auto& [pid, id] : live) {
    kill(pid, SIGKILL);
    test::wait_child(pid);
    t.reclaim(id);
  }
  EXPECT_EQ(waiting(t, kLaneNotEmpty), 0u);
  EXPECT_EQ(waiting(t, kLaneSpace), 0u);
  EXPECT_EQ(claimed(t), 0u);
  EXPECT_EQ(t.shared()->waiter_hwm.load(), 0u) << "the mark must come down once the records are free";
  EXPECT_EQ(t.shared()->not_empty.futex_sleepers.load(), 0u);
  EXPECT_EQ(t.shared()->space.futex_sleepers.load(), 0u);
  // And nothing counts as waiting for a notifier: no syscall.
  const auto wakes = t.shared()->space.wakes.load();
  t.notify(TopicHandle::WaitOn::space);
  EXPECT_EQ(t.shared()->space.wakes.load(), wakes);
  (void)TopicHandle::remove(domain, 1);
}

// A live waiter among dying ones is always woken: its count is never taken with a dead process's.
TEST(WaiterFaultTest, LiveWaiterIsWokenWhileOthersDieAroundIt) {
  const std::string domain = "wl" + std::to_string(getpid());
  auto created = TopicHandle::create(domain, 1, "w", {.kind = TopicKind::queue, .depth = 64, .max_size = 8});
  ASSERT_TRUE(created) << created.error().message();
  TopicHandle t = std::move(created).value();
  auto* got = static_cast<std::atomic<int>*>(
      mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (got) std::atomic<int>(0);
  constexpr int kMessages = 200;
  // The live consumer: takes kMessages, each with a long wait (a lost wake-up shows as a 30 s stall).
  const pid_t consumer = test::fork_child([&] {
    auto h = TopicHandle::open(domain, 1);
    if (!h) return 2;
    for (int i = 0; i < kMessages; ++i) {
      std::uint32_t c;
      if (!h->wait_for(
              TopicHandle::WaitOn::not_empty, [&] { return h->pool().try_pop(1, c) == RingStatus::ok; },
              Deadline::after(30s)))
        return 3;
      h->release(c);
      got->fetch_add(1);
    }
    return 0;
  });
  auto spawn_doomed = [&] {
    return test::fork_child([&] {
      auto h = TopicHandle::open(domain, 1);
      if (!h) return 2;
      for (;;)
        (void)h->wait_for(
            TopicHandle::WaitOn::not_empty, [] { return false; }, Deadline::after(1ms));
    });
  };
  std::mt19937 rng(7);
  for (int i = 0; i < kMessages; ++i) {
    const pid_t doomed = spawn_doomed();
    const OwnerId id = OwnerId::of(doomed).value();
    std::this_thread::sleep_for(std::chrono::microseconds(100 + rng() % 500));
    kill(doomed, SIGKILL);
    test::wait_child(doomed);
    t.reclaim(id);
    std::uint32_t c;
    ASSERT_EQ(t.allocate(c, Deadline::after(5s)), TopicHandle::IoStatus::ok);
    ASSERT_EQ(t.push_queue(c, Deadline::after(5s)), TopicHandle::IoStatus::ok);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));  // sometimes the consumer parks
  }
  const auto r = test::wait_child(consumer, 120s);
  EXPECT_TRUE(r.exited && r.code == 0) << "consumer: code " << r.code << ", got " << got->load();
  EXPECT_EQ(got->load(), kMessages);
  munmap(got, sizeof(std::atomic<int>));
  (void)TopicHandle::remove(domain, 1);
}

}  // namespace
}  // namespace shmbus
