// Adversarial tests of Consumer::try_receive_batch (and Subscriber::try_receive_batch) against a real
// broker, across real processes: consumers SIGKILLed inside f, f throwing, nesting, acks of other ports
// and from other threads inside a batch, producers parked for room or for a chunk, max = 0, a topic
// deleted inside f, a Delivery overwritten by move-assignment.
//
// Every wait is bounded. "Woken" is checked as "done well within a timeout that is far longer than the
// work" (a parked producer that is never woken waits its whole timeout out), never as a duration.
//
// As in client_integration_test.cpp, children are forked while the test process has no Client.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../integration/bus_fixture.hpp"
#include "shmbus/detail/directory.hpp"
#include "shmbus/shmbus.hpp"
#include "shmbus/topic.hpp"
#include "test_util.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::Bus;
using test::fork_child;
using test::shared_block;
using test::wait_child;
using test::wait_until;

TopicOptions queue(std::uint64_t depth) {
  return {.kind = TopicKind::queue, .depth = depth, .max_size = 256};
}
TopicOptions blocking_stream(std::uint64_t depth) {
  return {.kind = TopicKind::stream, .depth = depth, .max_size = 256, .overflow = Overflow::block};
}

constexpr int kMaxSeq = 4096;

// Bookkeeping shared with the children.
struct Log {
  std::atomic<int> ready{0};
  std::atomic<int> go{0};
  std::atomic<int> loans{0};   // loans a producer parked for a chunk got
  std::atomic<int> result{0};  // a child's verdict or a count it reports
  std::atomic<std::uint64_t> current{0};
  std::atomic<std::uint64_t> acks{0};                 // acks recorded (before the ack itself)
  std::atomic<std::uint64_t> distinct{0};             // sequence numbers acked at least once
  std::atomic<std::uint32_t> acked[kMaxSeq];          // [seq - 1] -> acks recorded
  std::atomic<std::uint32_t> acked_flagged[kMaxSeq];  // ... of which the Delivery said redelivered()
  std::atomic<std::uint32_t> role[kMaxSeq];           // what a victim did with it (test-specific)
};

// The pool of a topic, seen from this process (for a census).
TopicHandle open_topic(const Bus& bus, const std::string& name) {
  auto dir = DirectoryView::open(bus.domain()).value();
  return TopicHandle::open(bus.domain(), dir.find(name)->id).value();
}

// Every chunk back in the free ring and no invariant broken: nothing leaked, nothing held twice.
::testing::AssertionResult pool_whole(const Bus& bus, const std::string& name) {
  auto topic = open_topic(bus, name);
  const bool whole = wait_until(
      [&] {
        auto c = topic.pool().census();
        return c.violations.empty() && c.free == topic.pool().chunk_count();
      },
      5s);
  if (whole) return ::testing::AssertionSuccess();
  auto c = topic.pool().census();
  std::string v;
  for (const auto& s : c.violations) v += s + "; ";
  return ::testing::AssertionFailure() << "free " << c.free << " queued " << c.queued << " owned " << c.owned
                                       << " of " << topic.pool().chunk_count() << "; " << v;
}

nlohmann::json topic_stats(Client& c, const std::string& name) {
  auto topics = c.request({{"op", "topics"}});
  EXPECT_TRUE(topics);
  for (const auto& t : (*topics)["topics"])
    if (t["name"] == name) return t;
  return {};
}

// A producer child that fills a queue of depth `depth` and its whole pool (depth + 64 chunks: the test
// process receives and holds 64 of them), then parks in loan() for a chunk, `loans` times (30 s each),
// holding each loan (so that each one needs a chunk freed anew). Sets log->ready when the pool is full.
pid_t pool_exhausting_producer(const std::string& topic, std::uint64_t depth, int loans, Log* log) {
  return fork_child([=] {
    auto cl = Client::connect();
    if (!cl) return 2;
    auto prod = cl->producer(topic);
    if (!prod) return 3;
    for (std::uint64_t i = 0; i < depth + 64; ++i)
      if (!prod->publish(std::to_string(i + 1), {}, 20s)) return 4;
    log->ready.store(1);
    std::vector<Loan> held;
    for (int i = 0; i < loans; ++i) {
      auto l = prod->loan(8, 30s);
      if (!l) return 10 + i;
      held.push_back(std::move(l).value());
      log->loans.fetch_add(1);
    }
    return 0;
  });
}

// Receive and hold the 64 messages beyond the queue's depth (the pool is then all used: `depth` queued,
// 64 held here), then wait for the producer to be parked in loan().
std::vector<Delivery> hold_64(Consumer& con, Log* log) {
  std::vector<Delivery> held;
  while (held.size() < 64) {
    auto d = con.receive(10s);
    EXPECT_TRUE(d);
    if (!d) break;
    held.push_back(std::move(d).value());
  }
  EXPECT_TRUE(wait_until([&] { return log->ready.load() == 1; }, 10s));
  std::this_thread::sleep_for(300ms);  // past its spin: parked on the futex
  return held;
}

// ---- SIGKILL inside f ----

// A consumer killed inside f holding part of a batch: some acked, some moved out, some nacked, some left
// alone (nacked when f returned), the current one in f's hands. Every message is acked exactly once in
// the end (by the victim or the survivor), the ones the victim held come back flagged redelivered, the
// others unflagged, and the pool is whole.
TEST(QueueBatchAdversarialTest, KilledInsideFEveryMessageExactlyOnce) {
  Bus bus;
  constexpr int kMessages = 40;
  bus.create_topics({{"qb.kill", queue(64)}}, [](Client& c) {
    auto prod = c.producer("qb.kill").value();
    for (int i = 1; i <= kMessages; ++i) ASSERT_TRUE(prod.publish(std::to_string(i)));
  });
  auto* log = shared_block<Log>();
  enum Role : std::uint32_t { untouched = 0, acked = 1, kept = 2, nacked = 3, left = 4, current = 5 };
  const pid_t victim = fork_child([&] {
    auto cl = Client::connect();
    if (!cl) return 2;
    auto con = cl->consumer("qb.kill");
    if (!con) return 3;
    std::vector<Delivery> keep;
    keep.reserve(16);
    int i = 0;
    con->try_receive_batch(
        [&](Delivery& d) {
          const std::uint64_t s = d.seq();
          if (d.redelivered()) log->result.store(100);  // nothing is redelivered yet
          if (i++ == 9) {
            log->role[s - 1].store(current);
            log->ready.store(1);
            pause();  // killed here, holding d
          }
          switch (i % 4) {
            case 1:
              log->role[s - 1].store(acked);
              log->acked[s - 1].fetch_add(1);
              d.ack();
              break;
            case 2:
              log->role[s - 1].store(kept);
              keep.push_back(std::move(d));
              break;
            case 3:
              log->role[s - 1].store(nacked);
              d.nack();
              break;
            default:
              log->role[s - 1].store(left);  // nacked when f returns
              break;
          }
        },
        16);
    return 1;  // never gets here
  });
  ASSERT_TRUE(wait_until([&] { return log->ready.load() == 1; }, 10s));
  kill(victim, SIGKILL);
  EXPECT_EQ(wait_child(victim).signal, SIGKILL);
  EXPECT_EQ(log->result.load(), 0);

  auto client = bus.client();
  auto con = client.consumer("qb.kill").value();
  int victim_acked = 0;
  for (int s = 1; s <= kMessages; ++s) victim_acked += static_cast<int>(log->acked[s - 1].load());
  EXPECT_EQ(victim_acked, 3);
  std::vector<int> got(kMessages + 1, 0);
  std::vector<bool> flag(kMessages + 1, false);
  for (int n = 0; n < kMessages - victim_acked; ++n) {
    auto d = con.receive(10s);  // the redeliveries come once the broker sees the death
    ASSERT_TRUE(d) << "after " << n << " of " << kMessages - victim_acked << ": " << d.error().message();
    const auto s = d->seq();
    ASSERT_GE(s, 1u);
    ASSERT_LE(s, static_cast<std::uint64_t>(kMessages));
    ++got[s];
    flag[s] = d->redelivered();
    d->ack();
  }
  auto extra = con.receive(300ms);
  EXPECT_FALSE(extra) << "a duplicate: seq " << extra->seq();
  for (int s = 1; s <= kMessages; ++s) {
    const auto r = log->role[s - 1].load();
    if (r == acked) {
      EXPECT_EQ(got[s], 0) << "seq " << s << " acked by the victim, delivered again";
      continue;
    }
    EXPECT_EQ(got[s], 1) << "seq " << s << " role " << r;
    EXPECT_EQ(flag[s], r != untouched) << "seq " << s << " role " << r;
  }
  auto st = topic_stats(client, "qb.kill");
  EXPECT_EQ(st["queued"].get<int>(), 0);
  EXPECT_EQ(st["acked"].get<int>(), kMessages);
  EXPECT_TRUE(pool_whole(bus, "qb.kill"));
}

// Consumers SIGKILLed (by themselves, with a real SIGKILL, so that the point is known) at varied points
// of their batches: before or after an ack inside f, holding moved-out deliveries, right after leaving
// one alone, between the batch's end and the acks of what it kept; while a producer keeps a small queue
// full. Every message is acked at least once; a second ack of one only follows a redelivery (the victim
// died between recording and acking); at most one such per kill; nothing is left and the pool is whole.
TEST(QueueBatchAdversarialTest, KilledAtVariedPointsOfBatchesLosesNothing) {
  Bus bus;
  constexpr int kMessages = 4000;
  enum Point { kBeforeAck, kAfterAck, kAfterKeep, kAfterLeave, kAfterBatch, kPoints };
  constexpr int kKills = 2 * kPoints;
  bus.create_topics({{"qb.rand", queue(8)}});
  auto* log = shared_block<Log>();
  // die_at: the victim kills itself at its die_at-th event at `where`; -1: the survivor.
  auto consumer = [&](int die_at, int where) {
    return fork_child([&, die_at, where] {
      auto cl = Client::connect();
      if (!cl) return 2;
      auto con = cl->consumer("qb.rand");
      if (!con) return 3;
      int events = 0;
      auto maybe_die = [&](int point) {
        if (point == where && ++events >= die_at) kill(getpid(), SIGKILL);
      };
      std::vector<Delivery> keep;
      auto record_and_ack = [&](Delivery& d) {
        const std::uint64_t s = d.seq();
        if (s < 1 || s > static_cast<std::uint64_t>(kMessages)) std::abort();
        if (d.redelivered()) log->acked_flagged[s - 1].fetch_add(1);
        if (log->acked[s - 1].fetch_add(1) == 0) log->distinct.fetch_add(1);
        log->acks.fetch_add(1);
        maybe_die(kBeforeAck);
        d.ack();
        maybe_die(kAfterAck);
      };
      while (log->distinct.load() < static_cast<std::uint64_t>(kMessages)) {
        const std::size_t n = con->try_receive_batch(
            [&](Delivery& d) {
              switch (d.seq() % 5) {
                case 3:
                  keep.push_back(std::move(d));  // acked inside a later call of f, or after the batch
                  maybe_die(kAfterKeep);
                  break;
                case 4:
                  if (!d.redelivered()) {  // left alone once: back to the queue when f returns
                    maybe_die(kAfterLeave);
                    break;
                  }
                  [[fallthrough]];
                default:
                  record_and_ack(d);
              }
              if (keep.size() >= 3) {  // acks of earlier deliveries inside the batch
                for (auto& k : keep) record_and_ack(k);
                keep.clear();
              }
            },
            5);
        if (!keep.empty()) maybe_die(kAfterBatch);
        for (auto& k : keep) record_and_ack(k);
        keep.clear();
        if (n == 0) {
          auto d = con->receive(20ms);
          if (d) {
            if (d->seq() % 5 == 4 && !d->redelivered()) continue;  // dropped: nacked
            record_and_ack(*d);
          }
        }
      }
      return die_at < 0 ? 0 : 1;
    });
  };
  const pid_t producer = fork_child([&] {
    auto cl = Client::connect();
    if (!cl) return 2;
    auto prod = cl->producer("qb.rand");
    if (!prod) return 3;
    for (int i = 1; i <= kMessages; ++i)
      if (!prod->publish(std::to_string(i), {}, 20s)) return 4;
    return 0;
  });
  for (int k = 0; k < kKills; ++k) {
    const int where = k % kPoints;
    const int die_at = 2 + 3 * k;  // events at `where` before dying
    const pid_t v = consumer(die_at, where);
    const auto r = wait_child(v, 20s);
    ASSERT_EQ(r.signal, SIGKILL) << "victim " << k << " (point " << where << ") did not die: exit " << r.code
                                 << (r.timed_out ? " (timed out)" : "") << "; acks " << log->acks.load()
                                 << " distinct " << log->distinct.load();
  }
  EXPECT_LT(log->distinct.load(), static_cast<std::uint64_t>(kMessages));  // the survivor has work left
  const pid_t last = consumer(-1, kPoints);
  auto rp = wait_child(producer, 60s);
  EXPECT_TRUE(rp.exited && rp.code == 0)
      << "producer: code " << rp.code << " signal " << rp.signal << (rp.timed_out ? " (timed out)" : "");
  auto rl = wait_child(last, 30s);
  EXPECT_TRUE(rl.exited && rl.code == 0)
      << "last consumer: code " << rl.code << " signal " << rl.signal << (rl.timed_out ? " (timed out)" : "");
  // What is left: redeliveries of messages a victim recorded and died before acking (the last consumer
  // stops once every message was recorded). Each must be flagged; it counts as that message's second ack.
  auto client = bus.client();
  auto con = client.consumer("qb.rand").value();
  while (auto d = con.receive(300ms)) {
    const auto s = d->seq();
    ASSERT_TRUE(s >= 1 && s <= static_cast<std::uint64_t>(kMessages)) << s;
    EXPECT_TRUE(d->redelivered()) << "left over, never redelivered: seq " << s;
    if (d->redelivered()) log->acked_flagged[s - 1].fetch_add(1);
    log->acked[s - 1].fetch_add(1);
    d->ack();
  }
  int dups = 0;
  for (int s = 0; s < kMessages; ++s) {
    const auto a = log->acked[s].load();
    ASSERT_GE(a, 1u) << "seq " << s + 1 << " never acked (lost)";
    EXPECT_LE(a - 1, log->acked_flagged[s].load()) << "seq " << s + 1 << " acked twice, not flagged";
    dups += static_cast<int>(a - 1);
  }
  EXPECT_LE(dups, 2);  // only the two kBeforeAck victims may die between recording and acking
  EXPECT_TRUE(pool_whole(bus, "qb.rand"));
}

// A producer parked for room in a full queue (depth 4). A consumer takes a batch, acks inside f, and is
// SIGKILLed inside f (holding its current delivery or not). Its batch made room, but the batch's one
// wake-up was deferred to its end, which never comes; the producer must still get its room well within
// its 30 s timeout (the broker sees the death). PerMessage is the same with try_receive(): the control.
class QueueBatchKillWakeTest : public ::testing::TestWithParam<int> {};
enum KillCase { kKilledAfterAckingAll = 0, kKilledHoldingOne = 1, kPerMessageControl = 2 };

TEST_P(QueueBatchKillWakeTest, ConsumerKilledInsideFDoesNotStrandAProducerParkedForRoom) {
  Bus bus;
  bus.create_topics({{"qb.kwake", queue(4)}});
  auto* log = shared_block<Log>();
  const int mode = GetParam();
  const pid_t producer = fork_child([&] {
    auto cl = Client::connect();
    if (!cl) return 2;
    auto prod = cl->producer("qb.kwake");
    if (!prod) return 3;
    for (int i = 1; i <= 4; ++i)
      if (!prod->publish(std::to_string(i))) return 4;
    log->ready.store(1);
    // Full: parks (after its spin) for room. 30 s is far beyond any wake-up.
    auto st = prod->publish("5", {}, 30s);
    return st ? 0 : 5;
  });
  ASSERT_TRUE(wait_until([&] { return log->ready.load() == 1; }, 10s));
  std::this_thread::sleep_for(300ms);  // let it park
  const pid_t victim = fork_child([&] {
    auto cl = Client::connect();
    if (!cl) return 2;
    auto con = cl->consumer("qb.kwake");
    if (!con) return 3;
    if (mode == kPerMessageControl) {
      auto a = con->try_receive();
      auto b = con->try_receive();
      if (!a || !b) return 4;
      a->ack();
      b->ack();
      log->go.store(1);
      pause();
      return 1;
    }
    int i = 0;
    con->try_receive_batch(
        [&](Delivery& d) {
          if (++i == 2) {
            if (mode == kKilledAfterAckingAll) d.ack();
            log->go.store(1);
            pause();  // killed here: the batch never ends
          }
          d.ack();
        },
        4);
    return 1;
  });
  ASSERT_TRUE(wait_until([&] { return log->go.load() == 1; }, 10s));
  kill(victim, SIGKILL);
  EXPECT_EQ(wait_child(victim).signal, SIGKILL);
  // The queue has room now (2 or 3 of 4). The producer is done within microseconds if woken.
  auto r = wait_child(producer, 15s);
  EXPECT_TRUE(r.exited && r.code == 0) << "producer still parked for room 15 s after the consumer died "
                                       << "(lost wake-up): code " << r.code << " signal " << r.signal
                                       << (r.timed_out ? " (timed out, killed)" : "");
}

INSTANTIATE_TEST_SUITE_P(Cases, QueueBatchKillWakeTest,
                         ::testing::Values(kKilledAfterAckingAll, kKilledHoldingOne, kPerMessageControl),
                         [](const ::testing::TestParamInfo<int>& i) {
                           return i.param == kKilledAfterAckingAll ? std::string("AfterAckingAll")
                                  : i.param == kKilledHoldingOne   ? std::string("HoldingOne")
                                                                   : std::string("PerMessageControl");
                         });

// ---- f throwing ----

// f throws midway: the delivery it threw from and the ones it left alone go back (flagged), the one it
// moved out stays with the caller, the batch's end ran (the thread is no longer "in a batch": an ack
// made after it wakes a producer parked for a chunk at once).
TEST(QueueBatchAdversarialTest, ThrowingFNacksTheRestAndLeavesNoBatchBehind) {
  Bus bus;
  bus.create_topics({{"qb.throw", queue(4)}});
  auto* log = shared_block<Log>();
  const pid_t producer = pool_exhausting_producer("qb.throw", 4, 2, log);
  auto client = bus.client();
  auto con = client.consumer("qb.throw").value();
  auto held = hold_64(con, log);
  ASSERT_EQ(held.size(), 64u);
  // The queue holds 65..68.
  std::optional<Delivery> kept;
  int i = 0;
  EXPECT_THROW(con.try_receive_batch(
                   [&](Delivery& d) {
                     switch (i++) {
                       case 0:
                         kept.emplace(std::move(d));  // 65
                         return;
                       case 1:
                         return;  // 66: left alone
                       default:
                         throw std::runtime_error("f failed");  // 67
                     }
                   },
                   10),
               std::runtime_error);
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->seq(), 65u);
  std::this_thread::sleep_for(300ms);  // the batch's end woke the producer for nothing: parked again
  EXPECT_EQ(log->loans.load(), 0);
  held[0].ack();  // outside any batch: wakes at once
  EXPECT_TRUE(wait_until([&] { return log->loans.load() == 1; }, 10s))
      << "an ack after a thrown batch did not wake";
  // Inside a later batch, as a control: its end wakes.
  std::vector<std::uint64_t> order;
  std::vector<bool> flags;
  EXPECT_EQ(con.try_receive_batch(
                [&](Delivery& d) {
                  order.push_back(d.seq());
                  flags.push_back(d.redelivered());
                  if (order.size() == 1) held[1].ack();
                  d.ack();
                },
                10),
            3u);
  EXPECT_EQ(order, (std::vector<std::uint64_t>{68, 66, 67}));
  EXPECT_EQ(flags, (std::vector<bool>{false, true, true}));
  auto r = wait_child(producer, 15s);
  EXPECT_TRUE(r.exited && r.code == 0) << "code " << r.code << (r.timed_out ? " (timed out)" : "");
  kept->ack();
  held.clear();  // nacked: back to the queue
  int left = 0;
  while (auto d = con.try_receive()) {
    d->ack();
    ++left;
  }
  EXPECT_EQ(left, 62);
  EXPECT_TRUE(pool_whole(bus, "qb.throw"));
}

// ---- acks of other ports, nesting, other threads ----

// Inside A's batch, f acks a delivery of another consumer (of another topic, or of the same topic): that
// ack is not A's batch's, so it wakes the producer parked for a chunk at once, while f still runs.
class QueueBatchOtherPortTest : public ::testing::TestWithParam<bool> {};

TEST_P(QueueBatchOtherPortTest, AckOfAnotherConsumersDeliveryInsideFWakesAtOnce) {
  const bool same_topic = GetParam();
  Bus bus;
  const std::string a_topic = same_topic ? "qb.other.b" : "qb.other.a";
  bus.create_topics({{"qb.other.a", queue(16)}, {"qb.other.b", queue(4)}});
  auto* log = shared_block<Log>();
  const pid_t producer = pool_exhausting_producer("qb.other.b", 4, 1, log);
  auto client = bus.client();
  auto con_b = client.consumer("qb.other.b").value();
  auto held = hold_64(con_b, log);
  ASSERT_EQ(held.size(), 64u);
  auto con_a = client.consumer(a_topic).value();
  if (!same_topic) {
    auto prod_a = client.producer(a_topic).value();
    ASSERT_TRUE(prod_a.publish("a1"));
  }
  bool woke_inside = false;
  std::size_t calls = 0;
  EXPECT_EQ(con_a.try_receive_batch(
                [&](Delivery& d) {
                  if (calls++ == 0) {
                    held[0].ack();  // con_b's delivery
                    woke_inside = wait_until([&] { return log->loans.load() == 1; }, 10s);
                  }
                  d.ack();
                },
                1),
            1u);
  EXPECT_TRUE(woke_inside) << "an ack of another consumer's delivery waited for the batch's end";
  auto r = wait_child(producer, 15s);
  EXPECT_TRUE(r.exited && r.code == 0) << "code " << r.code << (r.timed_out ? " (timed out)" : "");
}

INSTANTIATE_TEST_SUITE_P(Topics, QueueBatchOtherPortTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? std::string("SameTopic") : std::string("OtherTopic");
                         });

// A batch of consumer B (topic Y) nested inside f of a batch of consumer A (topic X), and a batch of A
// nested in A's own f. The inner batch's acks wake at the inner end; back in the outer f an ack of a Y
// delivery (not A's) wakes at once; after both, an ack wakes at once (no batch left on the thread).
// Every message of X is seen once, in order.
TEST(QueueBatchAdversarialTest, NestedBatchesWakeAtTheRightEnds) {
  Bus bus;
  bus.create_topics({{"qb.nest.x", queue(16)}, {"qb.nest.y", queue(4)}});
  auto* log = shared_block<Log>();
  const pid_t producer = pool_exhausting_producer("qb.nest.y", 4, 3, log);
  auto client = bus.client();
  auto con_b = client.consumer("qb.nest.y").value();
  auto held = hold_64(con_b, log);
  ASSERT_EQ(held.size(), 64u);
  auto con_a = client.consumer("qb.nest.x").value();
  {
    auto prod_x = client.producer("qb.nest.x").value();
    for (int i = 1; i <= 6; ++i) ASSERT_TRUE(prod_x.publish(std::to_string(i)));
  }
  std::vector<std::uint64_t> seen_x;
  std::vector<Delivery> popped_y;
  bool inner_end_woke = false, other_port_woke = false;
  std::size_t outer_calls = 0;
  const std::size_t n = con_a.try_receive_batch(
      [&](Delivery& d) {
        seen_x.push_back(d.seq());
        switch (outer_calls++) {
          case 0: {
            // Inner batch of B: pops Y's 4 queued (kept), acks one held Y delivery inside.
            const std::size_t m = con_b.try_receive_batch(
                [&](Delivery& y) {
                  if (popped_y.empty()) held[0].ack();
                  popped_y.push_back(std::move(y));
                },
                10);
            EXPECT_EQ(m, 4u);
            inner_end_woke = wait_until([&] { return log->loans.load() == 1; }, 10s);
            held[1].ack();  // a Y delivery, in A's batch: not A's, wakes at once
            other_port_woke = wait_until([&] { return log->loans.load() == 2; }, 10s);
            break;
          }
          case 1: {
            // A nested in A's own f: takes 3 and 4 (acked), leaves 5 and 6 to the outer loop.
            const std::size_t m = con_a.try_receive_batch(
                [&](Delivery& x) {
                  seen_x.push_back(x.seq());
                  x.ack();
                },
                2);
            EXPECT_EQ(m, 2u);
            break;
          }
          default:
            break;
        }
        d.ack();
      },
      4);
  EXPECT_EQ(n, 4u);
  EXPECT_TRUE(inner_end_woke) << "the inner batch's end did not wake the producer";
  EXPECT_TRUE(other_port_woke) << "an ack of B's delivery inside A's batch was deferred";
  EXPECT_EQ(seen_x, (std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6}));
  std::this_thread::sleep_for(300ms);
  held[2].ack();  // no batch on this thread any more
  EXPECT_TRUE(wait_until([&] { return log->loans.load() == 3; }, 10s)) << "a batch was left on the thread";
  auto r = wait_child(producer, 15s);
  EXPECT_TRUE(r.exited && r.code == 0) << "code " << r.code << (r.timed_out ? " (timed out)" : "");
  EXPECT_FALSE(con_a.try_receive());
}

// Deliveries moved out of a batch and acked from another thread: during the batch (while f waits) and
// after it. Each such ack wakes the producer parked for a chunk at once.
TEST(QueueBatchAdversarialTest, MovedOutDeliveryAckedFromAnotherThreadWakes) {
  Bus bus;
  bus.create_topics({{"qb.thread", queue(4)}});
  auto* log = shared_block<Log>();
  const pid_t producer = pool_exhausting_producer("qb.thread", 4, 2, log);
  auto client = bus.client();
  auto con = client.consumer("qb.thread").value();
  auto held = hold_64(con, log);
  ASSERT_EQ(held.size(), 64u);
  std::vector<Delivery> out;
  bool woke_during = false;
  EXPECT_EQ(con.try_receive_batch(
                [&](Delivery& d) {
                  out.push_back(std::move(d));
                  if (out.size() == 2) {
                    std::thread([&] { out[0].ack(); }).join();  // moved out of this batch, acked elsewhere
                    woke_during = wait_until([&] { return log->loans.load() == 1; }, 10s);
                  }
                },
                4),
            4u);
  EXPECT_TRUE(woke_during) << "another thread's ack inside the batch was deferred";
  std::this_thread::sleep_for(300ms);
  std::thread([&] { out[1].ack(); }).join();
  EXPECT_TRUE(wait_until([&] { return log->loans.load() == 2; }, 10s));
  auto r = wait_child(producer, 15s);
  EXPECT_TRUE(r.exited && r.code == 0) << "code " << r.code << (r.timed_out ? " (timed out)" : "");
  out.clear();
  held.clear();
  int left = 0;
  while (auto d = con.try_receive()) {
    d->ack();
    ++left;
  }
  EXPECT_EQ(left, 66);
  EXPECT_TRUE(pool_whole(bus, "qb.thread"));
}

// ---- producers parked for room ----

// A producer keeps a depth-4 queue full (parking for room again and again) while the consumer takes
// batches of 3 and acks inside f. No hang, nothing lost or duplicated, in order.
TEST(QueueBatchAdversarialTest, ProducerParkedForRoomIsWokenByBatchesOfAcks) {
  Bus bus;
  constexpr int kMessages = 3000;
  bus.create_topics({{"qb.room", queue(4)}});
  auto* log = shared_block<Log>();
  const pid_t producer = fork_child([&] {
    auto cl = Client::connect();
    if (!cl) return 2;
    auto prod = cl->producer("qb.room");
    if (!prod) return 3;
    for (int i = 1; i <= kMessages; ++i)
      if (!prod->publish(std::to_string(i), {}, 20s)) return 4;
    return 0;
  });
  auto client = bus.client();
  auto con = client.consumer("qb.room").value();
  std::uint64_t next = 1;
  int errors = 0;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (next <= kMessages && std::chrono::steady_clock::now() < until) {
    const std::size_t n = con.try_receive_batch(
        [&](Delivery& d) {
          if (d.seq() != next || d.redelivered()) ++errors;
          next = d.seq() + 1;
          d.ack();
          if (next % 97 == 0) std::this_thread::sleep_for(1ms);  // let the producer park now and then
        },
        3);
    if (n == 0) {
      if (auto d = con.receive(50ms)) {
        if (d->seq() != next) ++errors;
        next = d->seq() + 1;
        d->ack();
      }
    }
  }
  EXPECT_EQ(next, static_cast<std::uint64_t>(kMessages) + 1);
  EXPECT_EQ(errors, 0);
  auto r = wait_child(producer, 15s);
  EXPECT_TRUE(r.exited && r.code == 0) << "code " << r.code << (r.timed_out ? " (timed out)" : "");
  (void)log;
}

// ---- edge arguments ----

TEST(QueueBatchAdversarialTest, MaxZeroTakesNothing) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("qb.zero", queue(8)));
  auto prod = client.producer("qb.zero").value();
  ASSERT_TRUE(prod.publish("1"));
  auto con = client.consumer("qb.zero").value();
  int calls = 0;
  EXPECT_EQ(con.try_receive_batch([&](Delivery&) { ++calls; }, 0), 0u);
  EXPECT_EQ(calls, 0);
  auto d = con.try_receive();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->seq(), 1u);
  EXPECT_FALSE(d->redelivered());
  d->ack();
  EXPECT_EQ(con.try_receive_batch([&](Delivery&) { ++calls; }, std::numeric_limits<std::size_t>::max()), 0u);
  EXPECT_EQ(calls, 0);
}

// A Delivery f leaves alone goes back to the queue "for another consumer". The same batch must not take
// it again: with 3 messages ready and f leaving them all, the batch sees each once (it returned max
// with the same 3 messages over and over).
TEST(QueueBatchAdversarialTest, LeftAloneMessageIsNotTakenAgainByTheSameBatch) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("qb.again", queue(8)));
  auto prod = client.producer("qb.again").value();
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(prod.publish(std::to_string(i)));
  auto con = client.consumer("qb.again").value();
  std::vector<std::uint64_t> seen;
  const std::size_t n = con.try_receive_batch([&](Delivery& d) { seen.push_back(d.seq()); }, 1000);
  EXPECT_EQ(n, 3u) << "the batch took the messages it put back again and again";
  EXPECT_EQ(std::set<std::uint64_t>(seen.begin(), seen.end()).size(), seen.size())
      << "one batch handed the same message to f " << seen.size() / 3 << " times";
}

// The same with max = SIZE_MAX ("whatever is ready"): a consumer that leaves a message for others must
// get control back. Run in a child, bounded: it never returned.
TEST(QueueBatchAdversarialTest, LeftAloneMessageWithUnboundedMaxReturns) {
  Bus bus;
  bus.create_topics({{"qb.spin", queue(8)}}, [](Client& c) {
    auto prod = c.producer("qb.spin").value();
    ASSERT_TRUE(prod.publish("1"));
  });
  auto* log = shared_block<Log>();
  const pid_t child = fork_child([&] {
    auto cl = Client::connect();
    if (!cl) return 2;
    auto con = cl->consumer("qb.spin");
    if (!con) return 3;
    const std::size_t n = con->try_receive_batch([](Delivery&) {}, std::numeric_limits<std::size_t>::max());
    log->result.store(static_cast<int>(std::min<std::size_t>(n, 1 << 30)));
    return 0;
  });
  auto r = wait_child(child, 10s);
  EXPECT_TRUE(r.exited && r.code == 0) << "try_receive_batch(leave alone, SIZE_MAX) did not return in 10 s"
                                       << (r.timed_out ? " (killed)" : "");
  EXPECT_EQ(log->result.load(), 1);
}

// Keeping a Delivery by move-assigning it over one kept earlier drops the earlier one. A dropped
// Delivery is nacked ("nack() (or dropping a Delivery unacked) puts the message back"): it must come back
// flagged, not vanish. std::optional<Delivery>::operator= and vector::erase move-assign.
TEST(QueueBatchAdversarialTest, MoveAssigningOverAKeptDeliveryNacksIt) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("qb.assign", queue(8)));
  auto prod = client.producer("qb.assign").value();
  for (int i = 1; i <= 2; ++i) ASSERT_TRUE(prod.publish(std::to_string(i)));
  auto con = client.consumer("qb.assign").value();
  std::optional<Delivery> kept;
  EXPECT_EQ(con.try_receive_batch([&](Delivery& d) { kept = std::move(d); }, 2), 2u);  // 2 replaces 1
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->seq(), 2u);
  kept->ack();
  auto again = con.receive(1s);
  ASSERT_TRUE(again) << "message 1, overwritten unacked, is gone: " << again.error().message();
  EXPECT_EQ(again->seq(), 1u);
  EXPECT_TRUE(again->redelivered());
  again->ack();
  auto st = topic_stats(client, "qb.assign");
  EXPECT_EQ(st["acked"].get<int>(), 2);
  EXPECT_TRUE(pool_whole(bus, "qb.assign"));
}

// The topic deleted inside f (by f itself, so the order is certain): "ports that map it fail from now
// on", as try_receive() does (nullopt once deleted); the batch must stop handing out messages of a
// deleted topic.
TEST(QueueBatchAdversarialTest, TopicDeletedInsideFStopsTheBatch) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("qb.del", queue(8)));
  auto prod = client.producer("qb.del").value();
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(prod.publish(std::to_string(i)));
  auto con = client.consumer("qb.del").value();
  std::vector<std::uint64_t> seen;
  const std::size_t n = con.try_receive_batch(
      [&](Delivery& d) {
        seen.push_back(d.seq());
        if (seen.size() == 1) {
          EXPECT_TRUE(client.delete_topic("qb.del"));
        }
        d.ack();
      },
      10);
  EXPECT_FALSE(con.try_receive());  // the per-message path: nothing once deleted
  EXPECT_EQ(n, 1u) << "the batch went on delivering " << n - 1 << " message(s) of the deleted topic";
  auto r = con.receive(10ms);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::not_found);
}

// A Consumer moved away (into another Consumer) inside f: the port lives on in the new owner, the batch
// goes on, and Deliveries taken before and after are acked or nacked normally.
TEST(QueueBatchAdversarialTest, ConsumerMovedInsideFKeepsItsDeliveriesValid) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("qb.move", queue(8)));
  auto prod = client.producer("qb.move").value();
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(prod.publish(std::to_string(i)));
  std::optional<Consumer> a(client.consumer("qb.move").value());
  std::optional<Consumer> b;
  std::vector<Delivery> out;
  std::vector<std::uint64_t> seen;
  EXPECT_EQ(a->try_receive_batch(
                [&](Delivery& d) {
                  seen.push_back(d.seq());
                  if (seen.size() == 1) b.emplace(std::move(*a));
                  out.push_back(std::move(d));
                },
                4),
            4u);
  EXPECT_EQ(seen, (std::vector<std::uint64_t>{1, 2, 3, 4}));
  a.reset();  // moved-from: holds no port
  out[0].ack();
  out[1].ack();
  out.clear();  // 3 and 4 nacked
  std::vector<std::uint64_t> back;
  EXPECT_EQ(b->try_receive_batch(
                [&](Delivery& d) {
                  back.push_back(d.seq());
                  EXPECT_TRUE(d.redelivered());
                  d.ack();
                },
                10),
            2u);
  EXPECT_EQ(back, (std::vector<std::uint64_t>{3, 4}));
  EXPECT_TRUE(pool_whole(bus, "qb.move"));
}

// ---- streams ----

// Subscriber::try_receive_batch under overflow block (depth 4): f throws now and then and nests a batch
// of the same subscriber now and then. The publisher, parked for room, is never stranded, and every
// message arrives once, in order, none missed.
TEST(QueueBatchAdversarialTest, StreamBatchThrowingAndNestedKeepsABlockedPublisherMoving) {
  Bus bus;
  constexpr int kMessages = 2000;
  bus.create_topics({{"qb.stream", blocking_stream(4)}});
  auto* log = shared_block<Log>();
  const pid_t publisher = fork_child([&] {
    auto cl = Client::connect();
    if (!cl) return 2;
    auto pub = cl->publisher("qb.stream");
    if (!pub) return 3;
    if (!wait_until([&] { return log->go.load() == 1; }, 10s)) return 4;
    for (int i = 1; i <= kMessages; ++i)
      if (!pub->publish(std::to_string(i), {}, 20s)) return 5;
    return 0;
  });
  auto client = bus.client();
  auto sub = client.subscriber("qb.stream").value();
  log->go.store(1);
  std::uint64_t next = 1;
  int errors = 0;
  const auto take = [&](Sample& s) {
    if (s.seq() != next || s.missed() != 0 || s.text() != std::to_string(next)) ++errors;
    next = s.seq() + 1;
  };
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (next <= kMessages && std::chrono::steady_clock::now() < until) {
    try {
      const std::size_t n = sub.try_receive_batch(
          [&](Sample& s) {
            take(s);
            if (next % 7 == 0) throw std::runtime_error("f failed");
            if (next % 5 == 0) sub.try_receive_batch(take, 2);
          },
          16);
      if (n == 0) {
        if (auto s = sub.receive(50ms)) take(*s);
      }
    } catch (const std::runtime_error&) {
    }
  }
  EXPECT_EQ(next, static_cast<std::uint64_t>(kMessages) + 1);
  EXPECT_EQ(errors, 0);
  auto r = wait_child(publisher, 15s);
  EXPECT_TRUE(r.exited && r.code == 0) << "code " << r.code << (r.timed_out ? " (timed out)" : "");
}

}  // namespace
}  // namespace shmbus
