// Topic segments and the directory, driven directly (the broker's calls and the data path), without a
// broker process.
#include "shmbus/topic.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/resource.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "shmbus/paths.hpp"
#include "test_util.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;

std::string unique_domain() {
  static int n = 0;
  return "td" + std::to_string(getpid()) + "x" + std::to_string(n++);
}

struct TopicFixture {
  std::string domain = unique_domain();
  std::uint64_t id = 1;
  TopicHandle t;
  explicit TopicFixture(TopicOptions o, std::string name = "a.b") {
    auto h = TopicHandle::create(domain, id, name, o);
    EXPECT_TRUE(h) << h.error().message();
    t = std::move(h).value();
  }
  ~TopicFixture() { (void)TopicHandle::remove(domain, id); }

  std::uint32_t write(const std::string& text, std::uint64_t seq) {
    std::uint32_t c = 0;
    EXPECT_EQ(t.allocate(c, std::chrono::steady_clock::now()), TopicHandle::IoStatus::ok);
    MessageHeader* h = t.header(c);
    h->seq = seq;
    h->payload_size = static_cast<std::uint32_t>(text.size());
    h->attrs_size = 0;
    std::memcpy(t.payload(c), text.data(), text.size());
    return c;
  }
  std::string take(std::uint32_t ring) {
    std::uint32_t c;
    if (t.pool().try_pop(ring, c) != RingStatus::ok) return "<none>";
    std::string s(reinterpret_cast<char*>(t.payload(c)), t.header(c)->payload_size);
    t.release(c);
    return s;
  }
};

TEST(TopicNameTest, ValidNamesPass) {
  EXPECT_TRUE(check_topic_name("a"));
  EXPECT_TRUE(check_topic_name("sensors.left-1.temp_c"));
  EXPECT_TRUE(check_topic_name(std::string(200, 'x')));
}

TEST(TopicNameTest, InvalidNamesNameOffsetAndReason) {
  auto e = check_topic_name("a..b");
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message().find("empty token at offset 2"), std::string::npos) << e.error().message();
  e = check_topic_name("a.*");
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message().find("wildcard '*' at offset 2"), std::string::npos) << e.error().message();
  e = check_topic_name("orders.>");
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message().find("offset 7"), std::string::npos);
  e = check_topic_name("a b");
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message().find("' ' at offset 1"), std::string::npos) << e.error().message();
  EXPECT_FALSE(check_topic_name(""));
  EXPECT_FALSE(check_topic_name(".a"));
  EXPECT_FALSE(check_topic_name("a."));
  EXPECT_FALSE(check_topic_name(std::string(201, 'x')));
}

TEST(TopicOptionsTest, RangesAreChecked) {
  EXPECT_FALSE(check_topic_options({.depth = 0}));
  EXPECT_FALSE(check_topic_options({.max_size = 0}));
  EXPECT_FALSE(check_topic_options({.max_subscribers = 64}));
  EXPECT_TRUE(check_topic_options({}));
}

TEST(AttrsTest, RoundTripStringsAndIntegers) {
  std::byte buf[256];
  std::uint32_t n = 0;
  Attributes in = {{"unit", {.s = "C"}}, {"priority", {.is_int = true, .i = -5}}, {"empty", {}}};
  ASSERT_TRUE(encode_attrs(in, buf, sizeof buf, &n, nullptr));
  EXPECT_EQ(decode_attrs(buf, n), in);
  auto p = find_attr(buf, n, "priority");
  ASSERT_TRUE(p);
  EXPECT_TRUE(p->is_int);
  EXPECT_EQ(p->i, -5);
  EXPECT_FALSE(find_attr(buf, n, "missing"));
}

TEST(AttrsTest, TooBigOrBadKeyIsRefusedAndTruncatedInputIsSafe) {
  std::byte buf[16];
  std::uint32_t n = 0;
  std::string why;
  EXPECT_FALSE(encode_attrs({{"key", {.s = std::string(100, 'v')}}}, buf, sizeof buf, &n, &why));
  EXPECT_NE(why.find("16 bytes"), std::string::npos) << why;
  EXPECT_FALSE(encode_attrs({{"", {.s = "x"}}}, buf, sizeof buf, &n, &why));
  std::byte big[64];
  ASSERT_TRUE(encode_attrs({{"k", {.s = "value"}}}, big, sizeof big, &n, nullptr));
  EXPECT_TRUE(decode_attrs(big, n - 1).empty());  // cut short: nothing past the end is read
}

TEST(TopicTest, CreateThenOpenSeesTheSameTopic) {
  TopicFixture f({.kind = TopicKind::stream, .depth = 5, .max_size = 100, .max_subscribers = 3});
  auto o = TopicHandle::open(f.domain, f.id);
  ASSERT_TRUE(o) << o.error().message();
  EXPECT_EQ(o->name(), "a.b");
  EXPECT_EQ(o->kind(), TopicKind::stream);
  EXPECT_EQ(o->shared()->depth, 8u);  // rounded up to a power of two
  EXPECT_EQ(o->max_subscribers(), 3u);
  EXPECT_EQ(o->max_size(), 100u);
}

TEST(TopicTest, StreamFansOutToEveryActiveSubscriberInOrder) {
  TopicFixture f({.kind = TopicKind::stream, .depth = 8, .max_size = 64, .max_subscribers = 4});
  auto s0 = f.t.activate_slot(OwnerId::self(), 1);
  auto s1 = f.t.activate_slot(OwnerId::self(), 2);
  ASSERT_TRUE(s0 && s1);
  EXPECT_EQ(f.t.active_subscribers(), 2u);
  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(f.t.publish_stream(f.write("m" + std::to_string(i), i + 1), std::chrono::steady_clock::now()),
              TopicHandle::IoStatus::ok);
  for (std::uint32_t s : {*s0, *s1})
    for (int i = 0; i < 5; ++i) EXPECT_EQ(f.take(f.t.slot(s)->ring), "m" + std::to_string(i));
  auto c = f.t.pool().census();
  EXPECT_TRUE(c.violations.empty());
  EXPECT_EQ(c.free, f.t.pool().chunk_count());
}

TEST(TopicTest, PublishWithoutSubscribersReturnsTheChunk) {
  TopicFixture f({.kind = TopicKind::stream});
  EXPECT_EQ(f.t.publish_stream(f.write("x", 1), std::chrono::steady_clock::now()),
            TopicHandle::IoStatus::no_subscribers);
  EXPECT_EQ(f.t.pool().census().free, f.t.pool().chunk_count());
}

TEST(TopicTest, DropOldestCountsWhatTheSlowSubscriberMissed) {
  TopicFixture f({.kind = TopicKind::stream,
                  .depth = 4,
                  .max_size = 16,
                  .overflow = Overflow::drop_oldest,
                  .max_subscribers = 1});
  const std::uint32_t s = f.t.activate_slot(OwnerId::self(), 1).value();
  for (int i = 0; i < 10; ++i)
    ASSERT_EQ(f.t.publish_stream(f.write(std::to_string(i), i + 1), std::chrono::steady_clock::now()),
              TopicHandle::IoStatus::ok);
  EXPECT_EQ(f.t.slot(s)->dropped.load(), 6u);
  for (int i = 6; i < 10; ++i) EXPECT_EQ(f.take(f.t.slot(s)->ring), std::to_string(i));  // the newest 4
  EXPECT_EQ(f.t.shared()->dropped.load(), 6u);
}

TEST(TopicTest, BlockPolicyWaitsThenTimesOutAndCountsTheMiss) {
  TopicFixture f({.kind = TopicKind::stream,
                  .depth = 2,
                  .max_size = 16,
                  .overflow = Overflow::block,
                  .max_subscribers = 1});
  const std::uint32_t s = f.t.activate_slot(OwnerId::self(), 1).value();
  for (int i = 0; i < 2; ++i)
    ASSERT_EQ(f.t.publish_stream(f.write("k", 1), std::chrono::steady_clock::now()),
              TopicHandle::IoStatus::ok);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(f.t.publish_stream(f.write("late", 3), t0 + 30ms), TopicHandle::IoStatus::timed_out);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 30ms);
  EXPECT_EQ(f.t.slot(s)->gap.load(), 1u);  // reported by the next message pushed to this subscriber
  EXPECT_EQ(f.t.shared()->dropped.load(), 1u);
  EXPECT_EQ(f.t.pool().census().violations.size(), 0u);
}

TEST(TopicTest, QueueGivesEachMessageToOneConsumerAndBackPressures) {
  TopicFixture f({.kind = TopicKind::queue, .depth = 4, .max_size = 16});
  for (int i = 0; i < 4; ++i)
    ASSERT_EQ(f.t.push_queue(f.write(std::to_string(i), i + 1), std::chrono::steady_clock::now()),
              TopicHandle::IoStatus::ok);
  const std::uint32_t extra = f.write("x", 9);
  EXPECT_EQ(f.t.push_queue(extra, std::chrono::steady_clock::now() + 10ms), TopicHandle::IoStatus::timed_out);
  f.t.release(extra);  // still ours after the timeout
  for (int i = 0; i < 4; ++i) EXPECT_EQ(f.take(1), std::to_string(i));
  EXPECT_EQ(f.take(1), "<none>");
}

TEST(TopicTest, FreedSlotIsDrainedAndStragglersAreSwept) {
  TopicFixture f({.kind = TopicKind::stream, .depth = 4, .max_size = 16, .max_subscribers = 2});
  const std::uint32_t s = f.t.activate_slot(OwnerId::self(), 1).value();
  ASSERT_EQ(f.t.publish_stream(f.write("a", 1), std::chrono::steady_clock::now()), TopicHandle::IoStatus::ok);
  f.t.free_slot(s);
  EXPECT_EQ(f.t.active_subscribers(), 0u);
  EXPECT_EQ(f.t.pool().census().free, f.t.pool().chunk_count());
  // A publisher that read the mask before the slot was freed pushes into its ring afterwards.
  const std::uint32_t c = f.write("late", 2);
  ASSERT_EQ(f.t.pool().try_push(f.t.slot(s)->ring, c), RingStatus::ok);
  EXPECT_EQ(f.t.drain_free_slots(), 1u);
  EXPECT_EQ(f.t.pool().census().free, f.t.pool().chunk_count());
}

TEST(TopicTest, AllSlotsTakenIsAClearError) {
  TopicFixture f({.kind = TopicKind::stream, .max_subscribers = 1});
  ASSERT_TRUE(f.t.activate_slot(OwnerId::self(), 1));
  auto e = f.t.activate_slot(OwnerId::self(), 2);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code(), Errc::no_space);
  EXPECT_NE(e.error().message().find("max_subscribers"), std::string::npos);
}

TEST(TopicTest, ReclaimOfADeadSubscriberFreesItsSlotAndItsSamples) {
  // One slot: the child, forked before the slot is re-owned, knows which ring to read.
  TopicFixture f({.kind = TopicKind::stream, .depth = 4, .max_size = 16, .max_subscribers = 1});
  const std::string domain = f.domain;
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  // A real subscriber process: takes one sample, holds it, and is killed.
  const std::uint32_t slot = f.t.activate_slot(OwnerId::self(), 1).value();  // re-owned below
  const pid_t pid = test::fork_child([&] {
    auto t = TopicHandle::open(domain, 1);
    if (!t) return 2;
    std::uint32_t c;
    for (int i = 0; t->pool().try_pop(t->slot(slot)->ring, c) != RingStatus::ok; ++i) {
      if (i > 200000) return 4;  // 20 s: bounded, so that a failed assertion never leaves it behind
      usleep(100);
    }
    char b = 1;
    if (write(ready[1], &b, 1) != 1) return 3;
    pause();
    return 0;
  });
  const auto child = OwnerId::of(pid).value();
  f.t.free_slot(slot);
  ASSERT_EQ(f.t.activate_slot(child, 7).value(), slot);  // a new subscriber takes the freed slot
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(f.t.publish_stream(f.write("z", i + 1), std::chrono::steady_clock::now()),
              TopicHandle::IoStatus::ok);
  char b;
  ASSERT_EQ(read(ready[0], &b, 1), 1);
  kill(pid, SIGKILL);
  auto r = test::wait_child(pid);
  ASSERT_EQ(r.signal, SIGKILL);
  auto dead = f.t.dead_owners();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0], child);
  auto rep = f.t.reclaim(child);
  EXPECT_EQ(rep.freed, 1u);  // the sample it held; the two queued ones went with the slot's drain
  EXPECT_EQ(f.t.active_subscribers(), 0u);
  auto c = f.t.pool().census();
  EXPECT_TRUE(c.violations.empty());
  EXPECT_EQ(c.free, f.t.pool().chunk_count());
  close(ready[0]);
  close(ready[1]);
}

// Runs `f` on a thread and reports whether it finished within `limit`. A thread that did not finish is
// joined anyway (its own deadline bounds it), so a regression costs time, never a hang.
bool finishes_within(std::chrono::milliseconds limit, const std::function<void()>& f) {
  std::atomic<bool> done{false};
  std::thread th([&] {
    f();
    done.store(true);
  });
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!done.load() && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(1ms);
  const bool in_time = done.load();
  th.join();
  return in_time;
}

// Takes every free chunk; returns them.
std::vector<std::uint32_t> take_all_free(TopicHandle& t) {
  std::vector<std::uint32_t> held;
  std::uint32_t c;
  while (t.pool().try_allocate(c) == RingStatus::ok) held.push_back(c);
  return held;
}

// How many threads the waiter records count on a lane (what a notifier reads).
std::uint32_t waiting(const TopicHandle& t, std::uint32_t lane) {
  const TopicShared* sh = t.shared();
  const WaiterRecord* recs = t.segment().at(Ref<WaiterRecord>{sh->waiters_offset}, sh->waiter_count);
  std::uint32_t n = 0;
  for (std::uint32_t i = 0; i < sh->waiter_count; ++i) n += recs[i].waiting[lane].load();
  return n;
}

// A consumer parked on not_empty and SIGKILLed there stays counted unless the broker can take out
// exactly what it contributed: then every later push would make a FUTEX_WAKE syscall, forever.
TEST(TopicWaiterTest, DeadParkedWaiterIsSubtractedByReclaim) {
  TopicFixture f({.kind = TopicKind::queue, .depth = 4, .max_size = 16});
  const std::string domain = f.domain;
  const pid_t pid = test::fork_child([&] {
    auto t = TopicHandle::open(domain, 1);
    if (!t) return 2;
    std::uint32_t c;
    t->wait_for(
        TopicHandle::WaitOn::not_empty, [&] { return t->pool().try_pop(1, c) == RingStatus::ok; },
        Deadline::after(60s));
    return 3;
  });
  const auto child = OwnerId::of(pid).value();
  EventCountShared& ne = f.t.shared()->not_empty;
  ASSERT_TRUE(test::wait_until([&] { return waiting(f.t, kLaneNotEmpty) == 1; }, 10s));
  kill(pid, SIGKILL);
  ASSERT_EQ(test::wait_child(pid).signal, SIGKILL);
  EXPECT_EQ(waiting(f.t, kLaneNotEmpty), 1u);  // what the dead waiter left
  auto dead = f.t.dead_owners();
  ASSERT_EQ(dead.size(), 1u) << "the waiter record names the dead process";
  EXPECT_EQ(dead[0], child);
  f.t.reclaim(child);
  EXPECT_EQ(waiting(f.t, kLaneNotEmpty), 0u);
  // The next push makes no syscall: nobody waits.
  const auto wakes = ne.wakes.load();
  ASSERT_EQ(f.t.push_queue(f.write("x", 1), Deadline::now()), TopicHandle::IoStatus::ok);
  EXPECT_EQ(ne.wakes.load(), wakes);
  EXPECT_EQ(f.take(1), "x");
}

TEST(TopicWaiterTest, LiveWaitersAreNotSubtractedWithADeadOne) {
  TopicFixture f({.kind = TopicKind::queue, .depth = 4, .max_size = 16});
  const std::string domain = f.domain;
  auto park = [&] {
    return test::fork_child([&] {
      auto t = TopicHandle::open(domain, 1);
      if (!t) return 2;
      std::uint32_t c;
      return t->wait_for(
                 TopicHandle::WaitOn::not_empty, [&] { return t->pool().try_pop(1, c) == RingStatus::ok; },
                 Deadline::after(60s))
                 ? 0
                 : 4;
    });
  };
  const pid_t doomed = park();
  const pid_t survivor = park();
  const auto doomed_id = OwnerId::of(doomed).value();
  ASSERT_TRUE(test::wait_until([&] { return waiting(f.t, kLaneNotEmpty) == 2; }, 10s));
  kill(doomed, SIGKILL);
  test::wait_child(doomed);
  f.t.reclaim(doomed_id);
  EXPECT_EQ(waiting(f.t, kLaneNotEmpty), 1u);  // the survivor is still counted: it must be woken
  ASSERT_EQ(f.t.push_queue(f.write("x", 1), Deadline::now()), TopicHandle::IoStatus::ok);
  const auto r = test::wait_child(survivor, 20s);
  EXPECT_TRUE(r.exited && r.code == 0) << "the live waiter was not woken";
}

// A chunk that comes back through a drain (a freed slot's ring) must wake an allocator that waits for one.
TEST(TopicWakeTest, DrainOfAFreedSlotWakesABlockedLoan) {
  TopicFixture f({.kind = TopicKind::stream, .depth = 4, .max_size = 16, .max_subscribers = 1});
  const std::uint32_t s = f.t.activate_slot(OwnerId::self(), 1).value();
  for (int i = 0; i < 2; ++i)
    ASSERT_EQ(f.t.publish_stream(f.write("m", i + 1), Deadline::now()), TopicHandle::IoStatus::ok);
  auto held = take_all_free(f.t);
  std::uint32_t got = 0;
  TopicHandle::IoStatus st = TopicHandle::IoStatus::no_chunk;
  const bool woke = finishes_within(10s, [&] {
    std::thread freer([&] {
      std::this_thread::sleep_for(100ms);  // let the allocator park first
      f.t.free_slot(s);                    // drains the two queued messages
    });
    st = f.t.allocate(got, Deadline::after(30s));
    freer.join();
  });
  EXPECT_TRUE(woke) << "the loan slept while drained chunks were free";
  EXPECT_EQ(st, TopicHandle::IoStatus::ok);
  if (st == TopicHandle::IoStatus::ok) f.t.release(got);
  for (auto c : held) f.t.release(c);
}

TEST(TopicWakeTest, DropOldestWakesABlockedLoan) {
  TopicFixture f({.kind = TopicKind::stream, .depth = 2, .max_size = 16, .max_subscribers = 1});
  ASSERT_TRUE(f.t.activate_slot(OwnerId::self(), 1));
  for (int i = 0; i < 2; ++i)
    ASSERT_EQ(f.t.publish_stream(f.write("m", i + 1), Deadline::now()), TopicHandle::IoStatus::ok);
  const std::uint32_t next = f.write("n", 3);  // the publisher's next message, written already
  auto held = take_all_free(f.t);
  std::uint32_t got = 0;
  TopicHandle::IoStatus st = TopicHandle::IoStatus::no_chunk;
  const bool woke = finishes_within(10s, [&] {
    std::thread publisher([&] {
      std::this_thread::sleep_for(100ms);
      (void)f.t.publish_stream(next, Deadline::now());  // the ring is full: drops the oldest
    });
    st = f.t.allocate(got, Deadline::after(30s));
    publisher.join();
  });
  EXPECT_TRUE(woke) << "the loan slept while the dropped chunk was free";
  EXPECT_EQ(st, TopicHandle::IoStatus::ok);
  EXPECT_EQ(f.t.slot(0)->dropped.load(), 1u);
  if (st == TopicHandle::IoStatus::ok) f.t.release(got);
  for (auto c : held) f.t.release(c);
}

// A consumer holding a message of a queue that producers filled meanwhile must be able to put it back
// at once: it cannot wait for room that only it could make.
TEST(TopicTest, RequeueOfATakenMessageNeverWaitsEvenWhenTheQueueIsFull) {
  TopicFixture f({.kind = TopicKind::queue, .depth = 4, .max_size = 16});
  for (int i = 0; i < 4; ++i)
    ASSERT_EQ(f.t.push_queue(f.write("q", i + 1), Deadline::now()), TopicHandle::IoStatus::ok);
  std::uint32_t taken;
  ASSERT_EQ(f.t.pool().try_pop(1, taken), RingStatus::ok);
  ASSERT_EQ(f.t.push_queue(f.write("q", 5), Deadline::now()), TopicHandle::IoStatus::ok);  // full again
  EXPECT_EQ(f.t.push_queue(f.write("late", 6), Deadline::now()), TopicHandle::IoStatus::timed_out);
  EXPECT_EQ(f.t.requeue(taken), TopicHandle::IoStatus::ok);
  EXPECT_EQ(f.t.queued_messages(), 5u);
  // Even with every chunk of the pool queued, a taken one goes back.
  std::vector<std::uint32_t> all = take_all_free(f.t);
  for (auto c : all) ASSERT_EQ(f.t.requeue(c), TopicHandle::IoStatus::ok);
  ASSERT_EQ(f.t.pool().try_pop(1, taken), RingStatus::ok);
  EXPECT_EQ(f.t.requeue(taken), TopicHandle::IoStatus::ok);
  EXPECT_EQ(f.t.queued_messages(), f.t.pool().chunk_count() - 1);  // one was still held by the late push
}

// A broker killed between a slot's state store and its mask bit leaves an active slot that publishers
// skip. Re-registration and adoption must restore the bit.
TEST(TopicTest, AdoptSlotRestoresAMissingMaskBit) {
  TopicFixture f({.kind = TopicKind::stream, .depth = 4, .max_size = 16, .max_subscribers = 2});
  const std::uint32_t s = f.t.activate_slot(OwnerId::self(), 1).value();
  f.t.shared()->active_mask.fetch_and(~(1ULL << s));  // the crash window
  ASSERT_EQ(f.t.active_subscribers(), 0u);
  ASSERT_TRUE(f.t.adopt_slot(s, OwnerId::self(), 1));  // the subscriber reattaches
  EXPECT_EQ(f.t.active_subscribers(), 1u);
  ASSERT_EQ(f.t.publish_stream(f.write("seen", 1), Deadline::now()), TopicHandle::IoStatus::ok);
  EXPECT_EQ(f.take(f.t.slot(s)->ring), "seen");
}

TEST(TopicTest, RepairMaskMakesTheMaskAgreeWithTheSlots) {
  TopicFixture f({.kind = TopicKind::stream, .depth = 4, .max_size = 16, .max_subscribers = 3});
  const std::uint32_t a = f.t.activate_slot(OwnerId::self(), 1).value();
  const std::uint32_t b = f.t.activate_slot(OwnerId::self(), 2).value();
  f.t.free_slot(b);
  f.t.shared()->active_mask.fetch_and(~(1ULL << a));  // active slot without its bit
  f.t.shared()->active_mask.fetch_or(1ULL << b);      // freed slot with its bit (killed in free_slot)
  EXPECT_EQ(f.t.repair_mask(), 2u);
  EXPECT_EQ(f.t.shared()->active_mask.load(), 1ULL << a);
  EXPECT_EQ(f.t.repair_mask(), 0u);
}

// The broker's sweep under descriptor exhaustion: a live owner it cannot check is not dead.
TEST(TopicTest, DeadOwnersNeverNamesAnOwnerItCannotCheck) {
  TopicFixture f({.kind = TopicKind::queue, .depth = 4, .max_size = 16});
  std::uint32_t held;
  ASSERT_EQ(f.t.allocate(held, Deadline::now()), TopicHandle::IoStatus::ok);  // owned by this (live) process
  const std::string domain = f.domain;
  const pid_t pid = test::fork_child([&] {
    auto t = TopicHandle::open(domain, 1);
    if (!t) return 2;
    (void)OwnerId::self();  // the child's own id, read while it still can
    rlimit rl{64, 64};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) return 10;
    while (open("/dev/null", O_RDONLY) >= 0) {
    }
    std::vector<OwnerId> unknown;
    if (!t->dead_owners(&unknown).empty()) return 11;
    return unknown.empty() ? 12 : 0;
  });
  const auto r = test::wait_child(pid);
  EXPECT_TRUE(r.exited && r.code == 0) << "code " << r.code << " (11: a live owner was called dead)";
  f.t.release(held);
}

// Two threads of one process: the first claims a waiter record and is paused before it raises the mark;
// the second finds the record already its process's and must raise the mark itself, or a notifier that
// scans below the mark never sees it (a lost wake-up).
TEST(TopicWaiterTest, ARecordFoundAlreadyClaimedIsCoveredByTheMark) {
  TopicFixture f({.kind = TopicKind::queue, .depth = 4, .max_size = 16});
  TopicShared* sh = f.t.shared();
  WaiterRecord* recs = f.t.segment().at(Ref<WaiterRecord>{sh->waiters_offset}, sh->waiter_count);
  recs[0].owner.store(OwnerId::make(1, 1).value);  // another process holds record 0
  recs[1].owner.store(f.t.identity().value);       // claimed by "the other thread", mark not raised yet
  ASSERT_EQ(sh->waiter_hwm.load(), 0u);
  WaiterRecord* mine = f.t.my_record();
  ASSERT_EQ(mine, &recs[1]);
  EXPECT_GE(sh->waiter_hwm.load(), 2u);
  recs[0].owner.store(0);
}

// The mark follows the processes that wait: once the broker frees the records at its top, notifiers no
// longer scan them.
TEST(TopicWaiterTest, ReclaimLowersTheMarkPastFreedRecords) {
  TopicFixture f({.kind = TopicKind::queue, .depth = 4, .max_size = 16});
  TopicShared* sh = f.t.shared();
  WaiterRecord* recs = f.t.segment().at(Ref<WaiterRecord>{sh->waiters_offset}, sh->waiter_count);
  const OwnerId a = OwnerId::make(999991, 1), b = OwnerId::make(999992, 1);  // no such pids
  recs[0].owner.store(f.t.identity().value);
  recs[1].owner.store(a.value);
  recs[2].owner.store(b.value);
  sh->waiter_hwm.store(3);
  f.t.reclaim(b);
  EXPECT_EQ(sh->waiter_hwm.load(), 2u);
  f.t.reclaim(a);
  EXPECT_EQ(sh->waiter_hwm.load(), 1u);  // record 0 is still held
  f.t.repair_waiters();                  // the broker at adoption: nothing more to lower
  EXPECT_EQ(sh->waiter_hwm.load(), 1u);
  sh->waiter_hwm.store(1 | WaiterTable::kLowering);  // a broker died while lowering
  f.t.repair_waiters();
  EXPECT_EQ(sh->waiter_hwm.load(), 1u);
  recs[0].owner.store(0);
}

// A subscriber whose slot was freed while its connection was down, and given back to it, learns how many
// messages it missed: those drained from its ring and those published while the slot was free.
TEST(TopicTest, ReturningSubscriberIsToldWhatItMissedWhileItsSlotWasFree) {
  TopicFixture f({.kind = TopicKind::stream, .depth = 8, .max_size = 16, .max_subscribers = 2});
  const OwnerId me = OwnerId::self();
  const std::uint32_t s = f.t.activate_slot(me, 5).value();
  const std::uint64_t seen_dropped = f.t.slot(s)->dropped.load();  // what the subscriber knows
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(f.t.publish_stream(f.write("a", i + 1), Deadline::now()), TopicHandle::IoStatus::ok);
  f.t.free_slot(s);  // drains the 3 unread
  for (int i = 0; i < 4; ++i)
    ASSERT_EQ(f.t.publish_stream(f.write("b", i + 4), Deadline::now()),
              TopicHandle::IoStatus::no_subscribers);
  ASSERT_TRUE(f.t.adopt_slot(s, me, 5));
  ASSERT_EQ(f.t.publish_stream(f.write("c", 8), Deadline::now()), TopicHandle::IoStatus::ok);
  EXPECT_EQ(f.t.slot(s)->dropped.load() - seen_dropped, 7u);
  EXPECT_EQ(f.take(f.t.slot(s)->ring), "c");
  // A new subscriber prefers a slot nobody may come back to; once it had to take this one, the old owner
  // cannot reattach to it.
  f.t.free_slot(s);
  const OwnerId other = OwnerId::make(999993, 1);
  ASSERT_EQ(f.t.activate_slot(other, 1).value(), s == 0 ? 1u : 0u);
  ASSERT_EQ(f.t.activate_slot(OwnerId::make(999994, 1), 1).value(), s);
  auto back = f.t.adopt_slot(s, me, 5);
  ASSERT_FALSE(back);
  EXPECT_EQ(back.error().code(), Errc::already_exists);
  f.t.free_slot(s);
  back = f.t.adopt_slot(s, me, 5);  // freed again, but last had by another: not ours to return to
  ASSERT_FALSE(back);
  EXPECT_EQ(back.error().code(), Errc::closed);
}

TEST(TopicTest, SubscribeIsIdempotentForTheSameProcessAndPort) {
  TopicFixture f({.kind = TopicKind::stream, .depth = 4, .max_size = 16, .max_subscribers = 3});
  const std::uint32_t a = f.t.activate_slot(OwnerId::self(), 9).value();
  f.t.shared()->active_mask.fetch_and(~(1ULL << a));  // a broker died between the two stores
  EXPECT_EQ(f.t.activate_slot(OwnerId::self(), 9).value(), a);
  EXPECT_EQ(f.t.active_subscribers(), 1u);
  EXPECT_NE(f.t.activate_slot(OwnerId::self(), 10).value(), a);
}

TEST(DirectoryTest, AddFindRemoveAndAdopt) {
  const std::string domain = unique_domain();
  std::string why;
  {
    auto w = DirectoryWriter::create_or_adopt(domain, 0600, &why);
    ASSERT_TRUE(w) << w.error().message();
    auto id = w->add("orders.new", TopicKind::queue);
    ASSERT_TRUE(id);
    EXPECT_EQ(w->add("orders.new", TopicKind::queue).error().code(), Errc::already_exists);
    EXPECT_EQ(w->add("bad..name", TopicKind::queue).error().code(), Errc::invalid_argument);
    ASSERT_TRUE(w->add("t2", TopicKind::stream));
    auto v = DirectoryView::open(domain);
    ASSERT_TRUE(v) << v.error().message();
    auto e = v->find("orders.new");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->id, *id);
    EXPECT_EQ(e->kind, TopicKind::queue);
    EXPECT_EQ(v->list().size(), 2u);
    EXPECT_TRUE(w->remove("t2"));
    EXPECT_FALSE(v->find("t2"));
  }
  // A second writer (a restarted broker) adopts what is there.
  auto w2 = DirectoryWriter::create_or_adopt(domain, 0600, &why);
  ASSERT_TRUE(w2);
  EXPECT_TRUE(why.empty());
  ASSERT_EQ(w2->list().size(), 1u);
  EXPECT_EQ(w2->list()[0].name, "orders.new");
  auto id3 = w2->add("t3", TopicKind::stream);
  ASSERT_TRUE(id3);
  EXPECT_GT(*id3, w2->list()[0].id);  // ids are never reused
  w2->unlink();
}

TEST(DirectoryTest, ForeignDirectoryIsReplacedWithAReason) {
  const std::string domain = unique_domain();
  {
    auto s = Segment::create(directory_segment_name(domain), {.size = 4096, .kind = "other"});
    ASSERT_TRUE(s);
    s->publish();
  }
  std::string why;
  auto w = DirectoryWriter::create_or_adopt(domain, 0600, &why);
  ASSERT_TRUE(w) << w.error().message();
  EXPECT_NE(why.find("expected a \"directory\""), std::string::npos) << why;
  w->unlink();
}

}  // namespace
}  // namespace shmbus
