// Streams under concurrency, in threads (so that ThreadSanitizer sees every access; CI runs the label
// `stress` under TSan): publisher threads, subscriber threads and a broker thread (sweeps, and a
// subscriber that joins and leaves over and over) on one topic, no broker process.
//
// Every message carries its publisher and sequence number in its bytes, and a size that changes with the
// sequence, so that inline messages (up to 104 bytes) and chunk messages alternate. A subscriber checks
// each message's bytes, and per publisher: under block, every message in order, none missed; under
// drop-oldest, increasing sequence numbers whose gaps are exactly the missed counts. At the end every
// port leaves and the pool is whole. Deadlines bound every wait; no timing is asserted.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shmbus/attributes.hpp"
#include "shmbus/detail/stream_port.hpp"
#include "shmbus/detail/stream_supervisor.hpp"
#include "shmbus/topic.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using detail::Received;
using detail::SendStatus;
using detail::StreamPublisher;
using detail::StreamSubscriber;
using detail::StreamSupervisor;

constexpr int kPublishers = 2;
constexpr int kSubscribers = 3;

std::string unique_domain() {
  static std::atomic<int> n{0};
  return "ss" + std::to_string(getpid()) + "x" + std::to_string(n++);
}

// Sizes cycle through inline (1..104 bytes with an 8-byte attribute) and chunk (105..300) messages.
std::size_t size_of(std::uint64_t seq) {
  return 1 + (seq * 37) % 300;
}
std::byte byte_at(std::uint64_t pub, std::uint64_t seq, std::size_t i) {
  return static_cast<std::byte>((pub * 131 + seq * 31 + i) & 0xff);
}

struct Topic {
  std::string domain = unique_domain();
  TopicHandle broker;
  std::mutex broker_mu;  // the broker is one thread: supervisor calls never overlap

  explicit Topic(Overflow overflow) {
    TopicOptions o;
    o.kind = TopicKind::stream;
    o.depth = 16;
    o.max_size = 300;
    o.attrs_max = 32;
    o.overflow = overflow;
    o.max_publishers = kPublishers;
    o.max_subscribers = kSubscribers + 1;
    auto h = TopicHandle::create(domain, 1, "stress", o);
    EXPECT_TRUE(h) << h.error().message();
    if (h) broker = std::move(h).value();
  }
  ~Topic() { (void)TopicHandle::remove(domain, 1); }
  std::shared_ptr<TopicHandle> open() {
    auto h = TopicHandle::open(domain, 1);
    EXPECT_TRUE(h) << h.error().message();
    return h ? std::make_shared<TopicHandle>(std::move(h).value()) : nullptr;
  }
  template <typename F>
  auto with_broker(F&& f) {
    std::lock_guard<std::mutex> g(broker_mu);
    StreamSupervisor sup(broker);
    return f(sup);
  }
};

struct SubResult {
  std::uint64_t received[kPublishers] = {};
  std::uint64_t missed[kPublishers] = {};
  std::uint64_t last[kPublishers] = {};
  std::string error;  // the first thing that was wrong
};

// Reads until it has seen the last message of every publisher (under drop-oldest, where the last ones may
// be the ones it missed: until the publishers are done and nothing is left), or the deadline passes.
// Holds up to `hold` chunk samples at a time before giving them back.
void read_all(StreamSubscriber& sub, std::uint64_t per_pub, bool lossless, std::size_t hold, SubResult& r,
              const std::atomic<int>& publishers_done, std::chrono::steady_clock::time_point deadline) {
  Received m;
  std::vector<std::pair<std::uint32_t, std::uint32_t>> held;
  auto done = [&] {
    for (int p = 0; p < kPublishers; ++p)
      if (r.last[p] != per_pub) return false;
    return true;
  };
  while (!done() && r.error.empty()) {
    if (std::chrono::steady_clock::now() > deadline) {
      r.error = "deadline passed";
      break;
    }
    if (!sub.try_receive(m)) {
      // Acquire: pairs with the publishers' increment, after their last publish.
      if (!lossless && publishers_done.load(std::memory_order_acquire) == kPublishers && !sub.try_receive(m))
        break;
      if (!sub.try_receive(m)) {
        std::this_thread::yield();
        continue;
      }
    }
    const std::uint64_t p = m.publisher - 1000;
    if (p >= kPublishers) {
      r.error = "publisher id " + std::to_string(m.publisher);
      break;
    }
    const std::byte* bytes = m.is_chunk ? sub.topic().payload(m.chunk) : m.bytes;
    if (m.size != size_of(m.seq))
      r.error = "size " + std::to_string(m.size) + " of seq " + std::to_string(m.seq);
    for (std::size_t i = 0; i < m.size && r.error.empty(); ++i)
      if (bytes[i] != byte_at(p, m.seq, i))
        r.error =
            "byte " + std::to_string(i) + " of seq " + std::to_string(m.seq) + " from " + std::to_string(p);
    if (m.seq <= r.last[p]) r.error = "seq " + std::to_string(m.seq) + " after " + std::to_string(r.last[p]);
    if (m.seq != r.last[p] + 1 + m.missed)
      r.error = "seq " + std::to_string(m.seq) + " after " + std::to_string(r.last[p]) + " says missed " +
                std::to_string(m.missed);
    if (lossless && m.missed != 0) r.error = "missed " + std::to_string(m.missed) + " under block";
    r.last[p] = m.seq;
    ++r.received[p];
    r.missed[p] += m.missed;
    if (m.is_chunk) {
      held.emplace_back(m.conn, m.chunk);
      if (held.size() > hold) {
        sub.release(held.front().first, held.front().second);
        held.erase(held.begin());
      }
    }
  }
  for (auto [k, c] : held) sub.release(k, c);
}

void run(Overflow overflow, std::uint64_t per_pub) {
  Topic t(overflow);
  const bool lossless = overflow == Overflow::block;
  std::vector<std::uint32_t> sub_slots, pub_slots;
  for (int j = 0; j < kSubscribers; ++j) {
    auto s =
        t.with_broker([&](StreamSupervisor& sup) { return sup.attach_subscriber(OwnerId::self(), 1 + j); });
    ASSERT_TRUE(s) << s.error().message();
    sub_slots.push_back(*s);
  }
  for (int i = 0; i < kPublishers; ++i) {
    auto s = t.with_broker(
        [&](StreamSupervisor& sup) { return sup.attach_publisher(OwnerId::self(), 100 + i, 1000 + i); });
    ASSERT_TRUE(s) << s.error().message();
    pub_slots.push_back(*s);
  }
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  std::atomic<bool> stop{false};
  std::atomic<int> publishers_done{0};
  std::vector<SubResult> results(kSubscribers);
  std::vector<std::string> pub_errors(kPublishers);
  std::vector<std::thread> threads;
  for (int j = 0; j < kSubscribers; ++j)
    threads.emplace_back([&, j] {
      auto sub = StreamSubscriber::attach(t.open(), sub_slots[j]);
      if (!sub) {
        results[j].error = sub.error().message();
        return;
      }
      read_all(**sub, per_pub, lossless, static_cast<std::size_t>(j) * 3, results[j], publishers_done,
               deadline);
    });
  for (int i = 0; i < kPublishers; ++i)
    threads.emplace_back([&, i] {
      auto pub = StreamPublisher::attach(t.open(), pub_slots[i], false);
      if (!pub) {
        pub_errors[i] = pub.error().message();
        publishers_done.fetch_add(1);
        return;
      }
      std::byte buf[300];
      for (std::uint64_t seq = 1; seq <= per_pub; ++seq) {
        const std::size_t n = size_of(seq);
        for (std::size_t k = 0; k < n; ++k) buf[k] = byte_at(i, seq, k);
        const std::string_view key = "k";
        const AttrValue val(static_cast<std::int64_t>(seq));
        Attr attr{key, val};
        const AttrList attrs = seq % 2 == 0 ? AttrList(std::span<const Attr>(&attr, 1)) : AttrList();
        const SendStatus st = (*pub)->publish(buf, n, attrs, Deadline::after(10s));
        // some_missed: the churning subscriber left (or, under drop-oldest, lagged); the steady subscribers
        // check on their side that they missed nothing under block.
        if (st != SendStatus::ok && st != SendStatus::some_missed) {
          pub_errors[i] =
              "publish " + std::to_string(seq) + ": status " + std::to_string(static_cast<int>(st));
          break;
        }
      }
      publishers_done.fetch_add(1, std::memory_order_release);
    });
  // The broker: sweeps, while a fourth subscriber joins, reads a little and leaves, again and again.
  std::string churn_error;
  threads.emplace_back([&] {
    std::uint64_t port = 50;
    while (!stop.load() && churn_error.empty()) {
      auto slot = t.with_broker(
          [&](StreamSupervisor& sup) { return sup.attach_subscriber(OwnerId::self(), ++port); });
      if (!slot) {
        (void)t.with_broker([](StreamSupervisor& sup) { return sup.sweep(); });
        std::this_thread::yield();
        continue;
      }
      {
        auto sub = StreamSubscriber::attach(t.open(), *slot);
        if (!sub) {
          churn_error = sub.error().message();
          break;
        }
        Received m;
        for (int k = 0; k < 50; ++k) {
          if ((*sub)->try_receive(m) && m.is_chunk) (*sub)->release(m.conn, m.chunk);
          (void)t.with_broker([](StreamSupervisor& sup) { return sup.sweep(); });
        }
      }
      t.with_broker([&](StreamSupervisor& sup) { sup.close_subscriber(*slot, true); });
      (void)t.with_broker([](StreamSupervisor& sup) { return sup.sweep(); });
    }
  });
  for (int k = 0; k < kSubscribers + kPublishers; ++k) threads[k].join();
  stop.store(true);
  threads.back().join();
  EXPECT_TRUE(churn_error.empty()) << churn_error;
  for (int i = 0; i < kPublishers; ++i)
    EXPECT_TRUE(pub_errors[i].empty()) << "publisher " << i << ": " << pub_errors[i];
  for (int j = 0; j < kSubscribers; ++j) {
    const SubResult& r = results[j];
    EXPECT_TRUE(r.error.empty()) << "subscriber " << j << ": " << r.error;
    for (int p = 0; p < kPublishers; ++p) {
      // Drop-oldest: the last messages may be the ones missed (no later message tells of them).
      if (lossless) {
        EXPECT_EQ(r.last[p], per_pub) << "subscriber " << j << " publisher " << p;
        EXPECT_EQ(r.missed[p], 0u) << "subscriber " << j << " publisher " << p;
      } else {
        EXPECT_GT(r.last[p], 0u) << "subscriber " << j << " publisher " << p;
        EXPECT_LE(r.last[p], per_pub) << "subscriber " << j << " publisher " << p;
      }
      EXPECT_EQ(r.received[p] + r.missed[p], r.last[p]) << "subscriber " << j << " publisher " << p;
    }
  }
  // Everyone leaves; the broker finishes; every chunk is free again.
  t.with_broker([&](StreamSupervisor& sup) {
    for (std::uint32_t s : sub_slots) sup.close_subscriber(s, true);
    for (std::uint32_t s : pub_slots) sup.retire_publisher(s);
    for (int k = 0; k < 100 && sup.sweep().pending; ++k) {
    }
  });
  const PoolCensus c = t.broker.pool().census();
  EXPECT_TRUE(c.violations.empty()) << c.violations.front();
  EXPECT_EQ(c.free, t.broker.pool().chunk_count());
}

TEST(StreamStressTest, BlockDeliversEverythingInOrderToEverySubscriber) {
  run(Overflow::block, 20000);
}

TEST(StreamStressTest, DropOldestMessagesAreIntactAndGapsAreTheMissedCounts) {
  run(Overflow::drop_oldest, 200000);
}

}  // namespace
}  // namespace shmbus
