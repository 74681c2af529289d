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
  EXPECT_FALSE(check_topic_options({.max_subscribers = 0}));
  EXPECT_FALSE(check_topic_options({.max_subscribers = kMaxStreamPorts + 1}));
  EXPECT_FALSE(check_topic_options({.max_publishers = 0}));
  EXPECT_TRUE(check_topic_options({.max_subscribers = 100}));  // no compile-time cap of 63 any more
  EXPECT_TRUE(check_topic_options({}));
}

TEST(AttrsTest, RoundTripEveryTypeWithoutAllocatingToEncode) {
  std::byte buf[256];
  const std::vector<Attr> in = {
      {"unit", "C"}, {"priority", -5}, {"ratio", 0.25}, {"urgent", true}, {"empty", ""}};
  const std::size_t n = encoded_attrs_size(in, nullptr);
  ASSERT_GT(n, 0u);
  ASSERT_LE(n, sizeof buf);
  EXPECT_EQ(encode_attrs(in, buf), n);
  EXPECT_EQ(decode_attrs(buf, n), in);
  auto p = find_attr(buf, n, "priority");
  ASSERT_TRUE(p);
  EXPECT_TRUE(p->is_int());
  EXPECT_EQ(p->as_int(), -5);
  EXPECT_EQ(find_attr(buf, n, "ratio")->as_real(), 0.25);
  EXPECT_TRUE(find_attr(buf, n, "urgent")->as_bool());
  EXPECT_FALSE(find_attr(buf, n, "missing"));
}

TEST(AttrsTest, BadKeysAreRefusedAndTruncatedInputIsSafe) {
  std::string why;
  EXPECT_EQ(encoded_attrs_size({{"", "x"}}, &why), 0u);
  EXPECT_NE(why.find("must be 1 to 255 bytes"), std::string::npos) << why;
  const std::string long_key(256, 'k');
  EXPECT_EQ(encoded_attrs_size({{long_key, 1}}, &why), 0u);
  std::byte big[64];
  const std::size_t n = encode_attrs({{"k", "value"}}, big);
  EXPECT_TRUE(decode_attrs(big, n - 1).empty());  // cut short: nothing past the end is read
}

TEST(TopicTest, CreateThenOpenSeesTheSameTopic) {
  TopicFixture f({.kind = TopicKind::stream, .depth = 5, .max_size = 100, .max_subscribers = 3});
  auto o = TopicHandle::open(f.domain, f.id);
  ASSERT_TRUE(o) << o.error().message();
  EXPECT_EQ(o->name(), "a.b");
  EXPECT_EQ(o->kind(), TopicKind::stream);
  EXPECT_EQ(o->depth(), 8u);  // rounded up to a power of two
  EXPECT_EQ(o->max_subscribers(), 3u);
  EXPECT_EQ(o->max_size(), 100u);
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
