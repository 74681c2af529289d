// The client library against a real broker, across real processes.
//
// Children are forked while the test process has no Client: a Client runs a thread, and a child forked
// from a multi-threaded process may inherit a lock that thread held (ASan's allocator lock did, and hung
// a child). A process that forks connects anew in the child.
#include <gtest/gtest.h>

#include <atomic>
#include <set>

#include "../shm/test_util.hpp"
#include "bus_fixture.hpp"
#include "shmbus/shmbus.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using test::Bus;
using test::fork_child;
using test::shared_block;
using test::wait_child;
using test::wait_until;

struct Flags {
  std::atomic<int> ready{0};
  std::atomic<int> go{0};
  std::atomic<std::uint64_t> count{0};
};

TopicOptions stream(std::uint64_t depth, Overflow o = Overflow::drop_oldest, std::uint32_t subs = 8) {
  return {.kind = TopicKind::stream, .depth = depth, .max_size = 256, .overflow = o, .max_subscribers = subs};
}
TopicOptions queue(std::uint64_t depth) {
  return {.kind = TopicKind::queue, .depth = depth, .max_size = 256};
}

// A subscriber process: subscribes, reports ready, receives `n` messages "i" with seq i in order.
int subscriber_child(const std::string& topic, int n, Flags* f) {
  auto c = Client::connect();
  if (!c) return 2;
  auto sub = c->subscriber(topic);
  if (!sub) return 3;
  f->ready.fetch_add(1);
  for (int i = 1; i <= n; ++i) {
    auto s = sub->receive(20s);
    if (!s) return 4;
    if (s->seq() != static_cast<std::uint64_t>(i) || s->text() != std::to_string(i) || s->missed() != 0) {
      std::fprintf(stderr, "subscriber: expected %d, got seq %llu text %.*s missed %llu\n", i,
                   static_cast<unsigned long long>(s->seq()), static_cast<int>(s->text().size()),
                   s->text().data(), static_cast<unsigned long long>(s->missed()));
      return 5;
    }
    f->count.fetch_add(1);
  }
  return 0;
}

class StreamFanoutTest : public ::testing::TestWithParam<int> {};

TEST_P(StreamFanoutTest, EverySubscriberProcessSeesEveryMessageInOrder) {
  Bus bus;
  bus.create_topics({{"it.fan", stream(64, Overflow::block)}});
  const int subs = GetParam();
  constexpr int kMessages = 5000;
  auto* f = shared_block<Flags>();
  std::vector<pid_t> kids;
  for (int i = 0; i < subs; ++i)
    kids.push_back(fork_child([&] { return subscriber_child("it.fan", kMessages, f); }));
  ASSERT_TRUE(wait_until([&] { return f->ready.load() == subs; }, 10s));
  auto client = bus.client();
  auto pub = client.publisher("it.fan").value();
  for (int i = 1; i <= kMessages; ++i) ASSERT_TRUE(pub.publish(std::to_string(i), {}, 10s)) << i;
  for (pid_t k : kids) {
    auto r = wait_child(k, 30s);
    EXPECT_TRUE(r.exited && r.code == 0) << "code " << r.code << " signal " << r.signal;
  }
  EXPECT_EQ(f->count.load(), static_cast<std::uint64_t>(subs) * kMessages);
}

INSTANTIATE_TEST_SUITE_P(Subscribers, StreamFanoutTest, ::testing::Values(1, 4));

TEST(StreamTest, LateSubscriberSeesOnlyLaterMessages) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("it.late", stream(16)));
  auto pub = client.publisher("it.late").value();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(pub.publish("early"));
  auto sub = client.subscriber("it.late").value();
  EXPECT_FALSE(sub.try_receive());
  ASSERT_TRUE(pub.publish("late", {{"n", 6}}));
  auto s = sub.receive(1s);
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ(s->text(), "late");
  EXPECT_EQ(s->seq(), 6u);
  EXPECT_EQ(s->attr("n")->as_int(), 6);
  EXPECT_EQ(s->publisher(), pub.id());
  EXPECT_EQ(s->topic(), "it.late");
}

TEST(StreamTest, DropOldestTellsTheSubscriberHowManyItMissed) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("it.drop", stream(4)));
  auto sub = client.subscriber("it.drop").value();
  auto pub = client.publisher("it.drop").value();
  for (int i = 1; i <= 20; ++i) ASSERT_TRUE(pub.publish(std::to_string(i)));
  auto s = sub.receive(1s);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->text(), "17");
  EXPECT_EQ(s->missed(), 16u);
  for (int i = 18; i <= 20; ++i) {
    auto t = sub.receive(1s);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->text(), std::to_string(i));
    EXPECT_EQ(t->missed(), 0u);
  }
}

TEST(StreamTest, BlockPolicyTimesOutThenResumesWhenTheSubscriberReads) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("it.block", stream(2, Overflow::block)));
  auto sub = client.subscriber("it.block").value();
  auto pub = client.publisher("it.block").value();
  ASSERT_TRUE(pub.publish("1"));
  ASSERT_TRUE(pub.publish("2"));
  auto st = pub.publish("3", {}, 30ms);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::timed_out);
  {
    auto s = sub.receive(1s);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->text(), "1");
  }
  ASSERT_TRUE(pub.publish("4", {}, 1s));
  {
    auto s = sub.receive(1s);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->text(), "2");
  }
  {
    auto s = sub.receive(1s);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->text(), "4");
    EXPECT_EQ(s->missed(), 1u);
  }
}

// A batch takes what is ready, in order, inline and chunk messages alike; a sample moved out of the callback
// is kept; a publisher blocked on a full connection gets its room when the batch ends.
TEST(StreamTest, ReceiveBatchTakesWhatIsReadyInOrderAndFreesRoomAtItsEnd) {
  Bus bus;
  auto client = bus.client();
  TopicOptions o = stream(8, Overflow::block);
  o.max_size = 300;
  ASSERT_TRUE(client.create_topic("it.batch", o));
  auto sub = client.subscriber("it.batch").value();
  auto pub = client.publisher("it.batch").value();
  auto body = [](int i) { return std::string(i % 2 == 0 ? 200 : 8, static_cast<char>('a' + i)); };
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(pub.publish(body(i), {{"i", i}}));
  EXPECT_FALSE(pub.publish("full", {}, 0ms)) << "the connection is full";
  std::vector<std::string> got;
  std::optional<Sample> kept;
  const std::size_t n = sub.try_receive_batch(
      [&](Sample& s) {
        got.emplace_back(s.text());
        EXPECT_EQ(s.attr("i")->as_int(), static_cast<std::int64_t>(got.size() - 1));
        if (got.size() == 2) kept.emplace(std::move(s));  // a chunk message, kept past the batch
      },
      4);
  ASSERT_EQ(n, 4u);  // the last one inline: only the batch's end moves the tail past it
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got[i], body(i));
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->text(), body(1));
  // The batch is over: its 4 slots are free for the publisher now, without another receive.
  for (int i = 8; i < 12; ++i) ASSERT_TRUE(pub.publish(body(i), {{"i", i}}, 0ms)) << i;
  got.clear();
  EXPECT_EQ(sub.try_receive_batch([&](Sample& s) { got.emplace_back(s.text()); }, 100), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(got[i], body(i + 4));
  const auto nothing = [](Sample&) {};  // a const callable works too
  EXPECT_EQ(sub.try_receive_batch(nothing, 100), 0u);
}

TEST(StreamTest, ZeroCopyLoanIsReadInPlace) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("it.zc", stream(8)));
  auto sub = client.subscriber("it.zc").value();
  auto pub = client.publisher("it.zc").value();
  auto loan = pub.loan(100).value();
  std::memset(loan.data(), 'q', 100);
  loan.resize(60);
  const std::byte* where = loan.data();
  ASSERT_TRUE(pub.publish(std::move(loan)));
  auto s = sub.receive(1s).value();
  EXPECT_EQ(s.bytes().size(), 60u);
  EXPECT_EQ(s.bytes().data(), where);  // the one subscriber reads the publisher's own chunk
  EXPECT_EQ(s.text(), std::string(60, 'q'));
}

TEST(ErrorsTest, BadNamesOversizeUnknownTopicsAndWrongKindAreErrors) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("it.q", queue(8)));
  ASSERT_TRUE(client.create_topic("it.s", stream(8)));
  EXPECT_EQ(client.publisher("a..b").error().code(), Errc::invalid_argument);
  EXPECT_EQ(client.publisher("it.none").error().code(), Errc::not_found);
  EXPECT_EQ(client.publisher("it.q").error().code(), Errc::invalid_argument);
  EXPECT_EQ(client.consumer("it.s").error().code(), Errc::invalid_argument);
  auto pub = client.publisher("it.s").value();
  auto big = pub.publish(std::string(257, 'x'));
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code(), Errc::too_large);
  EXPECT_NE(big.error().message().find("256"), std::string::npos);
  EXPECT_EQ(client.create_topic("it.s", stream(8)).error().code(), Errc::already_exists);
}

struct QueueLog {
  std::atomic<std::uint64_t> consumed{0};
  std::atomic<std::uint32_t> seen[2][4000];  // [producer][seq-1] -> times consumed
  std::atomic<int> order_errors{0};
};

TEST(QueueTest, TwoProducersThreeConsumersEachMessageExactlyOnce) {
  Bus bus;
  bus.create_topics({{"it.work", queue(64)}});
  constexpr int kPerProducer = 4000;
  auto* log = shared_block<QueueLog>();
  std::vector<pid_t> kids;
  for (int c = 0; c < 3; ++c)
    kids.push_back(fork_child([&] {
      auto cl = Client::connect();
      if (!cl) return 2;
      auto con = cl->consumer("it.work");
      if (!con) return 3;
      std::uint64_t last[2] = {0, 0};
      while (log->consumed.load() < 2 * kPerProducer) {
        auto d = con->receive(50ms);
        if (!d) continue;
        const int p = static_cast<int>(d->attr("p")->as_int());
        const auto seq = static_cast<std::uint64_t>(std::stoull(std::string(d->text())));
        if (seq <= last[p]) log->order_errors.fetch_add(1);  // per-producer FIFO as seen by one consumer
        last[p] = seq;
        log->seen[p][seq - 1].fetch_add(1);
        d->ack();
        log->consumed.fetch_add(1);
      }
      return 0;
    }));
  for (int p = 0; p < 2; ++p)
    kids.push_back(fork_child([&, p] {
      auto cl = Client::connect();
      if (!cl) return 2;
      auto prod = cl->producer("it.work");
      if (!prod) return 3;
      for (int i = 1; i <= kPerProducer; ++i)
        if (!prod->publish(std::to_string(i), {{"p", p}}, 10s)) return 4;
      return 0;
    }));
  for (pid_t k : kids) {
    auto r = wait_child(k, 60s);
    EXPECT_TRUE(r.exited && r.code == 0) << "code " << r.code << " signal " << r.signal;
  }
  EXPECT_EQ(log->consumed.load(), 2u * kPerProducer);
  EXPECT_EQ(log->order_errors.load(), 0);
  for (int p = 0; p < 2; ++p)
    for (int i = 0; i < kPerProducer; ++i)
      ASSERT_EQ(log->seen[p][i].load(), 1u) << "producer " << p << " seq " << i + 1;
}

TEST(QueueTest, ConsumerKilledHoldingUnackedMessagesGetsThemRedelivered) {
  Bus bus;
  bus.create_topics({{"it.redo", queue(16)}}, [](Client& c) {
    auto prod = c.producer("it.redo").value();
    for (int i = 1; i <= 5; ++i) ASSERT_TRUE(prod.publish(std::to_string(i)));
  });
  auto* f = shared_block<Flags>();
  const pid_t victim = fork_child([&] {
    auto cl = Client::connect();
    if (!cl) return 2;
    auto con = cl->consumer("it.redo");
    if (!con) return 3;
    std::vector<Delivery> held;
    for (int i = 0; i < 3; ++i) {
      auto d = con->receive(5s);
      if (!d) return 4;
      held.push_back(std::move(d).value());
    }
    f->ready.store(1);
    pause();
    return 0;
  });
  ASSERT_TRUE(wait_until([&] { return f->ready.load() == 1; }, 10s));
  kill(victim, SIGKILL);
  EXPECT_EQ(wait_child(victim).signal, SIGKILL);
  auto client = bus.client();
  auto con = client.consumer("it.redo").value();
  std::multiset<std::string> got;
  int redelivered = 0;
  for (int i = 0; i < 5; ++i) {
    auto d = con.receive(5s);  // generous bound: the broker reclaims on the pidfd event
    ASSERT_TRUE(d) << "after " << i << " messages: " << d.error().message();
    got.insert(std::string(d->text()));
    redelivered += d->redelivered() ? 1 : 0;
    d->ack();
  }
  EXPECT_EQ(got, (std::multiset<std::string>{"1", "2", "3", "4", "5"}));
  EXPECT_EQ(redelivered, 3);
  EXPECT_FALSE(con.try_receive());
}

TEST(QueueTest, NackPutsTheMessageBackForAnotherConsumer) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("it.nack", queue(8)));
  auto prod = client.producer("it.nack").value();
  ASSERT_TRUE(prod.publish("m"));
  auto a = client.consumer("it.nack").value();
  auto b = client.consumer("it.nack").value();
  {
    auto d = a.receive(1s).value();
    EXPECT_FALSE(d.redelivered());
    d.nack();
  }
  auto d = b.receive(1s).value();
  EXPECT_EQ(d.text(), "m");
  EXPECT_TRUE(d.redelivered());
  d.ack();
  EXPECT_FALSE(a.try_receive());
  // A nack is no new message: the counters say one published, taken twice, acked once.
  auto topics = client.request({{"op", "topics"}});
  ASSERT_TRUE(topics);
  const auto& t = (*topics)["topics"][0];
  EXPECT_EQ(t["published"].get<int>(), 1);
  EXPECT_EQ(t["delivered"].get<int>(), 2);
  EXPECT_EQ(t["acked"].get<int>(), 1);
}

TEST(QueueTest, FullQueueGivesBackPressure) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("it.full", queue(4)));
  auto prod = client.producer("it.full").value();
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(prod.publish("x"));
  auto st = prod.publish("y", {}, 20ms);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::timed_out);
}

// Consumer::try_receive_batch: what is ready, in order, up to max; acked ones are gone, one f leaves
// alone goes back flagged redelivered, one f moves out stays with the caller; the counters add up.
TEST(QueueTest, ReceiveBatchTakesWhatIsReadyAndNacksWhatItLeaves) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("it.batch", queue(16)));
  auto prod = client.producer("it.batch").value();
  for (int i = 1; i <= 6; ++i) ASSERT_TRUE(prod.publish(std::to_string(i)));
  auto con = client.consumer("it.batch").value();
  std::vector<std::string> got;
  std::optional<Delivery> kept;
  const std::size_t n = con.try_receive_batch(
      [&](Delivery& d) {
        got.emplace_back(d.text());
        if (d.text() == "2") return;  // left alone: nacked when f returns
        if (d.text() == "3") {
          kept.emplace(std::move(d));  // moved out: the caller holds it
          return;
        }
        d.ack();
      },
      4);
  EXPECT_EQ(n, 4u);
  EXPECT_EQ(got, (std::vector<std::string>{"1", "2", "3", "4"}));
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->text(), "3");
  kept->ack();
  // Left: 5, 6, then 2 again (nacked to the back), flagged.
  got.clear();
  std::vector<bool> flagged;
  EXPECT_EQ(con.try_receive_batch(
                [&](Delivery& d) {
                  got.emplace_back(d.text());
                  flagged.push_back(d.redelivered());
                  d.ack();
                },
                100),
            3u);
  EXPECT_EQ(got, (std::vector<std::string>{"5", "6", "2"}));
  EXPECT_EQ(flagged, (std::vector<bool>{false, false, true}));
  EXPECT_EQ(con.try_receive_batch([](Delivery&) {}, 10), 0u);
  auto topics = client.request({{"op", "topics"}});
  ASSERT_TRUE(topics);
  const auto& t = (*topics)["topics"][0];
  EXPECT_EQ(t["published"].get<int>(), 6);
  EXPECT_EQ(t["delivered"].get<int>(), 7);  // 2 twice
  EXPECT_EQ(t["acked"].get<int>(), 6);
  EXPECT_EQ(t["queued"].get<int>(), 0);
}

// The acks inside a batch wake a producer blocked on the full queue at the batch's end (they defer their
// wake-up to it): a producer parked for room gets it without waiting out its timeout.
TEST(QueueTest, AcksInsideABatchWakeABlockedProducer) {
  Bus bus;
  bus.create_topics({{"it.bfull", queue(4)}});
  auto* f = shared_block<Flags>();
  const pid_t producer = fork_child([&] {
    auto cl = Client::connect();
    if (!cl) return 2;
    auto prod = cl->producer("it.bfull");
    if (!prod) return 3;
    for (int i = 0; i < 4; ++i)
      if (!prod->publish("x")) return 4;
    f->ready.store(1);
    // Full: this one parks (after its spin) until the consumer's batch makes room; 30 s is far beyond it.
    const auto t0 = std::chrono::steady_clock::now();
    if (!prod->publish("y", {}, 30s)) return 5;
    return std::chrono::steady_clock::now() - t0 < 20s ? 0 : 6;
  });
  ASSERT_TRUE(wait_until([&] { return f->ready.load() == 1; }, 10s));
  std::this_thread::sleep_for(50ms);  // let it park
  auto client = bus.client();
  auto con = client.consumer("it.bfull").value();
  EXPECT_EQ(con.try_receive_batch([](Delivery& d) { d.ack(); }, 2), 2u);
  auto r = wait_child(producer, 25s);
  EXPECT_TRUE(r.exited && r.code == 0) << "code " << r.code << " signal " << r.signal;
}

TEST(ReclaimTest, SubscriberKilledHoldingSamplesLeavesThePoolWhole) {
  Bus bus;
  bus.create_topics({{"it.hold", stream(16)}});
  auto* f = shared_block<Flags>();
  const pid_t victim = fork_child([&] {
    auto cl = Client::connect();
    if (!cl) return 2;
    auto sub = cl->subscriber("it.hold");
    if (!sub) return 3;
    f->ready.store(1);
    std::vector<Sample> held;
    while (held.size() < 5) {
      auto s = sub->receive(5s);
      if (!s) return 4;
      held.push_back(std::move(s).value());
    }
    f->go.store(1);
    pause();
    return 0;
  });
  ASSERT_TRUE(wait_until([&] { return f->ready.load() == 1; }, 10s));
  auto client = bus.client();
  auto pub = client.publisher("it.hold").value();
  const std::string big(200, 's');  // beyond the inline room: each sample holds a chunk
  for (int i = 0; i < 8; ++i) {
    auto st = pub.publish(big);
    ASSERT_TRUE(st) << st.error().message();
  }
  ASSERT_TRUE(wait_until([&] { return f->go.load() == 1; }, 10s));
  auto dir = DirectoryView::open(bus.domain()).value();
  auto topic = TopicHandle::open(bus.domain(), dir.find("it.hold")->id).value();
  EXPECT_LT(topic.pool().census().free, topic.pool().chunk_count());
  kill(victim, SIGKILL);
  EXPECT_EQ(wait_child(victim).signal, SIGKILL);
  // The broker gives the victim's 5 held and 3 unread chunks back to the publisher, which keeps
  // publishing with them; once the publisher is gone too, every chunk is free.
  ASSERT_TRUE(wait_until([&] { return topic.active_subscribers() == 0; }, 5s));
  for (int i = 0; i < 200; ++i) {  // no subscriber: nothing held
    auto st = pub.publish(big);
    ASSERT_TRUE(st) << i << ": " << st.error().message();
  }
  { Publisher gone = std::move(pub); }
  const bool whole = wait_until(
      [&] {
        auto c = topic.pool().census();
        return c.violations.empty() && c.free == topic.pool().chunk_count();
      },
      5s);
  EXPECT_TRUE(whole) << "free " << topic.pool().census().free << " of " << topic.pool().chunk_count();
}

TEST(BrokerRestartTest, TrafficContinuesWhileTheBrokerIsDeadAndClientsReRegister) {
  Bus bus;
  bus.create_topics({{"it.live", stream(1024, Overflow::block)}, {"it.liveq", queue(1024)}});
  constexpr int kMessages = 100000;
  auto* f = shared_block<Flags>();
  auto* qcount = shared_block<std::atomic<std::uint64_t>>();
  const pid_t sub = fork_child([&] { return subscriber_child("it.live", kMessages, f); });
  const pid_t con = fork_child([&] {
    auto cl = Client::connect();
    if (!cl) return 2;
    auto c = cl->consumer("it.liveq");
    if (!c) return 3;
    for (std::uint64_t i = 1; i <= kMessages; ++i) {
      auto d = c->receive(20s);
      if (!d || d->text() != std::to_string(i)) return 4;
      d->ack();
      qcount->fetch_add(1);
    }
    return 0;
  });
  ASSERT_TRUE(wait_until([&] { return f->ready.load() == 1; }, 10s));
  auto client = bus.client();
  auto pub = client.publisher("it.live").value();
  auto prod = client.producer("it.liveq").value();
  for (int i = 1; i <= kMessages; ++i) {
    if (i == kMessages / 3) bus.stop_broker(SIGKILL);  // mid-stream
    ASSERT_TRUE(pub.publish(std::to_string(i), {}, 20s)) << i;
    ASSERT_TRUE(prod.publish(std::to_string(i), {}, 20s)) << i;
  }
  auto rs = wait_child(sub, 60s);
  auto rc = wait_child(con, 60s);
  EXPECT_TRUE(rs.exited && rs.code == 0) << rs.code << " " << rs.signal;
  EXPECT_TRUE(rc.exited && rc.code == 0) << rc.code << " " << rc.signal;
  EXPECT_EQ(f->count.load(), static_cast<std::uint64_t>(kMessages));
  EXPECT_EQ(qcount->load(), static_cast<std::uint64_t>(kMessages));
  // A new broker adopts the segments; the client reconnects on its own.
  EXPECT_TRUE(wait_until([&] { return !client.connected(); }, 5s));
  bus.start_broker();
  EXPECT_TRUE(wait_until([&] { return client.connected(); }, 10s));
  auto status = client.request({{"op", "status"}});
  ASSERT_TRUE(status) << status.error().message();
  EXPECT_EQ((*status)["pid"].get<int>(), bus.broker_pid());
  EXPECT_GE((*status)["clients"].get<int>(), 1);
  auto topics = client.request({{"op", "topics"}});
  ASSERT_TRUE(topics);
  EXPECT_EQ((*topics)["topics"].size(), 2u);
}

TEST(BrokerRestartTest, SubscriberReattachesItsSlotAfterARestart) {
  Bus bus;
  auto client = bus.client();
  ASSERT_TRUE(client.create_topic("it.re", stream(64)));
  auto sub = client.subscriber("it.re").value();
  bus.stop_broker(SIGKILL);
  bus.start_broker();
  ASSERT_TRUE(wait_until([&] { return client.connected(); }, 10s));
  // The new broker knows the slot again: its sweep must not free it, and publishing reaches it.
  std::this_thread::sleep_for(1500ms);
  auto pub = client.publisher("it.re").value();
  ASSERT_TRUE(pub.publish("after"));
  auto s = sub.receive(1s);
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ(s->text(), "after");
}

}  // namespace
}  // namespace shmbus
